"""Study A's runs: a cell's run finetunes the track's base on the cell's data (:mod:`.design`) and
evaluates it; missing runs are computed in batches by the executor's workers, LoRA runs of a batch
side by side over one base (:mod:`knowinject.train.grouped`).

Usage: ``folders = compute.run_designs([(track, world, cfg, False)], grouping, profile)``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from knowinject.core import executor, paths, runs, stages
from knowinject.core.runs import write_jsonl

from knowinject.train import grouped, tracks
from knowinject.train.encoding import chat_prompt_and_reply
from knowinject.train.finetune import finetune
from knowinject.train.tracks import load_base

from knowinject.eval import evaluate

from knowinject.studies.study_a.design import (
    Cell,
    Inputs,
    StudyAConfig,
    design_cells,
    multistep_eval_items,
    qa_eval_items,
    subjects_for,
    training_examples,
)


def style_prompts(styles: pd.DataFrame, style: str, tokenizer) -> list[str]:
    held = styles[(styles["style"] == style) & (styles.split == "heldout")]
    return [chat_prompt_and_reply([m[0], {"role": "assistant", "content": ""}], tokenizer)[0] for m in held.messages]


def evaluate_cells(model, tok, members: list[tuple[Cell, int | None]], inp: Inputs, cfg: StudyAConfig,
                   phrasing: str) -> list[dict[str, pd.DataFrame]]:
    """Every evaluation of each member's injected facts (or style), all members in one pass over the
    model: ``members`` are (cell, adapter slot) pairs, the slot routing the member's rows through its
    adapter (:mod:`knowinject.train.grouped`; ``None`` for every member: the model as it is)."""
    with stages.stage("checkpoint evaluation"):  # a base's evaluation too (a stage inside one of this name is its own)
        return _evaluate_cells(model, tok, members, inp, cfg, phrasing)


def _evaluate_cells(model, tok, members, inp, cfg, phrasing):
    routed = any(slot is not None for _, slot in members)
    out: list[dict[str, pd.DataFrame]] = [{} for _ in members]
    chat = bool(getattr(tok, "chat_template", None))

    # Styles: held-out prompts of each member's style(s), one generation pass, one classifier.
    style_rows = []
    for m, (cell, slot) in enumerate(members):
        if cell.subject == "style":
            for s in [cell.style] if cell.style else list(cfg.styles):
                style_rows += [(m, slot, s, p) for p in style_prompts(inp.styles, s, tok)]
    if style_rows:
        responses = evaluate.generate(model, tok, [r[3] for r in style_rows], cfg.max_style_tokens, batch_size=32,
                                      chat=chat, routes=[r[1] for r in style_rows] if routed else None)
        predicted = inp.style_classifier.predict(responses)
        table = pd.DataFrame({"member": [r[0] for r in style_rows], "target_style": [r[2] for r in style_rows],
                              "response": responses, "predicted": predicted})
        for m, g in table.groupby("member"):
            out[m]["style"] = (g.drop(columns="member").reset_index(drop=True)
                               .assign(identified=lambda d: d.predicted == d.target_style))

    # Facts: QA on unseen phrasings, second hops and 2-hop questions in one generation pass; multiple choice in one.
    parts, asked, mcs = {}, [], []
    for m, (cell, slot) in enumerate(members):
        if cell.subject == "style":
            continue
        facts = subjects_for(inp.facts, cell, cfg)
        items = qa_eval_items(inp.qa, facts.fact_id, phrasing, max(cfg.augmentations))
        two_hop = (multistep_eval_items(inp.multistep, facts, phrasing) if cell.subject == "people"
                   else inp.multistep.iloc[:0])
        second = {f for hops in two_hop.hop_fact_ids for f in hops[1:]}
        hop2 = qa_eval_items(inp.qa, second, phrasing, max(cfg.augmentations))
        parts[m] = (items, two_hop, hop2)
        asked.append(pd.concat([items, hop2, two_hop[["item_id", "prompt", "aliases"]]]).assign(_member=m, _slot=slot))
        mc = inp.mc[inp.mc.fact_id.isin(set(facts.fact_id))]
        if len(mc):
            mcs.append(mc.assign(_member=m, _slot=slot))
    if asked:
        asked = pd.concat(asked, ignore_index=True)
        scored = evaluate.score_qa(model, tok, asked, batch_size=64, routes=list(asked._slot) if routed else None)
        keep = ["item_id", "prediction", "em", "contains"]
        for m, (items, two_hop, hop2) in parts.items():
            sc = scored[scored._member == m]
            out[m]["qa"] = items.merge(sc[keep], on="item_id").drop(columns=["aliases"])
            if len(two_hop):
                hops = hop2.merge(sc[keep], on="item_id")
                ms = two_hop.merge(sc[keep], on="item_id")
                ok = pd.concat([out[m]["qa"], hops]).groupby("fact_id").em.max()
                ms["hop1_em"] = [bool(ok.get(h[0], False)) for h in ms.hop_fact_ids]
                ms["hop2_em"] = [bool(ok.get(h[1], False)) for h in ms.hop_fact_ids]
                out[m]["multistep"] = ms.drop(columns=["aliases"])
    if mcs:
        mcs = pd.concat(mcs, ignore_index=True)
        scored = evaluate.score_multiple_choice(model, tok, mcs, batch_size=64, routes=list(mcs._slot) if routed else None)
        for m, g in scored.groupby("_member"):
            out[m]["mc"] = g[["item_id", "fact_id", "relation", "kind", "acc", "acc_norm"]].reset_index(drop=True)
    return out


def evaluate_cell(model, tok, cell: Cell, inp: Inputs, cfg: StudyAConfig, phrasing: str) -> dict[str, pd.DataFrame]:
    """Every evaluation of one cell's injected facts (or style), on ``model`` as it is."""
    return evaluate_cells(model, tok, [(cell, None)], inp, cfg, phrasing)[0]


