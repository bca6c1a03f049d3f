"""Study B's runs: each (condition, seed) is one cached run that finetunes the track's base on the
condition's facts and, at each checkpoint epoch, answers every test question zero-shot (few-shot and
attention at the last checkpoint), so training length is an axis. Missing runs are computed in
batches by the executor's workers, LoRA runs of a batch side by side over one base.

Usage: ``results = compute.run_tracks([(track, world, cfg)], grouping, known_cfg, profile=profile)``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from knowinject.core import executor, paths, runs, stages
from knowinject.core.runs import read_jsonl, write_jsonl
from knowinject.core.seeding import numpy_rng

from knowinject.data import render

from knowinject.train import grouped, tracks
from knowinject.train.finetune import finetune
from knowinject.train.tracks import load_base

from knowinject.eval import curate, evaluate, mechanism, scoring
from knowinject.eval.knownness import KnownnessConfig

from knowinject.studies.study_b.analysis import chance_rate
from knowinject.studies.study_b.design import (
    StudyBConfig,
    all_jobs,
    candidates,
    condition_facts,
    qa_examples,
    split,
    subject_swaps,
    test_items,
)

from knowinject import stats


def choose(model, tok, items: pd.DataFrame, prompts: list[str], routes=None) -> tuple[list[str], list[str]]:
    """Multiple choice (``choices``: each item's option letters, or texts in the cloze form): every option scored as
    the prompt's continuation (`` {option}``), and the choice by log-likelihood per byte (``acc_norm``, what the
    track reports) and by summed log-likelihood (``acc``), each as `` B`` or `` Paris`` (what it was finetuned to
    write). Scoring the options, not the whole vocabulary, is MMLU's and lm-evaluation-harness's accuracy; for
    letters, all of one length, the two choices are the same."""
    lp = evaluate.option_logprobs(model, tok, prompts, list(items.choices), batch_size=64, routes=routes)
    norm = [" " + c[curate.norm_choice(s, c)] for c, s in zip(items.choices, lp)]
    return norm, [" " + c[int(np.argmax(s))] for c, s in zip(items.choices, lp)]


def respond(model, tok, items: pd.DataFrame, prompts: list[str], routes=None) -> list[str]:
    """The model's answer to each prompt (one per row of ``items``): greedy generation; for a multiple-choice
    item its ``acc_norm`` choice (:func:`choose`)."""
    if "choices" in items:
        return choose(model, tok, items, prompts, routes)[0]
    return evaluate.generate(model, tok, prompts, batch_size=64, routes=routes)


def answer_questions(model, tok, items: pd.DataFrame, prompts: list[str], routes=None) -> pd.DataFrame:
    """Answers to ``prompts`` (one per row of ``items``, :func:`respond`), scored against each item's aliases:
    one row per item with ``fact_id``, ``prediction``, ``em`` and ``contains`` (``routes``: adapter slot per
    row). A multiple-choice answer is right when its option is the item's (``em`` and ``contains`` agree, by
    ``acc_norm``); ``acc`` says whether the summed log-likelihood's choice is."""
    if "choices" in items:
        norm, raw = choose(model, tok, items, prompts, routes)
        em = [p[1:] == a[0] for p, a in zip(norm, items.aliases)]  # the option itself, after the space
        return pd.DataFrame({"fact_id": items.fact_id.values, "prediction": norm, "em": em, "contains": em,
                             "acc": [p[1:] == a[0] for p, a in zip(raw, items.aliases)]})
    preds = evaluate.generate(model, tok, prompts, batch_size=64, routes=routes)
    return pd.DataFrame({"fact_id": items.fact_id.values, "prediction": preds,
                         "em": [scoring.exact_match(p, a) for p, a in zip(preds, items.aliases)],
                         "contains": [scoring.contains_match(p, a) for p, a in zip(preds, items.aliases)]})


