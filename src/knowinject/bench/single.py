"""The performance benchmark (``make bench``): training tokens/s and model FLOP utilisation of our
finetuning engine against plain Hugging Face Trainer, and batched against one-at-a-time evaluation.

Everything is measured in one run on this machine: the fp32 and bf16 matmul peaks first, then each
configuration on the same QA data. Tokens are real tokens (padding is waste, not throughput).
FLOPs are those the method needs: per token, 6x (full) or 4x (LoRA: forward plus activation
gradients) the non-embedding parameters, plus the same factor times the vocabulary projection for the
tokens that carry a loss only (the answer tokens); attention's sequence-length term is ignored
(sequences are ~16 tokens). MFU = achieved FLOP/s / measured bf16 peak (``mfu``) and / the peak
of the run's own dtype (``mfu_own_dtype``).

Usage: ``python -m knowinject.bench [--quick]`` -> ``data/results/bench.csv``, ``figures/bench.{png,pdf}``
(this module's parts alone: ``--replot``, ``--profile-only``).
"""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pandas as pd
import torch

from knowinject.core import paths
from knowinject.core.provenance import provenance

from knowinject.data import geo, render
from knowinject.data.corpus import train_tokenizer

from knowinject.train import finetune as finetune_module
from knowinject.train import models
from knowinject.train.encoding import collate, encode, loss_module
from knowinject.train.finetune import FinetuneConfig, finetune, prepare
from knowinject.train.kernels import fused_training

from knowinject.eval import evaluate

from knowinject.bench.machine import flops_needed, machine, matmul_peak, qa_examples

WARMUP_STEPS = 2


def bench_ours(load, method, dtype, examples, batch_size, name, kernels: bool = True):
    """Our engine; ``kernels=False`` is the ablation: LoRA through peft's and Hugging Face's own forwards."""
    model, tok = load()
    cfg = FinetuneConfig(method=method, epochs=1, lr=1e-4, batch_size=batch_size, log_every=1,
                         precision="bf16" if dtype == "bf16" else "fp32")
    uses = finetune_module.uses_kernels
    with mock.patch.object(finetune_module, "uses_kernels", lambda c: kernels and uses(c)):
        trained, res = finetune(model, tok, examples, cfg, progress=False)
    log = res.log
    # Throughput after the warm-up steps; token counts from the log's running totals.
    t0, t1 = log.seconds.iloc[WARMUP_STEPS - 1], log.seconds.iloc[-1]
    tokens = log.tokens.iloc[-1] - log.tokens.iloc[WARMUP_STEPS - 1]
    share = res.loss_tokens / res.tokens
    impl = "ours" if kernels or not finetune_module.uses_kernels(cfg) else "ours-without-kernels"
    return {"model": name, "method": method, "implementation": impl, "dtype": dtype,
            "tokens_per_s": tokens / (t1 - t0), "flops_per_token": flops_needed(trained, method, 1, share),
            "padding_waste": 1 - res.tokens / res.padded_tokens, "batch_size": batch_size, "steps": len(log)}