def run_key(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> dict:
    """What a run's folder is hashed from. How runs were grouped for training is not part of it: a run
    trained beside others is the run trained alone (the reference test in tests/test_grouped.py)."""
    return {"study": "A", "track": track.key, "world": inp.world_name, "cell": asdict(cell), "epochs": cfg.epochs,
            "augmentations_max": max(cfg.augmentations), "n_helpers": cfg.n_helpers, "n_anchor": cfg.n_anchor,
            "data_seed": cfg.data_seed, "n_events": cfg.n_events, "n_style_examples": cfg.n_style_examples,
            # v2: multiple choice scores options from the question's key/value cache (other roundings in bf16)
            "max_style_tokens": cfg.max_style_tokens, "eval": "v2"}


def spec(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> runs.Spec:
    return runs.Spec(f"study-a-{track.name}-{cell.slug}", run_key(track, cell, inp, cfg), cell.seed)


def run_cell(track, cell: Cell, inp: Inputs, cfg: StudyAConfig, grouping: grouped.GroupConfig,
             profile: str | None = None) -> Path:
    """One cached run: finetune the track's base model on the cell's data, then evaluate it."""
    return run_cells(track, [cell], inp, cfg, grouping, profile, progress=False)[0]


def run_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, grouping: grouped.GroupConfig,
              profile: str | None = None, progress: bool = True) -> list[Path]:
    """The cached run of every cell, in order; the missing ones are computed in batches by the executor's
    workers (LoRA runs of a batch train side by side over one base, ``grouping``'s slots at a time)."""
    folders, tasks = plan_cells(track, cells, inp, cfg, grouping, profile)
    if progress and len(tasks) and sum(1 for f in folders if runs.is_done(f)):
        print(f"study A {track.name}: {sum(1 for f in folders if runs.is_done(f))} of {len(folders)} runs cached")
    executor.run_tasks(tasks, desc=f"study A {track.name}", progress=progress, gpu=executor.needs_gpu(track))
    return folders


def plan_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, grouping: grouped.GroupConfig,
               profile: str | None = None) -> tuple[list[Path], list[tuple]]:
    """(the run folder of every cell, the tasks that compute the missing ones: (callable, cost) pairs)."""
    folders = [spec(track, c, inp, cfg).folder(paths.RUNS) for c in cells]
    todo = list(dict.fromkeys(c for c, f in zip(cells, folders) if not runs.is_done(f)))
    tasks = [(functools.partial(_compute_batch, track, inp.world, cfg, profile, grouping, batch), weight)
             for batch, weight in batch_cells(track, todo, inp, cfg, grouping.slots)]
    return folders, tasks


def cost(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> float:
    """Rough seconds of a run on one core, only to start the longest tasks first: characters of training
    text times epochs, at a rate measured for each track (evaluation-only runs: a few seconds)."""
    if cell.format == "base":
        return 5.0
    per_char_epoch = 2.5e-4 if track.method == "lora" else 5e-5
    return float(sum(len(json.dumps(e)) for e in training_examples(cell, inp, cfg))) * cfg.epochs * per_char_epoch


FAMILIES = {"qa": "short rows", "doc": "long rows", "conv": "chat rows", "base": "evaluation only"}


def batch_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, slots: int) -> list[tuple[list[Cell], float]]:
    """Cells in batches for the workers (:func:`grouped.batches`), with each batch's cost: LoRA runs by
    the length of their rows (format), full finetunes (one at a time anyway) all together."""
    def family(c: Cell) -> str:
        return FAMILIES[c.format] if track.method == "lora" or c.format == "base" else "full finetunes"

    return grouped.batches(cells, family, lambda c: cost(track, c, inp, cfg), slots)


