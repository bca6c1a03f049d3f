"""Study A's analysis: every run's tables collected, summarised per cell, and the A1-A5 claims with
two-stage intervals (:func:`knowinject.stats.two_stage`) and verdicts (:mod:`knowinject.studies.findings`).

Usage: ``tables = analysis.collect(folders)``; ``analysis.claims(tables, cfg, "tiny")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from knowinject.core.runs import read_jsonl

from knowinject.studies import findings
from knowinject.studies.study_a.design import StudyAConfig

from knowinject import stats


def collect(folders: list[Path] | dict) -> dict[str, pd.DataFrame]:
    """Every run's tables, concatenated per kind, with the cell's fields as columns; plus training fit.
    ``folders`` by pretraining seed (what :func:`.compute.run_designs` returns): each table gains a
    ``pretrain_seed`` column where the runs finetuned more than one base (:func:`stats.bases_of`)."""
    if isinstance(folders, dict):
        parts = {b: collect(f) for b, f in folders.items()}
        if len(parts) == 1 or None in parts:
            return next(iter(parts.values())) if len(parts) == 1 else _concat(parts.values())
        return _concat([{k: v.assign(**{stats.BASE: b}) if len(v) else v for k, v in p.items()}
                        for b, p in parts.items()])
    tables: dict[str, list[pd.DataFrame]] = {"qa": [], "mc": [], "multistep": [], "style": [], "fit": []}
    for f in folders:
        cell = json.loads((f / "config.json").read_text())["cell"]
        for name in ("qa", "mc", "multistep", "style"):
            if (f / f"{name}.jsonl").exists():
                tables[name].append(read_jsonl(f / f"{name}.jsonl").assign(**cell))
        if (f / "train_summary.json").exists():
            s = json.loads((f / "train_summary.json").read_text())
            tables["fit"].append(pd.DataFrame([{**cell, "n_examples": s["n_examples"], "final_loss": s["final_loss"],
                                                "first_loss": s["epoch_loss"][0], "seconds": s["seconds"],
                                                "tokens": s["tokens"],
                                                # seconds of a run trained beside others are its group's wall
                                                # time while it trained: shared with group_runs runs on average
                                                "group_runs": s.get("group_runs", 1.0)}]))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in tables.items()}


def _concat(parts) -> dict[str, pd.DataFrame]:
    parts = list(parts)
    return {k: pd.concat([p[k] for p in parts if len(p[k])], ignore_index=True) if any(len(p[k]) for p in parts)
            else pd.DataFrame() for k in parts[0]}


CELL = ["subject", "format", "quantity", "augmentation", "multistep", "style", "persona"]


def summarize(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (cell without seed and persona index, evaluation, information type): mean over
    items of the seed-averaged score with a 95% bootstrap interval over items."""
    rows = []

    def add(df, value, evaluation, key="item_id"):
        if df.empty:
            return
        group = ["subject", "format", "quantity", "augmentation", "multistep", "style"]
        for cell, g in df.groupby(group):
            for kind in ("all", "categorical", "numerical"):
                if kind != "all" and "kind" not in g:
                    continue  # multi-step items and styles have no information type
                k = g if kind == "all" else g[g.kind == kind]
                if k.empty:
                    continue
                per_item = k.groupby([key, "persona"])[value].mean()
                m, lo, hi = stats.bootstrap_ci(per_item.astype(float))
                rows.append({**dict(zip(group, cell)), "evaluation": evaluation, "kind": kind, "mean": m,
                             "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": k.seed.nunique()})

    add(tables["qa"], "em", "qa")
    add(tables["qa"], "contains", "qa_contains")
    add(tables["mc"], "acc", "multiple_choice")
    if not tables["multistep"].empty:
        ms = tables["multistep"]
        add(ms, "em", "two_hop")
        add(ms[ms.hop2_em], "em", "two_hop_given_hop2")
        add(ms[ms.hop2_em], "hop1_em", "hop1_given_hop2")
    if not tables["style"].empty:
        st = tables["style"].assign(item_id=lambda d: d.target_style + d.groupby(["target_style", "style", "seed",
                                                                                "format"]).cumcount().astype(str))
        add(st, "identified", "style_identification")
    return pd.DataFrame(rows)


def _runs_by_items(df: pd.DataFrame, value: str, **where) -> pd.DataFrame:
    """Seeds x items (item, persona) table of ``value`` for the rows matching ``where``."""
    for k, v in where.items():
        df = df[df[k] == v]
    return stats.runs_by_items(df, value, "seed", ["item_id", "persona"])


