"""What is left to shorten the default ``make reproduce`` once LoRA runs train side by side (part of
``make bench``): the remaining candidate levers, each measured on the default profile's own work, so that
whether a lever pays is a measurement and not a guess.

- **Notebook 02** pretrains the tiny models (the main world's bases and the replication's), one after the
  other on every core. Would two single-threaded workers, one model each, finish sooner? A slice of the corpus
  is pretrained twice in turn with every thread, then twice side by side, and the weights that 1 and 2 threads
  give are compared (bf16 reductions are split differently across threads).
- **Notebook 02, compiled**: pretraining is eager because compiled kernels were not run-to-run deterministic.
  ``compile=True`` turns deterministic algorithms on for the run; is that repeatable, and what does it save?
  The same slice is pretrained eager, then compiled twice in one process (the first pays the compilation,
  the second runs on the compiled step, as every step after the first of a real run does), and the two
  compiled runs' weights are compared byte for byte.
- **The tiny track's runs** (full finetunes, one at a time in each worker): where one run's time goes
  (loading the base, training, evaluating) for Study A's central cell, on one thread as a worker runs it,
  with the training step's model FLOP utilisation.
- **Study B's evaluation**, which costs a SmolLM2 run about as much as its training: a trained run's
  zero-shot answers at one checkpoint, its few-shot answers and its attention measurement, against its
  training, with the FLOPs the answers' prompts need.

A lever is worth building only where the work is not already bound by the CPU's matrix units: MFU here is
against the bf16 matmul peak measured at the same thread count.

Usage: ``python -m knowinject.bench --levers-only [--quick]`` -> ``data/results/bench_levers.csv``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import pandas as pd
import torch

from knowinject.core import executor, paths
from knowinject.core.provenance import provenance, save_table

from knowinject.train import models, pretrain, tracks
from knowinject.train.finetune import finetune

from knowinject.eval import mechanism

from knowinject.studies import study_a, study_b

from knowinject.bench.concurrent import StudyBCondition, default_config, default_track, default_world, solo, worker_count
from knowinject.bench.machine import flops_needed, machine, matmul_peak, param_split

# --- notebook 02: the two pretrainings, in turn or side by side ----------------------------------------------

def _pretrain_slice(n_docs: int, compile: bool | None = None) -> dict:
    """One epoch of the default pretraining recipe (compiled or eager as the profile says, unless ``compile``
    says otherwise) on the corpus's first ``n_docs`` documents, in this process at its thread count: seconds
    and a hash of the weights."""
    cfg = replace(default_config(pretrain.PretrainConfig, "pretrain"), epochs=1)
    if compile is not None:
        cfg = replace(cfg, compile=compile)
    w = default_world()
    tok = w.tokenizer()
    tok.padding_side = "left"
    model = models.tiny_model(cfg.model_config(), tok)
    start = time.perf_counter()
    model, result = pretrain.train_packed(model, tok, list(w.table("corpus").text)[:n_docs], cfg, progress=False)
    digest = hashlib.sha256(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())).hexdigest()
    return {"seconds": time.perf_counter() - start, "weights": digest, "threads": torch.get_num_threads(),
            "tokens": result.tokens}


def pretraining(n_docs: int) -> list[dict]:

    start = time.perf_counter()
    serial = [_pretrain_slice(n_docs) for _ in range(2)]
    serial_s = time.perf_counter() - start
    with worker_count(2):
        start = time.perf_counter()
        side = executor.map_tasks(_pretrain_slice, [n_docs, n_docs], progress=False)
        side_s = time.perf_counter() - start
    same = side[0]["weights"] == serial[0]["weights"]
    compiled = default_config(pretrain.PretrainConfig, "pretrain").compile
    note = (f"{n_docs} corpus documents ({serial[0]['tokens']} tokens), 1 epoch, "
            f"{'compiled, compilation included' if compiled else 'eager'}; "
            f"1 and {serial[0]['threads']} threads give {'the same' if same else 'different'} weights")
    stage = "02 pretraining (two models)"
    return [{"stage": stage, "part": "one after the other, all threads", "threads": serial[0]["threads"],
             "seconds": serial_s, "speedup": 1.0, "note": note},
            {"stage": stage, "part": "side by side, two 1-thread workers", "threads": side[0]["threads"],
             "seconds": side_s, "speedup": serial_s / side_s, "note": note,
             "same_weights": same}]


def compiled_pretraining(n_docs: int) -> list[dict]:
    """The slice eager, then compiled (deterministic algorithms on) twice in this process."""
    eager = _pretrain_slice(n_docs, compile=False)
    first, second = _pretrain_slice(n_docs, compile=True), _pretrain_slice(n_docs, compile=True)
    same = first["weights"] == second["weights"]
    note = (f"{n_docs} corpus documents ({eager['tokens']} tokens), 1 epoch; the two compiled runs give "
            f"{'the same' if same else 'different'} weights, the compiled and the eager "
            f"{'the same' if first['weights'] == eager['weights'] else 'different'} ones")
    stage = "02 pretraining, compiled with deterministic algorithms"
    return [{"stage": stage, "part": part, "threads": r["threads"], "seconds": r["seconds"],
             "speedup": eager["seconds"] / r["seconds"], "note": note,
             "same_weights": same if part != "eager" else float("nan")}
            for part, r in (("eager", eager), ("compiled, first run (compilation included)", first),
                            ("compiled, second run (step already compiled)", second))]


# --- the tiny track: one run, as a worker computes it ---------------------------------------------------------

def tiny_run(threads: int = 1) -> list[dict]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = matmul_peak(torch.bfloat16)
        w = default_world()
        track = default_track("tiny", w)
        cfg = default_config(study_a.design.StudyAConfig, "study_a_tiny")
        inp = study_a.design.Inputs(w)
        cell = study_a.design.Cell("people", "qa", cfg.quantity, cfg.augmentation, seed=0)
        data = study_a.design.training_examples(cell, inp, cfg)
        model, tok = tracks.load_base(track)  # warm: the first load also reads the tokenizer files
        t0 = time.perf_counter()
        model, tok = tracks.load_base(track)
        t1 = time.perf_counter()
        model, result = finetune(model, tok, data, track.finetune_config(cfg.epochs, 0, max_length=384), progress=False)
        t2 = time.perf_counter()
        study_a.compute.evaluate_cell(model, tok, cell, inp, cfg, track.unseen_phrasing)
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(old)
    mfu = flops_needed(model, "full", result.tokens, result.loss_tokens) / (t2 - t1) / peak
    stage, total = f"tiny track run (Study A central cell, {len(data)} examples, {cfg.epochs} epochs)", t3 - t0
    return [{"stage": stage, "part": part, "threads": threads, "seconds": s, "share": s / total,
             "mfu": mfu if part == "finetune" else float("nan"),
             "note": f"{result.tokens} training tokens" if part == "finetune" else ""}
            for part, s in (("load the base", t1 - t0), ("finetune", t2 - t1), ("evaluate", t3 - t2))]


# --- Study B: a run's evaluation against its training ----------------------------------------------------------

def study_b_eval() -> list[dict]:
    work = StudyBCondition()
    items, few_shot, n_att = work.design.items, list(work.design.few_shot), work.cfg.n_attention
    work.checkpoints = lambda job: set()  # train only: the evaluation is timed part by part below
    m = solo(work, [0])
    model, tok = m["model"], m["tokenizer"]
    peak = matmul_peak(torch.bfloat16)
    body, head = param_split(model)

    def answered(prompts):
        # Every prompt token and every answer token (and the newline that ends it) passes through the body
        # once; the vocabulary projection runs once per answer token (the prefill's last position gives the
        # first). The FLOPs answering needs: rows that finish early still ride along with their batch.
        start = time.perf_counter()
        with torch.no_grad():
            preds = study_b.compute.answer_questions(model, tok, items, prompts).prediction
        seconds = time.perf_counter() - start
        answer = sum(len(tok(" " + p).input_ids) + 1 for p in preds)
        return seconds, (sum(len(tok(p).input_ids) for p in prompts) + answer, answer)

    start = time.perf_counter()
    with torch.no_grad():
        mechanism.attention_to_subject(model, tok, items.iloc[:n_att])
    parts = [("training", m["train_s"], None),
             ("attention to the subject (last checkpoint)", time.perf_counter() - start, None),
             ("zero-shot answers, one checkpoint", *answered(list(items.prompt))),
             ("few-shot answers (last checkpoint)", *answered(few_shot))]
    n_ckpt = len(work.cfg.checkpoints)
    per_run = {"training": 1, "zero-shot answers, one checkpoint": n_ckpt}
    run_s = sum(s * per_run.get(p, 1) for p, s, _ in parts)
    rows = []
    for part, s, tokens in parts:
        row = {"stage": f"Study B SmolLM2 run ({len(items)} test facts, checkpoints {list(work.cfg.checkpoints)})",
               "part": part, "threads": torch.get_num_threads(), "seconds": s, "share": s * per_run.get(part, 1) / run_s,
               "note": f"x{per_run[part]} a run" if per_run.get(part, 1) > 1 else ""}
        if tokens is not None:
            row["mfu"] = 2 * (body * tokens[0] + head * tokens[1]) / s / peak
            row["note"] = (row["note"] + f"; {tokens[0]} prompt and answer tokens").lstrip("; ")
        elif part == "training":
            row["mfu"] = flops_needed(model, "lora", m["tokens"], m["loss_tokens"]) / s / peak
        rows.append(row)
    return rows


# --- Study B's answers: the prefill's vocabulary projection, every prompt position or the last only ------------

def prefill_projection(quick: bool = False) -> list[dict]:
    """Each real model's zero-shot and few-shot answers to the Study B design's test questions, through a
    LoRA-wrapped base (frozen weights, as every finetuned run is evaluated), with the prefill projecting every
    prompt position onto the vocabulary (versions before 0.8.1) or the last one only: seconds, and whether
    the answers are the same strings. Gemma 3's 262k-entry projection makes the difference large."""
    from peft import LoraConfig, get_peft_model

    from knowinject.eval import evaluate

    work = StudyBCondition()
    n = 48 if quick else len(work.design.items)
    prompts = {"zero-shot": list(work.design.items.prompt)[:n], "few-shot": list(work.design.few_shot)[:n]}
    rows = []
    for name in (models.SMOLLM2, models.GEMMA3):
        track = tracks.make("smollm2", tracks.settings("default", "smollm2", name), default_world(), model_name=name)
        model, tok = tracks.load_base(track)
        model = get_peft_model(model, LoraConfig(r=track.lora_r, target_modules=["q_proj", "v_proj"]))
        model.eval()
        for form, ps in prompts.items():
            out = {}
            for prefill in ("every", "last"):
                start = time.perf_counter()
                answers = evaluate.generate(model, tok, ps, batch_size=64, prefill=prefill)
                out[prefill] = (time.perf_counter() - start, answers)
            for prefill, (s, answers) in out.items():
                rows.append({"stage": f"Study B answers, {name} ({len(ps)} {form} prompts)",
                             "part": f"prefill projects {'every prompt position' if prefill == 'every' else 'the last position'}",
                             "threads": torch.get_num_threads(), "seconds": s, "speedup": out["every"][0] / s,
                             "same_answers": answers == out["every"][1]})
    return rows