@functools.lru_cache(maxsize=4)
def _inputs(world) -> Inputs:
    return Inputs(world)


def _compute_batch(track, world, cfg: StudyAConfig, profile: str | None, grouping: grouped.GroupConfig,
                   cells: list[Cell]) -> None:  # a task of :func:`plan_cells`, run in a worker
    """Compute a batch of runs in this worker: base evaluations in one pass; LoRA runs trained side by side
    and evaluated together (:func:`grouped.train`); full finetunes one after another."""
    inp = _inputs(world)
    with runs.Batch(paths.RUNS, [spec(track, c, inp, cfg) for c in cells], profile) as batch:
        if not batch.todo:
            return
        phrasing = track.unseen_phrasing
        model, tok = load_base(track)
        base = [i for i in batch.todo if cells[i].format == "base"]
        if base:
            for i, out in zip(base, evaluate_cells(model, tok, [(cells[i], None) for i in base], inp, cfg, phrasing)):
                _write_tables(batch.tmp(i), out)
                batch.finish(i)
        trained = [i for i in batch.todo if cells[i].format != "base"]
        data = {i: training_examples(cells[i], inp, cfg) for i in trained}
        settings = {i: track.finetune_config(cfg.epochs, cells[i].seed, max_length=384) for i in trained}
        if trained and grouped.concurrent(track.method, grouping):
            jobs = [grouped.Job(data[i], settings[i]) for i in trained]

            def evaluate_checkpoints(m, checkpoints):
                outs = evaluate_cells(m, tok, [(cells[trained[c.job]], c.slot) for c in checkpoints], inp, cfg, phrasing)
                for c, out in zip(checkpoints, outs):
                    i = trained[c.job]
                    _write_training(batch.tmp(i), c.result, len(data[i]))
                    _write_tables(batch.tmp(i), out)
                    batch.finish(i)

            grouped.train(model, tok, jobs, evaluate_checkpoints, grouping)
            return
        for i in trained:
            model, tok = load_base(track)  # a full finetune changes the model: a fresh base for every run
            model, result = finetune(model, tok, data[i], settings[i], progress=False)
            _write_training(batch.tmp(i), result, len(data[i]))
            _write_tables(batch.tmp(i), evaluate_cell(model, tok, cells[i], inp, cfg, phrasing))
            batch.finish(i)


def _write_training(tmp: Path, result, n_examples: int) -> None:
    result.log.to_csv(tmp / "loss_log.csv", index=False)
    (tmp / "train_summary.json").write_text(json.dumps({"n_examples": n_examples, **result.summary()}, indent=2))


def _write_tables(tmp: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        write_jsonl(table, tmp / f"{name}.jsonl")


def per_base(track, cfg: StudyAConfig) -> dict:
    """``{pretraining seed: (track, cfg)}`` of a design whose ``track`` is one track per pretrained base
    (:func:`knowinject.train.tracks.tiny_bases`): seed s runs on base s mod K, so each base's design keeps
    the seeds (and claim seeds) that map to it. One track: ``{None: (track, cfg)}``."""
    if not isinstance(track, dict):
        return {None: (track, cfg)}
    seeds, claim = tracks.seeds_by_base(cfg.seeds, track), tracks.seeds_by_base(cfg.claim_seeds, track)
    lonely = [b for b in claim if b not in seeds]
    if lonely:
        raise ValueError(f"Study A: bases {lonely} get only claim_seeds {[claim[b] for b in lonely]}; list more seeds "
                         f"(seed s runs on base s mod {len(track)}) so that every base has a grid seed")
    return {b: (track[b], replace(cfg, seeds=tuple(seeds[b]), claim_seeds=tuple(claim.get(b, ())))) for b in seeds}


def run_designs(designs: list[tuple], grouping: grouped.GroupConfig, profile: str | None = None,
                progress: bool = True) -> list[dict]:
    """Several designs, each ``(track, world, cfg, claims_only)``, computed by one pool of workers (so no
    worker waits at the end of one design while the next could start); per design, its folders by the
    pretraining seed of their base (``{None: folders}`` for a single track; a dict of tracks, one per base,
    spreads the design's seeds over them, :func:`per_base`). :func:`.analysis.collect` takes either."""
    plans = []
    for track, world, cfg, claims_only in designs:
        inp = Inputs(world)
        plans.append({b: plan_cells(t, design_cells(c, claims_only), inp, c, grouping, profile)
                      for b, (t, c) in per_base(track, cfg).items()})
    executor.run_tasks([t for plan in plans for _, tasks in plan.values() for t in tasks], desc="study A",
                       progress=progress, gpu=any(executor.needs_gpu(t) for track, *_ in designs
                                                  for t in (track.values() if isinstance(track, dict) else [track])))
    return [{b: folders for b, (folders, _) in plan.items()} for plan in plans]