def bench_trainer(load, method, examples, batch_size, name):
    """Plain Trainer, TrainingArguments defaults (fp32, no length grouping), the same batch size, the
    model as Hugging Face loads it by default (SDPA attention), LoRA with peft's default targets."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, tok = load(attn_implementation="sdpa")
    model.config.use_cache = False
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    encoded = [encode(e, tok, 256) for e in examples]
    stamps, counts = [], []

    def collator(rows):
        b = collate([(r["ids"], r["n_prompt"]) for r in rows], tok.pad_token_id)
        counts.append((int(b["attention_mask"].sum()), int((b["labels"][:, 1:] != -100).sum()),
                       b["input_ids"].numel()))
        return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(paths.ensure(paths.ROOT / "build" / "bench-trainer")),
                             per_device_train_batch_size=batch_size, num_train_epochs=1, report_to=[],
                             save_strategy="no", logging_strategy="no", remove_unused_columns=False,
                             disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    data = [{"ids": ids, "n_prompt": n} for ids, n in encoded]
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[Clock()]).train()
    tokens = sum(c[0] for c in counts[WARMUP_STEPS:len(stamps)])
    loss_tokens = sum(c[1] for c in counts[:len(stamps)])
    real = sum(c[0] for c in counts[:len(stamps)])
    padded = sum(c[2] for c in counts[:len(stamps)])
    seconds = stamps[-1] - stamps[WARMUP_STEPS - 1]
    return {"model": name, "method": method, "implementation": "trainer-default", "dtype": "fp32",
            "tokens_per_s": tokens / seconds, "flops_per_token": flops_needed(model, method, 1, loss_tokens / real),
            "padding_waste": 1 - real / padded, "batch_size": batch_size, "steps": len(stamps)}


# Multiple-choice implementations: (label, batch size in questions, shared prompt). The baseline runs
# each (question, option) pair as a sequence of its own, one forward each, as lm-evaluation-harness
# does at batch size 1; the middle two separate what batching gives from what sharing the prompt gives.
MC_IMPLEMENTATIONS = (("batched", 128, True), ("batched-pairs", 32, False), ("one-question-at-a-time", 1, True),
                      ("one-at-a-time", 1, False))


def bench_eval(name, n_prompts: int):
    """Greedy generation and multiple-choice scoring: batched (128 prompts) vs one prompt at a time,
    with the weights in fp32 and in bf16 (the comparison of interest is within a dtype)."""
    facts = geo.realworld_facts(geo.RealWorldConfig(min_country_population=0, n_cities=500))
    qa = render.qa_items(facts, "heldout").head(n_prompts)
    mc = render.multiple_choice(facts, facts, seed=0).head(n_prompts // 2)
    rows = []
    for dtype in ("fp32", "bf16"):
        model, tok = models.load(models.SMOLLM2, dtype=torch.bfloat16 if dtype == "bf16" else None)
        for label, bs in (("batched", 128), ("one-at-a-time", 1)):
            # One-at-a-time runs a quarter of the items: it is slow, and items/s does not depend on n.
            n = len(qa) if bs > 1 else max(8, len(qa) // 4)
            start = time.perf_counter()
            evaluate.score_qa(model, tok, qa.head(n), batch_size=bs)
            rows.append({"model": name, "method": "eval-generate", "implementation": label, "dtype": dtype,
                         "items_per_s": n / (time.perf_counter() - start), "batch_size": bs})
        for label, bs, shared in MC_IMPLEMENTATIONS:
            # batch_size counts questions with a shared prompt and (question, option) pairs without.
            m = len(mc) if bs > 1 else max(4, len(mc) // 4)
            start = time.perf_counter()
            evaluate.score_multiple_choice(model, tok, mc.head(m), batch_size=bs, shared_prompt=shared)
            rows.append({"model": name, "method": "eval-multiple-choice", "implementation": label, "dtype": dtype,
                         "items_per_s": m / (time.perf_counter() - start), "batch_size": bs})
    return rows


def run(quick: bool = False) -> pd.DataFrame:
    torch.manual_seed(0)
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"matmul peak: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s", flush=True)
    steps = 6 if quick else 12
    bs = 16
    examples = qa_examples(bs * steps)
    def smol(attn_implementation=None):
        return models.load(models.SMOLLM2, attn_implementation=attn_implementation)

    def tiny(attn_implementation=None):
        tok = train_tokenizer([e["prompt"] + e["completion"] for e in qa_examples(2000)], 2000)
        tok.padding_side = "left"
        model = models.tiny_model(models.TinyModelConfig(), tok)
        model.config._attn_implementation = attn_implementation or models.default_attention()
        return model, tok

    rows = []
    plan = [(smol, "SmolLM2-135M", m, d) for m in ("lora", "full") for d in ("bf16", "fp32")] + \
           [(tiny, "tiny-4x256", "full", d) for d in ("bf16", "fp32")]
    for load, name, method, dtype in plan:
        rows.append(bench_ours(load, method, dtype, examples, bs, name))
        print(rows[-1], flush=True)
    for load, name, method in ((smol, "SmolLM2-135M", "lora"), (smol, "SmolLM2-135M", "full"),
                               (tiny, "tiny-4x256", "full")):
        rows.append(bench_trainer(load, method, examples, bs, name))
        print(rows[-1], flush=True)
    # LoRA at a larger batch, both implementations: per-step overheads are amortised over 4x the tokens.
    big = 64
    big_examples = qa_examples(big * (4 if quick else 8))
    rows.append(bench_ours(smol, "lora", "bf16", big_examples, big, "SmolLM2-135M"))
    print(rows[-1], flush=True)
    rows.append(bench_ours(smol, "lora", "bf16", big_examples, big, "SmolLM2-135M", kernels=False))
    print(rows[-1], flush=True)
    rows.append(bench_trainer(smol, "lora", big_examples, big, "SmolLM2-135M"))
    print(rows[-1], flush=True)
    rows.append(bench_ours(smol, "lora", "bf16", qa_examples(2 * big * (3 if quick else 6)), 2 * big, "SmolLM2-135M"))
    print(rows[-1], flush=True)
    rows += bench_eval("SmolLM2-135M", 128 if quick else 256)
    df = pd.DataFrame(rows)
    train = df.tokens_per_s.notna()
    df.loc[train, "achieved_gflops"] = df.tokens_per_s * df.flops_per_token / 1e9
    df.loc[train, "mfu"] = df.achieved_gflops * 1e9 / peaks["bf16"]
    df["mfu_own_dtype"] = df.achieved_gflops * 1e9 / df.dtype.map(peaks)
    df["peak_bf16_gflops"], df["peak_fp32_gflops"] = peaks["bf16"] / 1e9, peaks["fp32"] / 1e9
    df["flops_rule"] = np.where(train, np.where(df.method == "lora", "4 x non-embedding params per token + "
                                                "4 x vocab projection per answer token",
                                                "6 x non-embedding params per token + 6 x vocab projection per "
                                                "answer token"), "")
    df["machine"] = machine()
    df["git_commit"] = provenance()["git_commit"]
    return df


MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::addbmm")


def profile_step(batch_size: int = 64, steps: int = 3, kernels: bool = True) -> pd.DataFrame:
    """Where a SmolLM2 LoRA bf16 training step spends its time: torch.profiler's self CPU time per
    operator, summed into matmuls, other tensor operators (norms, activations, casts, copies,
    softmax: passes over memory) and time outside any operator (Python, autograd, the optimizer's
    bookkeeping), per step. The profiler slows every operator a little, so shares, not seconds, are
    the result; ``matmul_gflops`` is the FLOPs the method needs divided by the matmuls' time alone
    (the MFU ceiling if everything else were free)."""
    from torch.profiler import ProfilerActivity, profile

    model, tok = models.load(models.SMOLLM2)
    cfg = FinetuneConfig(method="lora", batch_size=batch_size, precision="bf16")
    model = prepare(model, cfg, "bf16").train()
    model.config.use_cache = False
    step_loss = loss_module(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    encoded = [encode(e, tok, 256) for e in qa_examples(batch_size * (steps + 2))]
    batches = [collate(encoded[i:i + batch_size], tok.pad_token_id) for i in range(0, len(encoded), batch_size)]

    def step(b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = step_loss(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with fused_training(model, enabled=kernels):
        for b in batches[:2]:
            step(b)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[2:]:
                step(b)
        wall = (time.perf_counter() - start) / steps
    ops = pd.DataFrame([{"op": e.key, "self_s": e.self_cpu_time_total / 1e6 / steps, "calls": e.count / steps}
                        for e in prof.key_averages() if e.key.startswith("aten::")])
    ops["category"] = np.where(ops.op.isin(MATMUL_OPS), "matmul", "other tensor operators")
    rows = [{"category": c, "op": "(all)", "seconds_per_step": g.self_s.sum(), "calls_per_step": g.calls.sum()}
            for c, g in ops.groupby("category")]
    rows.append({"category": "outside operators", "op": "(Python, autograd, optimizer)",
                 "seconds_per_step": wall - ops.self_s.sum(), "calls_per_step": np.nan})
    top = ops.sort_values("self_s", ascending=False).head(12)
    rows += [{"category": r.category, "op": r.op, "seconds_per_step": r.self_s, "calls_per_step": r.calls}
             for r in top.itertuples()]
    df = pd.DataFrame(rows)
    df["share_of_step"] = df.seconds_per_step / wall
    tokens = np.mean([int(b["attention_mask"].sum()) for b in batches[2:]])
    share = np.mean([int((b["labels"][:, 1:] != -100).sum()) / int(b["attention_mask"].sum()) for b in batches[2:]])
    flops = flops_needed(model, "lora", tokens, share * tokens)
    df["step_seconds_profiled"] = wall
    df["matmul_gflops"] = flops / ops[ops.category == "matmul"].self_s.sum() / 1e9
    df["batch_size"], df["tokens_per_step"], df["kernels"] = batch_size, tokens, kernels
    df["machine"] = machine()
    return df


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Our best dtype against Trainer fp32, per model and method; batched against single evaluation."""
    out = []
    for (model, method, bs), g in df[df.tokens_per_s.notna()].groupby(["model", "method", "batch_size"]):
        ours = g[g.implementation == "ours"].sort_values("tokens_per_s").iloc[-1]
        base = g[g.implementation == "trainer-default"].tokens_per_s
        if len(base):
            out.append({"model": model, "what": f"{method} finetune, batch {bs}: ours ({ours['dtype']}) / Trainer fp32",
                        "speedup": ours.tokens_per_s / base.iloc[0], "ours_mfu": ours.mfu})
    for (model, method, bs, dtype), g in df[df.tokens_per_s.notna()].groupby(["model", "method", "batch_size", "dtype"]):
        impl = g.set_index("implementation").tokens_per_s
        if "ours-without-kernels" in impl:
            out.append({"model": model, "what": f"{method} finetune, batch {bs}, {dtype}: kernels / peft's forward",
                        "speedup": impl["ours"] / impl["ours-without-kernels"]})
    for (model, method, dtype), g in df[df.items_per_s.notna()].groupby(["model", "method", "dtype"]):
        b = g.set_index("implementation").items_per_s
        for label in [i for i in b.index if i != "one-at-a-time"]:
            out.append({"model": model, "what": f"{method} {dtype}: {label} / one at a time",
                        "speedup": b[label] / b["one-at-a-time"]})
    return pd.DataFrame(out)