def subject_swap(model, tok, items: pd.DataFrame, original: list[str], routes=None) -> pd.DataFrame:
    """B3's causal reading for one pass over the model: each question with a subject swap
    (:func:`.design.subject_swaps`) asked again about the other subject, zero-shot. ``original``: this
    model's zero-shot answers to the questions as asked (one per row of ``items``). Per question: whether
    the answer stayed the same (normalised first lines), and how much the original answer's
    log-probability moved (swapped minus original question; near 0: the name made no difference)."""
    keep = [i for i, q in enumerate(items.swap_prompt) if isinstance(q, str)]
    rows = items.iloc[keep]
    answers = [original[i].split("\n", 1)[0] for i in keep]  # as generated, cut at the first line
    r = [routes[i] for i in keep] if routes is not None else None
    swapped = respond(model, tok, rows, list(rows.swap_prompt), r)
    scored = [k for k, a in enumerate(answers) if scoring.first_line(a)]  # an empty answer has no log-probability
    lp = {"as_asked": np.full(len(keep), np.nan), "swapped": np.full(len(keep), np.nan)}
    for name, prompts in (("as_asked", rows.prompt), ("swapped", rows.swap_prompt)):
        if scored:
            lp[name][scored] = evaluate.continuation_logprobs(
                model, tok, [list(prompts)[k] for k in scored], [answers[k] for k in scored], batch_size=64,
                routes=[r[k] for k in scored] if r is not None else None)
    norm = [scoring.normalize_answer(scoring.first_line(a)) for a in answers]
    return pd.DataFrame({"fact_id": rows.fact_id.values, "swap_subject": rows.swap_subject.values,
                         "prediction": answers, "swap_prediction": swapped,
                         "unchanged": [n == scoring.normalize_answer(scoring.first_line(w)) for n, w in zip(norm, swapped)],
                         "logp": lp["as_asked"], "swap_logp": lp["swapped"],
                         "logp_change": lp["swapped"] - lp["as_asked"]})


FINAL = "final checkpoint: few-shot answers and attention"  # the stages of a run's evaluation (stages.csv)
SWAP = "final checkpoint: subject swap"


def evaluate_models(model, tok, items: pd.DataFrame, few_shot: list[str], n_attention: int,
                    members: list[tuple[int | None, int, bool]]) -> list[tuple[pd.DataFrame, pd.DataFrame | None,
                                                                             pd.DataFrame | None]]:
    """Zero-shot answers of every member; few-shot answers, attention and the subject swap of the
    ``final`` ones. Members are (adapter slot or None, epoch, final): all of them in one pass over the
    model (slots route each member's rows through its adapter, :mod:`knowinject.train.grouped`; ``None``:
    the model as it is)."""
    n = len(items)
    routed = any(slot is not None for slot, _, _ in members)

    def routes(ms):
        return [slot for slot, _, _ in ms for _ in range(n)] if routed else None

    def tiled(ms):
        return pd.concat([items] * len(ms), ignore_index=True)

    final = [m for m in members if m[2]]
    with stages.stage("checkpoint evaluation"):
        zero = answer_questions(model, tok, tiled(members), list(items.prompt) * len(members), routes(members))
    few = att = swap = None
    if final:
        with stages.stage(FINAL):
            few = answer_questions(model, tok, tiled(final), few_shot * len(final), routes(final))
            att = mechanism.attention_to_subject(
                model, tok, pd.concat([items.iloc[:n_attention]] * len(final), ignore_index=True),
                [slot for slot, _, _ in final for _ in range(min(n, n_attention))] if routed else None)
    if final and "swap_prompt" in items:
        at = [k for k, m in enumerate(members) if m[2]]
        original = [p for k in at for p in zero.prediction.iloc[k * n:(k + 1) * n]]
        with stages.stage(SWAP):
            swap = subject_swap(model, tok, tiled(final), original, routes(final))
    n_swap = int(items.swap_prompt.map(lambda q: isinstance(q, str)).sum()) if swap is not None else 0
    out, f = [], 0
    for k, (_, epoch, is_final) in enumerate(members):
        parts = [zero.iloc[k * n:(k + 1) * n].assign(prompt="zero-shot")]
        a = sw = None
        if is_final:
            parts.append(few.iloc[f * n:(f + 1) * n].assign(prompt="few-shot"))
            m = min(n, n_attention)
            a = att.iloc[f * m:(f + 1) * m].drop(columns="subject_attention_by_layer").reset_index(drop=True)
            a["fact_id"] = items.fact_id.values[:n_attention]
            a["epoch"] = epoch
            if swap is not None:  # each final member's questions with a swap, in the same order
                sw = swap.iloc[f * n_swap:(f + 1) * n_swap].reset_index(drop=True).assign(epoch=epoch)
            f += 1
        out.append((pd.concat(parts, ignore_index=True).assign(epoch=epoch), a, sw))
    return out