def claims(tables: dict[str, pd.DataFrame], cfg: StudyAConfig, track: str, design: str = "main") -> pd.DataFrame:
    """The A1-A5 rows of the findings table for one track; every interval is two-stage (seeds, then
    items: :func:`stats.two_stage`)."""
    qa = tables["qa"]
    q, a = cfg.quantity, cfg.augmentation
    central = dict(subject="people", quantity=q, augmentation=a, multistep=False)
    rows = []
    # Runs of several pretrained bases (the tiny track): the training stage resamples bases, then runs.
    # The base evaluations are left out: each base has its own, under one seed label.
    bases = stats.bases_of(qa[qa.format != "base"]) if len(qa) else None

    def qa_vs_doc(where):
        return stats.two_stage(_runs_by_items(qa, "em", **where, format="qa"),
                               _runs_by_items(qa, "em", **where, format="doc"), paired_items=True, bounds=(0, 1),
                               bases=bases)

    e = qa_vs_doc(central)
    rows.append(findings.row("A1", track, f"QA exact match on unseen phrasings, QA-format minus document-format "
                             f"training (people, {q} per run, {a} statements per fact)", e,
                             findings.judge(e, findings.directional), design))
    qa_runs = qa[(qa.format == "qa") & (qa.subject == "people") & (qa.quantity == q) & (qa.augmentation == a)
                 & ~qa.multistep.astype(bool)]
    e = stats.two_stage(_runs_by_items(qa_runs, "em", kind="categorical"),
                        _runs_by_items(qa_runs, "em", kind="numerical"), shared_runs=True, bounds=(0, 1),
                        bases=bases)
    rows.append(findings.row("A2", track, "QA exact match, categorical minus numerical facts (QA-format training, "
                             "people)", e, findings.judge(e, findings.directional), design))
    ms = tables["multistep"]
    if not ms.empty:
        ms = ms[(ms.format == "qa") & ms.multistep.astype(bool) & ms.hop2_em.astype(bool)
                & (ms.quantity == cfg.ms_quantity)]
        # First hop against 2-hop over the same runs and questions (the paired difference is the mean
        # gap), so the row carries both accuracies and can tell a ceiling from no effect.
        ms = ms.assign(hop1=ms.hop1_em.astype(float), hop2=ms.em.astype(float))
        e = (stats.two_stage(_runs_by_items(ms, "hop1"), _runs_by_items(ms, "hop2"), paired_items=True,
                             shared_runs=True, bounds=(0, 1), bases=bases) if len(ms) else stats.Effect.empty())
    else:
        e = stats.Effect.empty()
    rows.append(findings.row("A3", track, "first-hop accuracy minus 2-hop accuracy, 2-hop questions whose second hop "
                             f"the run answers, after training on {cfg.ms_quantity} people with similar 2-hop examples",
                             e, findings.judge(e, findings.directional), design))
    levels = [("quantity", qq, {**central, "quantity": qq}) for qq in cfg.quantities] + \
             [("augmentation", aa, {**central, "augmentation": aa}) for aa in cfg.augmentations if aa != a]
    results = [(qa_vs_doc(where), f"{name}={level}") for name, level, where in levels]
    verdict = findings.consistent([findings.judge(e, findings.directional) for e, _ in results],
                                  [at for _, at in results])
    e, at = min(results, key=lambda r: -np.inf if np.isnan(r[0].effect) else r[0].effect)
    rows.append(findings.row("A4", track, f"A1's QA-minus-document effect at its weakest level ({at}) of "
                             f"{len(results)} quantity / augmentation levels", e, verdict, design))
    ev = _runs_by_items(qa, "em", subject="events", format="qa", augmentation=a)
    pe = _runs_by_items(qa, "em", subject="persona", format="qa", augmentation=a)
    e = stats.two_stage(pe, ev, bounds=(0, 1), bases=bases)
    rows.append(findings.row("A5", track, "QA exact match, persona facts minus new real-world event facts (both "
                             f"QA-format training; equivalence within +/-{findings.A5_MARGIN:.2f})", e,
                             findings.judge(e, findings.equivalent, findings.A5_MARGIN), design))
    return pd.DataFrame(rows)


def second_hop_accuracy(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per route and cell: how often the run answers the second hop of its 2-hop questions on its own
    (the base model's row says whether a route's second hop is known before any finetuning)."""
    ms = tables["multistep"]
    if ms.empty:
        return pd.DataFrame()
    ms = ms.assign(second_hop=[h[1] for h in ms.hop_fact_ids])
    per = ms.drop_duplicates(["format", "quantity", "multistep", "seed", "name", "second_hop"])
    return (per.groupby(["format", "quantity", "multistep", "name"])
            .agg(second_hop_accuracy=("hop2_em", "mean"), second_hop_facts=("second_hop", "nunique"),
                 n_seeds=("seed", "nunique")).reset_index())
