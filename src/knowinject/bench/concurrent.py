"""Benchmark of concurrent LoRA runs (part of ``make bench``): runs per hour of a Study A cell and a Study B
condition on SmolLM2, trained one at a time (the path every run took before :mod:`knowinject.train.grouped`)
against ``k`` = 2, 4, 8, 16 at once over one frozen base, with tokens/s and MFU at the studies' own batch
size (8 rows a run); and the same grids on two single-threaded worker processes, the pipeline's default
on a 2-core CPU. Also the one measurement behind not grouping the tiny track: ``k`` full finetunes of the
tiny model at once with ``torch.func`` (``stack_module_state`` + ``vmap``) against one at a time.

A run here is what the grids compute: finetune, then evaluate (Study A: QA on unseen phrasings, 2-hop
questions, multiple choice; Study B: zero-shot answers at epochs 1, 3 and 6, few-shot answers and
attention at the last). Runs per hour count training alone and training plus evaluation.

Usage: ``python -m knowinject.bench --grouped-only`` -> ``data/results/bench_grouped.csv``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np
import pandas as pd
import torch

from knowinject.core import executor, paths
from knowinject.core.config import build, require, stage_params
from knowinject.core.provenance import provenance, save_table
from knowinject.core.seeding import numpy_rng

from knowinject.data import geo, world, worldfiles
from knowinject.data.corpus import train_tokenizer

from knowinject.train import grouped, models, pretrain, tracks
from knowinject.train.encoding import collate, encode, loss_module
from knowinject.train.finetune import finetune
from knowinject.train.tracks import load_base

from knowinject.eval.knownness import popularity_buckets

from knowinject.studies import study_a, study_b

from knowinject.bench.machine import flops_needed, machine, matmul_peak, qa_examples

KS = (2, 4, 8, 16)


# --- the two workloads ----------------------------------------------------------------------------------------

def default_config(cls: type, stage: str):
    """A stage's config as the default profile sets it (the benchmarks measure the default profile's work)."""
    return build(cls, stage_params("default", stage), stage)


@functools.lru_cache(maxsize=1)
def default_world():
    """The default profile's world (notebook 01's cached run), built once per process."""
    return worldfiles.build(default_config(world.WorldConfig, "world"), default_config(geo.RealWorldConfig, "realworld"),
                            "default")


def default_track(name: str, world_files):
    """A track as the default profile sets it (the tiny one pretrained on ``world_files``)."""
    return tracks.make(name, stage_params("default", f"track_{name}"), world_files,
                       default_config(pretrain.PretrainConfig, "pretrain"), profile="default")


class StudyACell:
    """Study A's central cell on SmolLM2 (people, QA format, the default profile's quantity and
    augmentation), one run per seed."""
    name = "Study A central cell (people, QA, 4 people x 3 statements, 6 epochs)"

    def __init__(self):
        self.world = default_world()
        self.track = default_track("smollm2", self.world)
        self.cfg = default_config(study_a.design.StudyAConfig, "study_a_smollm2")
        self.inp = study_a.design.Inputs(self.world)

    def cell(self, seed: int):
        return study_a.design.Cell("people", "qa", self.cfg.quantity, self.cfg.augmentation, seed=seed)

    def job(self, seed: int) -> grouped.Job:
        return grouped.Job(study_a.design.training_examples(self.cell(seed), self.inp, self.cfg),
                           self.track.finetune_config(self.cfg.epochs, seed, max_length=384))

    def evaluate(self, model, tok, members):
        """``members``: (seed, slot or None) pairs."""
        study_a.compute.evaluate_cells(model, tok, [(self.cell(s), slot) for s, slot in members], self.inp, self.cfg,
                                       self.track.unseen_phrasing)

    def checkpoints(self, job: grouped.Job) -> set[int]:
        return {self.cfg.epochs}


class StudyBCondition:
    """A Study B condition on SmolLM2 as the default profile sizes it: a half of 64 real-world facts
    (balanced over relations), 6 epochs, 160 test questions asked at epochs 1, 3 and 6. The facts are a
    random half: which half (known or unknown) changes the data, not the work."""
    name = "Study B condition (64 real-world facts, 6 epochs, 160 test facts at 3 checkpoints)"

    def __init__(self):
        w = default_world()
        self.track = default_track("smollm2", w)
        self.cfg = default_config(study_b.design.StudyBConfig, "study_b_smollm2")
        facts = w.table("realworld")
        facts = facts[facts.relation.isin(self.cfg.relations)].copy()
        facts["level"] = popularity_buckets(facts, 5)
        facts["known_score"] = numpy_rng(0, "bench-knownness").random(len(facts))
        facts["base_known"] = False
        pool, test = study_b.design.split(facts[study_b.design.COLUMNS], self.cfg)
        self.design = study_b.compute.make_design(self.track, w, pool, test, w.table("qa_realworld"), self.cfg)

    def job(self, seed: int) -> grouped.Job:
        train = self.design.train_facts("known", seed)
        return grouped.Job(study_b.design.qa_examples(train, self.design.qa, seed),
                           self.track.finetune_config(self.cfg.epochs, seed), tuple(self.cfg.checkpoints))

    def evaluate(self, model, tok, members):
        """``members``: (epoch, slot or None) pairs."""
        study_b.compute.evaluate_models(model, tok, self.design.items, list(self.design.few_shot), self.cfg.n_attention,
                                   [(slot, epoch, epoch == self.cfg.epochs) for epoch, slot in members])

    def checkpoints(self, job: grouped.Job) -> set[int]:
        return set(self.cfg.checkpoints)


# --- one configuration ----------------------------------------------------------------------------------------

def solo(work, seeds) -> dict:
    """Runs one after another, as the grids ran them before: a fresh base, ``finetune``, evaluation."""
    train_s = eval_s = 0.0
    tokens = loss_tokens = 0
    start = time.perf_counter()
    for seed in seeds:
        model, tok = load_base(work.track)
        job = work.job(seed)
        spent = [0.0]

        def at_epoch(epoch, m, job=job, spent=spent, tok=tok, seed=seed):
            if epoch in work.checkpoints(job):
                t = time.perf_counter()
                work.evaluate(m, tok, [(seed if isinstance(work, StudyACell) else epoch, None)])
                spent[0] += time.perf_counter() - t

        t0 = time.perf_counter()
        trained, result = finetune(model, tok, job.examples, job.cfg, progress=False, on_epoch_end=at_epoch)
        train_s += time.perf_counter() - t0 - spent[0]
        eval_s += spent[0]
        tokens, loss_tokens = tokens + result.tokens, loss_tokens + result.loss_tokens
    return {"runs": len(seeds), "wall_s": time.perf_counter() - start, "train_s": train_s, "eval_s": eval_s,
            "tokens": tokens, "loss_tokens": loss_tokens, "model": trained, "tokenizer": tok}


def concurrent(work, seeds, slots: int) -> dict:
    """``len(seeds)`` runs over one base, ``slots`` at a time; checkpoints evaluated together."""
    spent = [0.0]
    start = time.perf_counter()
    model, tok = load_base(work.track)
    jobs = [work.job(s) for s in seeds]

    def evaluate(m, checkpoints):
        t = time.perf_counter()
        members = [(seeds[c.job] if isinstance(work, StudyACell) else c.epoch, c.slot) for c in checkpoints]
        work.evaluate(m, tok, members)
        spent[0] += time.perf_counter() - t

    results = grouped.train(model, tok, jobs, evaluate, grouped.GroupConfig(slots=slots))
    wall = time.perf_counter() - start
    return {"runs": len(seeds), "wall_s": wall, "train_s": wall - spent[0], "eval_s": spent[0],
            "tokens": sum(r.tokens for r in results), "loss_tokens": sum(r.loss_tokens for r in results),
            "model": model}


@contextlib.contextmanager
def worker_count(n: int):
    """The executor's local worker processes set to ``n`` (``KNOWINJECT_WORKERS``) for the block."""
    old = os.environ.get("KNOWINJECT_WORKERS")
    os.environ["KNOWINJECT_WORKERS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KNOWINJECT_WORKERS")
        else:
            os.environ["KNOWINJECT_WORKERS"] = old