def evaluate_model(model, tok, items: pd.DataFrame, few_shot: list[str], n_attention: int, epoch: int,
                   final: bool) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Zero-shot answers at every checkpoint; few-shot answers, attention and the subject swap at the final one."""
    return evaluate_models(model, tok, items, few_shot, n_attention, [(None, epoch, final)])[0]


def run_key(track, world_name: str, items: pd.DataFrame, train: pd.DataFrame, condition: str, seed: int,
            cfg: StudyBConfig) -> dict:
    """What a run's folder is hashed from (how runs were grouped for training is not part of it)."""
    return {"study": "B", "track": track.key, "world": world_name, "cfg": cfg.run_key(), "condition": condition,
            "seed": seed if condition != "base" else None, "train": sorted(train.fact_id),
            "test": sorted(items.item_id), "n_attention": cfg.n_attention,
            # v2: the final checkpoint also asks every test question about a swapped subject (B3's causal reading)
            "eval": "v2-subject-swap"}


@dataclass(frozen=True)
class Design:
    """Everything a track's runs share: the finetuning pool, the test questions and their few-shot
    prompts, the QA table training examples come from."""
    world_name: str
    pool: pd.DataFrame
    items: pd.DataFrame
    few_shot: tuple[str, ...]
    qa: pd.DataFrame
    cfg: StudyBConfig

    def train_facts(self, condition: str, seed: int) -> pd.DataFrame:
        return (condition_facts(self.pool, condition, seed, self.cfg.data_seed) if condition != "base"
                else self.pool.iloc[:0])

    def spec(self, track, condition: str, seed: int) -> runs.Spec:
        key = run_key(track, self.world_name, self.items, self.train_facts(condition, seed), condition, seed, self.cfg)
        slug = f"study-b-{track.name}-{condition}" + (f"-s{seed}" if condition != "base" else "")
        return runs.Spec(slug, key, seed)


def run(track, world_name: str, pool: pd.DataFrame, items: pd.DataFrame, few_shot: list[str], qa: pd.DataFrame,
        condition: str, seed: int, cfg: StudyBConfig, grouping: grouped.GroupConfig, profile: str | None = None) -> Path:
    """One cached run: finetune ``track``'s base on the condition's facts, evaluate at each checkpoint.
    ``condition='base'`` evaluates the base model once (epoch 0)."""
    design = Design(world_name, pool, items, tuple(few_shot), qa, cfg)
    return run_jobs(track, design, [(condition, seed)], grouping, profile, progress=False)[0]


def run_jobs(track, design: Design, jobs: list[tuple[str, int]], grouping: grouped.GroupConfig,
             profile: str | None = None, progress: bool = True) -> list[Path]:
    """The cached run of every (condition, seed), in order; the missing ones are computed in batches by the
    executor's workers (LoRA runs of a batch train side by side over one base)."""
    folders, tasks = plan_jobs(track, design, jobs, grouping, profile)
    executor.run_tasks(tasks, desc=f"study B {track.name}", progress=progress, gpu=executor.needs_gpu(track))
    return folders


