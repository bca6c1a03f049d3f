"""Finetuning, one function for both tracks and every format: LoRA (peft) or full, on accelerate.

Examples are dicts of the shapes :mod:`knowinject.train.encoding` encodes (QA, conversations,
documents). The same loop pretrains the tiny model.

Why it is fast on a CPU (measured by ``make bench``): sequences are left-padded in length-grouped
batches (little padding), the frozen base of a LoRA model is stored in bf16, matmuls run under bf16
autocast where the hardware supports it, the vocabulary projection is computed only for the
positions that carry a loss (for short QA answers most of the saving), and LoRA steps run their
adapters and norms through fused kernels (:mod:`knowinject.train.kernels`).
It runs unchanged under ``accelerate launch`` on several GPUs.

Usage: ``result = finetune(model, tok, examples, FinetuneConfig(method="lora", epochs=3), out_dir)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from knowinject.core import stages
from knowinject.core.config import require
from knowinject.core.seeding import numpy_rng, seed_everything

from knowinject.train.encoding import collate, encode, length_grouped_batches, loss_module
from knowinject.train.kernels import fused_training
from knowinject.train.models import supports_bf16

# peft's own default for Llama-style models (the LoRA paper's choice): adapters on the query and
# value projections. Adding every linear layer costs ~35% more time per token on a CPU (measured).
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    method: Literal["lora", "full"] = "lora"
    epochs: float = 3.0                  # passes over the examples (fractions allowed, for pretraining budgets)
    lr: float = 1e-3                     # peak learning rate (LoRA likes ~1e-3, full finetuning ~1e-4)
    batch_size: int = 16                 # sequences per optimizer step
    max_length: int = 256                # longer examples are truncated from the left (the answer is kept)
    warmup_ratio: float = 0.05           # linear warmup, then cosine decay to 10% of lr
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0            # dropout on the adapter input; 0 keeps runs cheap and deterministic
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 where the CPU/GPU supports it
    seed: int = 0
    log_every: int = 10                  # optimizer steps between loss-log rows

    def __post_init__(self):
        require(self.epochs > 0, f"FinetuneConfig.epochs must be > 0, got {self.epochs}")
        require(self.lr > 0, f"FinetuneConfig.lr must be > 0, got {self.lr}")
        require(self.batch_size >= 1, f"FinetuneConfig.batch_size must be >= 1, got {self.batch_size}")
        require(self.max_length >= 8, f"FinetuneConfig.max_length must be >= 8, got {self.max_length}")
        require(0 <= self.warmup_ratio < 1, f"FinetuneConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(self.lora_r >= 1, f"FinetuneConfig.lora_r must be >= 1, got {self.lora_r}")


@dataclass
class FinetuneResult:
    log: pd.DataFrame          # one row per logged step: step, epoch, loss, lr, tokens, seconds
    epoch_loss: list[float]    # mean training loss per epoch (over loss-carrying tokens)
    tokens: int                # real (non-padding) tokens processed
    loss_tokens: int           # tokens that carried a loss
    padded_tokens: int         # positions processed including padding (the waste)
    seconds: float
    precision: str
    processes: int = 1         # data-parallel processes (accelerate launch); tokens above are global
    local_rows: int = 0        # rows this process ran forward and backward (a share of the global batches)
    group_runs: float = 1.0    # runs that shared its steps, on average (knowinject.train.grouped); seconds are shared too

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def summary(self) -> dict:
        return {"final_loss": self.epoch_loss[-1] if self.epoch_loss else None, "epoch_loss": self.epoch_loss,
                "tokens": self.tokens, "loss_tokens": self.loss_tokens, "padded_tokens": self.padded_tokens,
                "seconds": round(self.seconds, 2), "tokens_per_s": round(self.tokens_per_s, 1),
                "precision": self.precision, "group_runs": round(self.group_runs, 2)}


# --- model preparation ----------------------------------------------------------------------------------

def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bf16" if supports_bf16(device) else "fp32"
    return precision


def prepare(model, cfg: FinetuneConfig, precision: str):
    """Wrap ``model`` with LoRA adapters (frozen base in bf16 when training in bf16) or unfreeze it."""

    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if precision == "bf16":
        model = model.to(torch.bfloat16)  # frozen weights: no precision is lost to training
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    # Adapters stay fp32 (peft's default) so the optimizer updates them at full precision.
    return get_peft_model(model, lora)


def uses_kernels(cfg: FinetuneConfig) -> bool:
    """LoRA trains through :mod:`knowinject.train.kernels` (measured faster on a CPU by ``make bench``); full
    finetuning through the model's own modules: the kernels were measured for LoRA only."""
    return cfg.method == "lora"


