"""Study B's analysis: accuracy by condition, checkpoint, prompt and test bucket; the mechanism
measures (attention, generic answers, the subject swap); and the B1-B3 claims with two-stage
intervals and verdicts.

Usage: ``analysis.claims(result.preds, result.attention, cfg, "tiny")``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from knowinject.studies import findings
from knowinject.studies.study_b.design import StudyBConfig

from knowinject import stats


def summarize(preds: pd.DataFrame, value: str = "em") -> pd.DataFrame:
    """Accuracy by condition x epoch x prompt x test bucket: mean over items of the seed-averaged
    score, 95% bootstrap interval over items."""
    rows = []
    buckets = {"all": None, "known": ("known_bucket", "known"), "unknown": ("known_bucket", "unknown"),
               "popular": ("popularity_bucket", "popular"), "unpopular": ("popularity_bucket", "unpopular")}
    for (cond, epoch, prompt), g in preds.groupby(["condition", "epoch", "prompt"]):
        for bucket, sel in buckets.items():
            b = g if sel is None else g[g[sel[0]] == sel[1]]
            per_item = b.groupby("fact_id")[value].mean()
            mean, lo, hi = stats.bootstrap_ci(per_item)
            rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "bucket": bucket, "metric": value,
                         "mean": mean, "ci_low": lo, "ci_high": hi, "n_items": len(per_item),
                         "n_seeds": b.seed.nunique()})
    return pd.DataFrame(rows)


def summarize_by_level(preds: pd.DataFrame, value: str = "em") -> pd.DataFrame:
    """Accuracy by condition x epoch x prompt x the test fact's popularity level (tiny: exposure
    bucket; SmolLM2: population quintile): mean of seed-averaged scores, bootstrap over items."""
    rows = []
    for (cond, epoch, prompt, level), g in preds.groupby(["condition", "epoch", "prompt", "level"]):
        per_item = g.groupby("fact_id")[value].mean()
        mean, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "level": level, "metric": value,
                     "mean": mean, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


def contrast(preds: pd.DataFrame, a: str, b: str, value: str = "em", **where) -> stats.Effect:
    """Condition a minus condition b on the same test facts, with the two-stage interval (each
    condition's runs resampled, or the bases and then their runs where the runs finetuned several
    pretrained bases, then the shared test facts); ``where`` filters rows (e.g.
    ``epoch=8, prompt="zero-shot"``)."""
    d = preds
    for k, v in where.items():
        d = d[d[k] == v]
    ya = stats.runs_by_items(d[d.condition == a], value, "seed", "fact_id")
    yb = stats.runs_by_items(d[d.condition == b], value, "seed", "fact_id")
    if ya.empty or yb.empty:
        return stats.Effect.empty()
    # Runs of several pretrained bases (the tiny track's): bases resampled first, then runs within them.
    bases = stats.bases_of(d[d.condition.isin([a, b])])
    return stats.two_stage(ya, yb, paired_items=True, bounds=(0, 1), bases=bases)  # accuracy, attention, generic rate


def lift(preds: pd.DataFrame, epoch: int, value: str = "em") -> stats.Effect:
    """R0: the whole-pool finetune at ``epoch`` minus the base model (its one run, epoch 0), zero-shot, on the same
    test facts, with the two-stage interval."""
    d = preds[(preds.prompt == "zero-shot") & (((preds.condition == "whole") & (preds.epoch == epoch))
                                               | (preds.condition == "base"))]
    if stats.BASE in d:  # the tiny track has a base model per pretrained base, all labelled seed 0: one run each
        is_base = d.condition == "base"
        d = d.assign(seed=d.seed.where(~is_base, -1 - d[stats.BASE]))
    return contrast(d, "whole", "base", value)


def chance_rate(facts: pd.DataFrame) -> float:
    """The accuracy of a blind guess over multiple-choice questions (mean of 1 / options, from their ``options``
    or ``choices``); NaN for open questions."""
    col = next((c for c in ("options", "choices") if c in facts), None)
    return float(np.mean([1 / len(o) for o in facts[col]])) if col and len(facts) else float("nan")


def mechanism_summary(preds: pd.DataFrame, att: pd.DataFrame, swap: pd.DataFrame | None = None) -> pd.DataFrame:
    """Attention share on the subject and the generic-answer rate, per condition and epoch; with ``swap``,
    how often the answer stays the same when the subject is swapped, and how far its log-probability
    moves (swapped minus as asked)."""
    rows = []
    for metric, col in (("answer_unchanged_on_subject_swap", "unchanged"), ("logp_change_on_subject_swap", "logp_change")):
        if swap is None or swap.empty:
            break
        for (cond, epoch), g in swap.groupby(["condition", "epoch"]):
            per_item = g.groupby("fact_id")[col].mean().dropna().astype(float)
            m, lo, hi = stats.bootstrap_ci(per_item)
            rows.append({"condition": cond, "epoch": epoch, "prompt": "zero-shot", "metric": metric, "mean": m,
                         "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    for (cond, epoch), g in att.groupby(["condition", "epoch"]):
        per_item = g.groupby("fact_id").subject_share.mean()
        m, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": "zero-shot", "metric": "subject_attention_share",
                     "mean": m, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    for (cond, epoch, prompt), g in preds.groupby(["condition", "epoch", "prompt"]):
        per_item = g.groupby("fact_id").generic.mean()
        m, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "metric": "generic_answer_rate",
                     "mean": m, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


def claims(preds: pd.DataFrame, att: pd.DataFrame, cfg: StudyBConfig, track: str, design: str = "main",
           swap: pd.DataFrame | None = None, measure: str = "exact match") -> pd.DataFrame:
    """The B1-B3 rows of the findings table for one track (zero-shot, last checkpoint, all test facts), and
    B3's causal reading from ``swap`` (:func:`swap_claim`). ``measure``: what a right answer is, as the
    metric column names it ("multiple-choice accuracy" for a design in MMLU's form)."""
    last = cfg.epochs
    rows = []
    e = lift(preds, last)
    rows.append(findings.row("R0", track, f"{measure}, whole-pool finetune minus the base model (zero-shot, held-out "
                             "test facts)", e, findings.regime(e), design))
    e = contrast(preds, "known", "unknown", epoch=last, prompt="zero-shot")
    rows.append(findings.row("B1", track, f"{measure}, known-half minus unknown-half finetune (zero-shot, held-out "
                             "test facts)", e, findings.judge(e, findings.directional), design))
    e = contrast(preds, "known", "whole", epoch=last, prompt="zero-shot")
    rows.append(findings.row("B2", track, f"{measure}, known-half minus whole-pool finetune (zero-shot)", e,
                             findings.judge(e, findings.non_inferior, findings.B2_MARGIN), design))
    ea = contrast(att, "known", "unknown", value="subject_share", epoch=last)
    eg = contrast(preds, "unknown", "known", value="generic", epoch=last, prompt="zero-shot")
    verdict = findings.both(findings.judge(ea, findings.directional), findings.judge(eg, findings.directional))
    rows.append(findings.row("B3", track, "subject share of attention from the answer position, known-half minus "
                             f"unknown-half finetune (generic-answer rate, unknown minus known: {eg.effect:+.3f} "
                             f"[{eg.ci_low:+.3f}, {eg.ci_high:+.3f}])", ea, verdict, design))
    rows.append(swap_claim(swap if swap is not None else pd.DataFrame(), last, track, design))
    return pd.DataFrame(rows)


def swap_claim(swap: pd.DataFrame, epoch: int, track: str, design: str = "main") -> dict:
    """B3 measured by what it claims: each test question asked again with its subject swapped for another
    of the same relation. A model that ignores the subject's name keeps its answer, so B3 predicts the
    unknown-half finetune keeps it more often than the known-half one (unknown minus known > 0). The
    change in the original answer's log-probability is reported beside it (unknown minus known > 0: it
    moves less). Both with the two-stage interval; the verdict is the answer rate's."""
    if swap.empty:
        e = el = stats.Effect.empty()
    else:
        d = swap.assign(unchanged=swap.unchanged.astype(float))
        e = contrast(d, "unknown", "known", value="unchanged", epoch=epoch)
        el = _logp_contrast(d[d.logp_change.notna()], epoch)
    return findings.row("B3-swap", track, "answer unchanged when the subject is swapped for another of the same "
                        "relation, unknown-half minus known-half finetune (change in the answer's log-probability, "
                        f"unknown minus known: {el.effect:+.3f} [{el.ci_low:+.3f}, {el.ci_high:+.3f}] nats)", e,
                        findings.judge(e, findings.directional), design)


def _logp_contrast(d: pd.DataFrame, epoch: int) -> stats.Effect:
    """The log-probability change, unknown minus known (unbounded: no truncation)."""
    d = d[d.epoch == epoch]
    ya = stats.runs_by_items(d[d.condition == "unknown"], "logp_change", "seed", "fact_id")
    yb = stats.runs_by_items(d[d.condition == "known"], "logp_change", "seed", "fact_id")
    if ya.empty or yb.empty:
        return stats.Effect.empty()
    return stats.two_stage(ya, yb, paired_items=True, bases=stats.bases_of(d[d.condition.isin(["unknown", "known"])]))