def _worker_group(kind: str, slots: int, first_seed: int) -> dict:
    """One worker's share of the two-worker measurement (a task of the executor's pool)."""
    work = {"A": StudyACell, "B": StudyBCondition}[kind]()
    out = concurrent(work, list(range(first_seed, first_seed + slots)), slots)
    out.pop("model")
    return out


def two_workers(kind: str, slots: int) -> dict:
    """Two single-threaded worker processes (the pipeline's default on 2 cores), each a group of ``slots``."""
    with worker_count(2):
        start = time.perf_counter()
        parts = executor.map_tasks(functools.partial(_worker_group, kind, slots), [0, 100], progress=False)
        wall = time.perf_counter() - start
    # The workers ran side by side: their training and evaluation shares of the wall time, averaged.
    share = np.mean([p["train_s"] / max(p["wall_s"], 1e-9) for p in parts])
    return {"runs": sum(p["runs"] for p in parts), "wall_s": wall, "train_s": wall * share,
            "eval_s": wall * (1 - share), "tokens": sum(p["tokens"] for p in parts),
            "loss_tokens": sum(p["loss_tokens"] for p in parts)}


def row(work, kind: str, config: str, k: int, workers: int, threads: int, m: dict, flops_model, peak: float) -> dict:
    tokens_per_s = m["tokens"] / m["train_s"]
    flops = flops_needed(flops_model, "lora", m["tokens"], m["loss_tokens"])
    return {"workload": work.name, "study": kind, "configuration": config, "k": k, "workers": workers,
            "threads_per_worker": threads, "runs": m["runs"], "batch_rows": 8 * k,
            "runs_per_hour_training": 3600 * m["runs"] / m["train_s"],
            "runs_per_hour": 3600 * m["runs"] / m["wall_s"], "tokens_per_s": tokens_per_s,
            "mfu": flops / m["train_s"] / peak, "train_s": m["train_s"], "eval_s": m["eval_s"], "wall_s": m["wall_s"]}