def lr_schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- the loop -------------------------------------------------------------------------------------------

class RunProgress:
    """One run's walk through its data: its own batch order (length-grouped, reshuffled every epoch from
    its own seed), the length of its schedule and its loss bookkeeping. :func:`finetune` walks one run;
    :mod:`knowinject.train.grouped` walks several at once, so a run's batches, schedule and log are the same
    whether it trains alone or beside others."""

    def __init__(self, cfg: FinetuneConfig, encoded: list[tuple[list[int], int]]):
        self.cfg, self.encoded = cfg, encoded
        self.lengths = [len(ids) for ids, _ in encoded]
        self.rng = numpy_rng(cfg.seed, "batches")
        self.n_epochs = math.ceil(cfg.epochs)
        self.per_epoch = math.ceil(len(encoded) / cfg.batch_size)
        self.total = max(1, round(cfg.epochs * self.per_epoch))
        self.warmup = round(cfg.warmup_ratio * self.total)
        self.step = 0
        self.log: list[dict] = []
        self.epoch_loss: list[float] = []
        self.tokens = self.loss_tokens = self.padded = 0
        self._sum, self._n = 0.0, 0
        self.start = time.perf_counter()

    def schedule(self, step: int) -> float:
        """The learning-rate factor at ``step`` (linear warmup, then cosine decay to 10%)."""
        return lr_schedule(step, self.total, self.warmup)

    def events(self):
        """``("batch", epoch, indices)`` for every optimizer step, and ``("epoch", epoch, full)`` after every
        epoch (``full``: the epoch ran all its batches, so a checkpoint is due)."""
        for epoch in range(1, self.n_epochs + 1):
            for idx in length_grouped_batches(self.lengths, self.cfg.batch_size, self.rng):
                if self.step >= self.total:
                    break
                yield "batch", epoch, idx
            self.epoch_loss.append(self._sum / max(self._n, 1))
            self._sum, self._n = 0.0, 0
            yield "epoch", epoch, self.step == epoch * self.per_epoch

    def record(self, epoch: int, loss: float, n_loss: int, tokens: int, padded: int, lr: float) -> None:
        """Book one optimizer step: its mean loss over ``n_loss`` tokens, real and padded tokens, next lr."""
        self._sum += loss * n_loss
        self._n += n_loss
        self.tokens += tokens
        self.padded += padded
        self.loss_tokens += n_loss
        self.step += 1
        if self.step % self.cfg.log_every == 0 or self.step == self.total:
            self.log.append({"step": self.step, "epoch": epoch, "loss": loss, "lr": lr, "tokens": self.tokens,
                             "seconds": time.perf_counter() - self.start})

    def result(self, precision: str, processes: int = 1, local_rows: int = 0, group_runs: float = 1.0) -> FinetuneResult:
        return FinetuneResult(pd.DataFrame(self.log), self.epoch_loss, self.tokens, self.loss_tokens, self.padded,
                              time.perf_counter() - self.start, precision, processes, local_rows, group_runs)


def fused_optimizer(cfg: FinetuneConfig) -> bool:
    """Full finetuning steps every weight of the model: one fused AdamW kernel instead of ~10 passes per
    tensor (the tiny model's step on one core: 98 -> 84 ms in bf16). LoRA runs keep the per-tensor
    AdamW: their optimizer is a few percent of a step, and their results stay those of earlier versions."""
    return cfg.method == "full"