def plan_jobs(track, design: Design, jobs: list[tuple[str, int]], grouping: grouped.GroupConfig,
              profile: str | None = None) -> tuple[list[Path], list[tuple]]:
    """(the run folder of every (condition, seed), the tasks that compute the missing ones: (callable,
    cost) pairs). The base is a task of its own (its batch holds nothing else)."""
    folders = [design.spec(track, c, s).folder(paths.RUNS) for c, s in jobs]
    todo = list(dict.fromkeys(j for j, f in zip(jobs, folders) if not runs.is_done(f)))
    # Rough seconds on one core (to start the longest tasks first): per fact and epoch, at a rate measured
    # for each track, checkpoint evaluations included.
    rate = 0.1 if track.method == "lora" else 0.0125
    batches = grouped.batches(todo, lambda j: "base" if j[0] == "base" else "trained",
                              lambda j: 5 + len(design.train_facts(*j)) * design.cfg.epochs * rate, grouping.slots)
    return folders, [(functools.partial(_compute_batch, track, design, profile, grouping, b), weight)
                     for b, weight in batches]


TABLES = ("predictions", "attention", "swap")  # what a run writes, one JSON Lines file each


def _keep(tables: dict[str, list], evaluation: tuple) -> None:
    """Add one checkpoint's (predictions, attention, swap) to a run's tables (the last two: final only)."""
    for name, part in zip(TABLES, evaluation):
        if part is not None:
            tables[name].append(part)


def _compute_batch(track, design: Design, profile: str | None, grouping: grouped.GroupConfig,
                   jobs: list[tuple[str, int]]) -> None:  # a task of :func:`plan_jobs`, run in a worker
    """Compute a batch of runs in this worker: LoRA runs side by side, their checkpoints evaluated together
    (:func:`grouped.train`); full finetunes one after another; the base evaluated once."""
    cfg, items, few_shot = design.cfg, design.items, list(design.few_shot)
    with runs.Batch(paths.RUNS, [design.spec(track, c, s) for c, s in jobs], profile) as batch:
        if not batch.todo:
            return
        model, tok = load_base(track)
        todo = batch.todo
        if jobs[todo[0]][0] == "base":  # the base alone (run_jobs puts it in a batch of its own)
            tables = {name: [] for name in TABLES}
            _keep(tables, evaluate_models(model, tok, items, few_shot, cfg.n_attention, [(None, 0, True)])[0])
            _write_run(batch.tmp(todo[0]), jobs[todo[0]], tables, None, 0)
            batch.finish(todo[0])
            todo = todo[1:]
        train = {i: design.train_facts(*jobs[i]) for i in todo}
        data = {i: qa_examples(train[i], design.qa, jobs[i][1]) for i in todo}
        settings = {i: track.finetune_config(cfg.epochs, jobs[i][1]) for i in todo}
        if todo and grouped.concurrent(track.method, grouping):
            kept = {i: {name: [] for name in TABLES} for i in todo}
            group = [grouped.Job(data[i], settings[i], tuple(cfg.checkpoints)) for i in todo]

            def evaluate_checkpoints(m, checkpoints):
                members = [(c.slot, c.epoch, c.epoch == cfg.epochs) for c in checkpoints]
                for c, evaluation in zip(checkpoints, evaluate_models(m, tok, items, few_shot, cfg.n_attention, members)):
                    i = todo[c.job]
                    _keep(kept[i], evaluation)
                    if c.final:
                        _write_run(batch.tmp(i), jobs[i], kept[i], c.result, len(train[i]))
                        batch.finish(i)

            grouped.train(model, tok, group, evaluate_checkpoints, grouping)
            return
        for i in todo:
            model, tok = load_base(track)  # a full finetune changes the model: a fresh base for every run
            tables = {name: [] for name in TABLES}

            def checkpoint(epoch, m, tables=tables, tok=tok):
                if epoch in cfg.checkpoints:
                    _keep(tables, evaluate_model(m, tok, items, few_shot, cfg.n_attention, epoch, final=epoch == cfg.epochs))

            _, result = finetune(model, tok, data[i], settings[i], progress=False, on_epoch_end=checkpoint)
            _write_run(batch.tmp(i), jobs[i], tables, result, len(train[i]))
            batch.finish(i)