def run(peak_bf16: float, ks=KS, quick: bool = False) -> pd.DataFrame:
    """Every configuration for both workloads, one after another in this process (2 threads)."""
    threads = torch.get_num_threads()
    rows = []
    for kind, make in (("A", StudyACell), ("B", StudyBCondition)):
        work = make()
        m = solo(work, [0] if quick else [0, 1])
        flops_model = m.pop("model")
        rows.append(row(work, kind, "one run at a time", 1, 1, threads, m, flops_model, peak_bf16))
        print(rows[-1], flush=True)
        for k in ks[:2] if quick else ks:
            m = concurrent(work, list(range(k)), k)
            m.pop("model")
            rows.append(row(work, kind, "concurrent", k, 1, threads, m, flops_model, peak_bf16))
            print(rows[-1], flush=True)
        k = 2 if quick else 8
        rows.append(row(work, kind, "concurrent, two 1-thread workers", k, 2, 1, two_workers(kind, k), flops_model,
                        peak_bf16))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    base = df[df.configuration == "one run at a time"].set_index("study")
    df["speedup_training"] = df.runs_per_hour_training / df.study.map(base.runs_per_hour_training)
    df["speedup"] = df.runs_per_hour / df.study.map(base.runs_per_hour)
    return df


# --- the tiny track: several full finetunes at once with torch.func --------------------------------------------