def optimizer(params, cfg: FinetuneConfig, progress: RunProgress):
    """(AdamW, its LambdaLR): one run's optimizer and schedule, the same for solo and grouped training."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            fused=True if fused_optimizer(cfg) else None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, progress.schedule)


def finetune(model, tokenizer, examples: list[dict], cfg: FinetuneConfig, out_dir: Path | None = None,
             progress: bool = True, on_epoch_end: Callable[[int, object], None] | None = None):
    """Train ``model`` on ``examples``; returns (trained model, :class:`FinetuneResult`).

    ``on_epoch_end(epoch, model)`` is called after each full epoch with the model in eval mode (KV
    cache on, no gradients): how training length is studied as an axis, by evaluating checkpoints of
    one run instead of training one run per length.

    The model is modified (LoRA adapters added or weights updated); load a fresh base per run.
    With ``out_dir`` the adapter (LoRA) or the whole model (full) is saved there with
    ``save_pretrained``, next to ``loss_log.csv`` and ``train_summary.json``.
    """
    with stages.stage("finetuning"):  # its checkpoints' evaluation is a stage of its own (_call_at_checkpoint)
        return _finetune(model, tokenizer, examples, cfg, out_dir, progress, on_epoch_end)


def _finetune(model, tokenizer, examples, cfg, out_dir, progress, on_epoch_end):
    import contextlib

    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("finetune() got no examples")
    seed_everything(cfg.seed)
    probe = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, probe)
    # Autocast is ours rather than Accelerator(mixed_precision=...), whose process-wide state would
    # forbid a later run in the same kernel from choosing another precision.
    accelerator = Accelerator()
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    encoded = [encode(e, tokenizer, cfg.max_length) for e in examples]
    run = RunProgress(cfg, encoded)

    model = prepare(model, cfg, precision)
    model.train()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no KV cache while training; restored below for generation
    opt, sched = optimizer([p for p in model.parameters() if p.requires_grad], cfg, run)
    # The scheduler stays outside accelerator.prepare: its wrapper steps once per process, which under
    # DDP would run the schedule num_processes times too fast. Every process steps it once per step.
    wrapped, opt = accelerator.prepare(loss_module(model), opt)
    world, rank = accelerator.num_processes, accelerator.process_index

    local_rows = 0
    bar = tqdm(total=run.total, desc=f"{cfg.method} finetune", disable=not progress or not accelerator.is_main_process,
               mininterval=2.0)
    # LoRA steps run through the fused kernels; they are swapped out again at every epoch's end, so a
    # checkpoint is evaluated exactly like a finished run.
    kernels_on, fused = contextlib.ExitStack(), False
    for kind, epoch, what in run.events():
        if kind == "epoch":
            kernels_on.close()
            fused = False
            if on_epoch_end is not None and what:
                _call_at_checkpoint(on_epoch_end, epoch, accelerator.unwrap_model(wrapped).model)
            continue
        if not fused:
            kernels_on.enter_context(fused_training(model, enabled=uses_kernels(cfg)))
            fused = True
        idx = what
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        n_loss = int((batch["labels"][:, 1:] != -100).sum())
        if world == 1:
            batch = {k: batch[k].to(accelerator.device) for k in STEP_KEYS}
            with autocast:
                loss = wrapped(**batch)
            accelerator.backward(loss)
            value = float(loss.detach())
            local_rows += len(idx)
        else:
            value = _distributed_step(wrapped, accelerator, autocast, encoded, idx, tokenizer.pad_token_id,
                                      n_loss, world, rank)
            batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
            local_rows += len(idx[rank::world])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        run.record(epoch, value, n_loss, int(batch["attention_mask"].sum()), batch["input_ids"].numel(),
                   sched.get_last_lr()[0])
        bar.update(1)
        if run.step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{value:.3f}")
    kernels_on.close()
    bar.close()
    model = accelerator.unwrap_model(wrapped).model
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True  # training turned it off; generation needs it (6-10x faster)
    result = run.result(precision, world, local_rows)
    if out_dir is not None and accelerator.is_main_process:
        save_run(model, tokenizer, cfg, result, Path(out_dir))
    accelerator.wait_for_everyone()
    return model, result


STEP_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")


def _distributed_step(wrapped, accelerator, autocast, encoded, idx, pad_id: int, n_global: int, world: int,
                      rank: int) -> float:
    """One step's forward and backward on this process's rows of the global batch (rows rank, rank +
    world, ...): the summed loss, scaled so that DDP's gradient average equals the gradient of the
    global batch's mean loss. Returns that mean loss (all processes agree on it)."""
    mine = idx[rank::world]
    empty = len(mine) == 0
    if empty:  # a last batch smaller than the world: take part in the all-reduce with a zero loss
        mine = idx[:1]
    batch = collate([encoded[i] for i in mine], pad_id)
    batch = {k: batch[k].to(accelerator.device) for k in STEP_KEYS}
    with autocast:
        total = wrapped(**batch, reduction="sum")
    scale = 0.0 if empty else world / max(n_global, 1)
    accelerator.backward(total * scale)
    summed = accelerator.reduce(total.detach().float() * (0.0 if empty else 1.0), reduction="sum")
    return float(summed) / max(n_global, 1)


def _call_at_checkpoint(fn, epoch: int, model) -> None:
    model.eval()
    cache = getattr(model.config, "use_cache", None)
    if cache is not None:
        model.config.use_cache = True
    try:
        with torch.no_grad(), stages.stage("checkpoint evaluation"):
            fn(epoch, model)
    finally:
        model.train()
        if cache is not None:
            model.config.use_cache = cache


def save_run(model, tokenizer, cfg: FinetuneConfig, result: FinetuneResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir / "model")  # LoRA: the adapter only; full: the whole model
    tokenizer.save_pretrained(out_dir / "model")
    result.log.to_csv(out_dir / "loss_log.csv", index=False)
    (out_dir / "train_summary.json").write_text(json.dumps({"config": asdict(cfg), **result.summary()}, indent=2))