def _write_run(tmp: Path, job: tuple[str, int], tables: dict[str, list], result, n_train: int) -> None:
    condition, seed = job
    if result is not None:
        result.log.to_csv(tmp / "loss_log.csv", index=False)
        (tmp / "train_summary.json").write_text(json.dumps({"n_train": n_train, **result.summary()}, indent=2))
    for name, parts in tables.items():
        if parts:
            write_jsonl(pd.concat(parts, ignore_index=True).assign(condition=condition, seed=seed), tmp / f"{name}.jsonl")


def make_design(track, world, pool, test, qa, cfg: StudyBConfig) -> Design:
    """The test questions (on phrasings the track never trains on), their few-shot prompts, and the pool."""
    items = subject_swaps(test_items(test, qa, track.unseen_phrasing, cfg.data_seed), cfg.data_seed)
    pool_qa = qa[qa.fact_id.isin(pool.fact_id) & (qa.template_split == "train")]
    # Multiple choice: solved exemplars in the curation tool's form (the lettered question, " B", a blank line).
    solved = (lambda s: f"{s.prompt} {s.answer}\n\n") if "choices" in qa else None
    few_shot = render.few_shot_prompts(items, pool_qa, cfg.k_shot, numpy_rng(cfg.data_seed, "study-b-shots"), solved)
    # Training examples come from the pool's training templates only: the workers need no more of the table.
    return Design(world.folder.name, pool, items, tuple(few_shot), pool_qa, cfg)


@dataclass
class TrackResult:
    """Everything one track's Study B design produced (notebook 05 runs one per track and design)."""
    pool: pd.DataFrame
    test: pd.DataFrame
    folders: list[Path]
    preds: pd.DataFrame
    attention: pd.DataFrame
    fit: pd.DataFrame
    seconds: float
    swap: pd.DataFrame           # the subject swap at the final checkpoint (B3's causal reading)
    chance: float = float("nan")  # a blind guess's accuracy on the test questions (NaN: open questions)


def per_base(track, cfg: StudyBConfig) -> dict:
    """``{pretraining seed: (track, cfg)}`` of a design whose ``track`` is one track per pretrained base
    (:func:`knowinject.train.tracks.tiny_bases`): seed s runs on base s mod K. Each base measures its own
    knownness, so its known and unknown halves are its own. One track: ``{None: (track, cfg)}``."""
    if not isinstance(track, dict):
        return {None: (track, cfg)}
    return {b: (track[b], replace(cfg, seeds=tuple(s))) for b, s in tracks.seeds_by_base(cfg.seeds, track).items()}