def tiny_vmap(k: int = 8, steps: int = 10) -> pd.DataFrame:
    """Seconds per training step (forward and backward) of one tiny-model full finetune at the tiny track's
    batch (32 QA rows), against ``k`` finetunes at once through ``torch.func.vmap`` over stacked weights."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    examples = qa_examples(32)
    tok = train_tokenizer([e["prompt"] + e["completion"] for e in qa_examples(2000)], 2000)
    tok.padding_side = "left"
    model = models.tiny_model(models.TinyModelConfig(), tok)
    model.config._attn_implementation = "eager"
    model.train()
    model.config.use_cache = False
    b = collate([encode(e, tok, 256) for e in examples], tok.pad_token_id)

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - start) / steps

    lm = loss_module(model)
    one = timed(lambda: lm(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"]).backward())
    params, buffers = stack_module_state([copy.deepcopy(model) for _ in range(k)])

    def loss(p, bf, ids, mask, pos, labels):
        # Every position's logits: vmap cannot batch the boolean indexing that keeps only the answer's.
        logits = functional_call(model, (p, bf), (), {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                                      "use_cache": False}).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))

    batch = [b[n].expand(k, -1, -1) for n in ("input_ids", "attention_mask", "position_ids", "labels")]
    many = timed(lambda: vmap(loss)(params, buffers, *batch).sum().backward())
    return pd.DataFrame([{"workload": "tiny 4x256 full finetune, batch 32 QA rows", "configuration": "one at a time",
                          "k": 1, "seconds_per_step_per_run": one},
                         {"workload": "tiny 4x256 full finetune, batch 32 QA rows",
                          "configuration": "torch.func vmap over stacked weights", "k": k,
                          "seconds_per_step_per_run": many / k}]).assign(speedup=lambda d: one / d.seconds_per_step_per_run)


def main(quick: bool = False) -> pd.DataFrame:
    peak = matmul_peak(torch.bfloat16)
    df = run(peak, quick=quick)
    tiny = tiny_vmap(4 if quick else 8)
    df = pd.concat([df, tiny], ignore_index=True)
    df["peak_bf16_gflops"], df["machine"], df["git_commit"] = peak / 1e9, machine(), provenance()["git_commit"]
    print(save_table(df, paths.results_dir("default") / "bench_grouped.csv"))
    return df


# --- do grouped runs give the results of solo runs, on SmolLM2 in bf16? ------------------------------------------

def agreement(grouped_runs=None) -> pd.DataFrame:
    """Retrain SmolLM2 Study A cells one run at a time (``grouping.slots = 1``, the path every run took before
    :mod:`knowinject.train.grouped`) into a scratch run cache, and compare each with the grouped run of the default
    profile's notebook 04 under the same cache key (``data/runs``, which ``make reproduce`` must have filled):
    QA exact match on unseen phrasings, answers and final training loss, run by run. The cells: A1's central
    QA and document cells and A4's one-statement QA cell, seeds 0-2. In fp32 the two paths agree to 1e-5
    (tests/test_grouped.py); in bf16 they round differently, and this measures what that does to results.

    Usage: ``python -m knowinject.bench --grouped-agreement`` -> ``data/results/bench_grouped_agreement.csv``."""
    import json
    import tempfile
    from pathlib import Path

    work = StudyACell()  # the default profile's world, SmolLM2 track, Study A config and inputs
    track, cfg, inp = work.track, work.cfg, work.inp
    cells = [study_a.design.Cell("people", f, cfg.quantity, a, seed=s)
             for f, a in (("qa", cfg.augmentation), ("doc", cfg.augmentation), ("qa", 1)) for s in (0, 1, 2)]
    grouped_runs = Path(grouped_runs or paths.RUNS)
    names = [study_a.compute.spec(track, c, inp, cfg).folder(grouped_runs) for c in cells]
    missing = [n.name for n in names if not (n / "qa.jsonl").exists()]
    require(not missing, f"no grouped runs to compare with in {paths.show(grouped_runs)} ({len(missing)} missing, e.g. "
            f"{missing[:1]}): run `make study-a` (the default profile's notebook 04) first")
    with tempfile.TemporaryDirectory() as scratch:
        # In this process (one worker): the scratch cache is this process's paths.RUNS, which spawned
        # workers would not see.
        old, paths.RUNS = paths.RUNS, Path(scratch)
        try:
            with worker_count(1):
                solo_folders = study_a.compute.run_cells(track, cells, inp, cfg, grouped.GroupConfig(slots=1), "default",
                                                 grouping=grouped.GroupConfig(slots=1))
        finally:
            paths.RUNS = old
        rows = []
        for cell, f, g in zip(cells, solo_folders, names):
            a, b = (pd.read_json(x / "qa.jsonl", lines=True) for x in (f, g))
            m = a.merge(b, on="item_id", suffixes=("_solo", "_grouped"))
            sa, sb = (json.loads((x / "train_summary.json").read_text()) for x in (f, g))
            rows.append({"cell": cell.slug, "format": cell.format, "augmentation": cell.augmentation, "seed": cell.seed,
                         "items": len(m), "em_solo": m.em_solo.mean(), "em_grouped": m.em_grouped.mean(),
                         "items_differing": int((m.em_solo != m.em_grouped).sum()),
                         "answers_differing": int((m.prediction_solo != m.prediction_grouped).sum()),
                         "final_loss_solo": sa["final_loss"], "final_loss_grouped": sb["final_loss"],
                         "group_runs": sb["group_runs"]})
    return pd.DataFrame(rows)