PARTS = ("pretraining", "compiled_pretraining", "tiny_run", "study_b_eval", "prefill_projection")


def main(quick: bool = False, only: list[str] | None = None) -> pd.DataFrame:
    """Every lever (or ``only`` the named parts of :data:`PARTS`, whose rows then replace those of the same
    stages in the saved table; each row keeps the commit and machine it was measured on)."""
    bad = sorted(set(only or ()) - set(PARTS))
    if bad:
        raise ValueError(f"no lever part {bad}: choose from {', '.join(PARTS)}")
    n_docs = 400 if quick else 8000
    calls = {"pretraining": lambda: pretraining(n_docs), "compiled_pretraining": lambda: compiled_pretraining(n_docs),
             "tiny_run": tiny_run, "study_b_eval": study_b_eval, "prefill_projection": lambda: prefill_projection(quick)}
    df = pd.DataFrame([row for part in (only or PARTS) for row in calls[part]()])
    df["machine"], df["git_commit"] = machine(), provenance()["git_commit"]
    out = paths.results_dir("default") / "bench_levers.csv"
    if only and out.exists():
        old = pd.read_csv(out)
        stages = list(dict.fromkeys([*old.stage, *df.stage]))  # the table's order, new stages last
        df = pd.concat([old[~old.stage.isin(df.stage)], df], ignore_index=True)
        df = df.sort_values("stage", key=lambda c: c.map(stages.index), kind="stable").reset_index(drop=True)
    print(save_table(df, out))
    return df