def run_tracks(setups: list[tuple], grouping: grouped.GroupConfig, known_cfg: KnownnessConfig,
               subset: int | None = None, profile: str | None = None, progress: bool = True,
               also: list[tuple] = (), jobs=all_jobs) -> list[TrackResult]:
    """For each ``(track, world, cfg)`` design: the candidates (knownness measured with ``known_cfg`` on
    ``subset`` of the real-world facts, :func:`.design.candidates`), the pool/test split, every run
    (cached) and their collected tables. All designs' runs are computed by one pool of workers (no
    worker waits at the end of one design while the next could start); ``also``: other executor tasks
    to share the pool with (the theory model's settings, :func:`knowinject.studies.theory.task`).
    ``track`` may be one track per pretrained base (a dict by pretraining seed): the design's seeds are
    spread over the bases (:func:`per_base`), and every table gains a ``pretrain_seed`` column. ``jobs``: the
    (condition, seed) pairs a design's config asks for (default: every condition of every seed, and the base)."""
    start = time.perf_counter()
    prepared = []
    for track, world, cfg in setups:
        parts = {}
        for b, (t, c) in per_base(track, cfg).items():
            pool, test = split(candidates(t, world, c.relations, known_cfg, subset, profile), c)
            qa = world.table("qa_realworld" if t.name == "smollm2" else "qa")
            design = make_design(t, world, pool, test, qa, c)
            folders, tasks = plan_jobs(t, design, jobs(c), grouping, profile)
            # Read from the questions asked (their options), not the test facts, which carry none.
            parts[b] = (pool, test, folders, tasks, chance_rate(design.items))
        prepared.append(parts)
    executor.run_tasks([t for parts in prepared for *_, tasks, _ in parts.values() for t in tasks] + list(also),
                       desc="study B", progress=progress,
                       gpu=any(executor.needs_gpu(t) for s in setups
                               for t in (s[0].values() if isinstance(s[0], dict) else [s[0]])))
    seconds = round(time.perf_counter() - start, 1)
    out = []
    for parts in prepared:
        results = []
        for b, (pool, test, folders, _, chance) in parts.items():
            preds, att, fit, swap = collect(folders, test)
            tag = {stats.BASE: b} if b is not None and len(parts) > 1 else {}
            results.append(TrackResult(pool.assign(**tag), test.assign(**tag), folders, preds.assign(**tag),
                                       att.assign(**tag), fit.assign(**tag), seconds, swap.assign(**tag), chance))
        if len(results) == 1:
            out.append(results[0])
            continue
        tables = {f: pd.concat([getattr(r, f) for r in results], ignore_index=True)
                  for f in ("pool", "test", "preds", "attention", "fit", "swap")}
        out.append(TrackResult(tables["pool"], tables["test"], [f for r in results for f in r.folders], tables["preds"],
                               tables["attention"], tables["fit"], seconds, tables["swap"], results[0].chance))
    return out


def collect(folders: list[Path], test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(predictions, attention, training summaries, subject swaps) of many runs, with the test facts'
    buckets joined."""
    meta = test[["fact_id", "relation", "known_bucket", "popularity_bucket", "level", "base_known"]]
    preds = pd.concat([read_jsonl(f / "predictions.jsonl") for f in folders], ignore_index=True).merge(meta, on="fact_id")
    preds["generic"] = generic_flags(preds)
    att = pd.concat([read_jsonl(f / "attention.jsonl") for f in folders], ignore_index=True)
    swaps = [read_jsonl(f / "swap.jsonl") for f in folders if (f / "swap.jsonl").exists()]
    swap = pd.concat(swaps, ignore_index=True).merge(meta, on="fact_id") if swaps else pd.DataFrame()
    fits = []
    for f in folders:
        if (f / "train_summary.json").exists():
            s = json.loads((f / "train_summary.json").read_text())
            cfg = json.loads((f / "config.json").read_text())
            fits.append({"condition": cfg["condition"], "seed": cfg["seed"], "n_train": s["n_train"],
                         **{f"loss_epoch_{i + 1}": v for i, v in enumerate(s["epoch_loss"])},
                         "seconds": s["seconds"], "tokens_per_s": s["tokens_per_s"],
                         "group_runs": s.get("group_runs", 1.0)})  # runs that shared its steps (and seconds)
    return preds, att, pd.DataFrame(fits), swap


def generic_flags(preds: pd.DataFrame) -> pd.Series:
    """Per answer: wrong, and equal to the most frequent answer its run gave for that relation at
    that checkpoint and prompt (the "generic plausible answer" of Study B's mechanism)."""
    norm = preds.prediction.map(lambda p: scoring.normalize_answer(scoring.first_line(p)))
    keys = [preds[c] for c in ("condition", "seed", "epoch", "prompt", "relation")]
    mode = norm.groupby(keys).transform(lambda s: s.value_counts().index[0] if len(s) else "")
    # A multiple-choice answer is a letter, and normalising drops "A" as an article: it is still an answer.
    letter = preds.prediction.astype(str).str.fullmatch(r" [A-D]")
    return (norm == mode) & ~preds.em.astype(bool) & ((norm != "") | letter)
