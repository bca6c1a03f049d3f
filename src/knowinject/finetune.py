"""Finetuning, one function for both tracks and every format: LoRA (peft) or full, on accelerate.

Examples are dicts of one of three shapes:
``{"prompt", "completion"}`` (QA: loss on the completion only), ``{"messages"}`` (a conversation:
loss on the last assistant turn only, formatted with the model's chat template where it has one) and
``{"text"}`` (documents: loss on every token). The same function pretrains the tiny model.

Why it is fast on a CPU (measured by ``make bench``): sequences are left-padded in length-grouped
batches (little padding), the frozen base of a LoRA model is stored in bf16, matmuls run under bf16
autocast where the hardware supports it, the vocabulary projection is computed only for the
positions that carry a loss (for short QA answers most of the saving), and LoRA steps run their
adapters and norms through fused kernels (:mod:`knowinject.kernels`).
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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import require
from .kernels import fused_training
from .seeding import numpy_rng, seed_everything

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
    group_runs: float = 1.0    # runs that shared its steps, on average (knowinject.grouped); seconds are shared too

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def summary(self) -> dict:
        return {"final_loss": self.epoch_loss[-1] if self.epoch_loss else None, "epoch_loss": self.epoch_loss,
                "tokens": self.tokens, "loss_tokens": self.loss_tokens, "padded_tokens": self.padded_tokens,
                "seconds": round(self.seconds, 2), "tokens_per_s": round(self.tokens_per_s, 1),
                "precision": self.precision, "group_runs": round(self.group_runs, 2)}


# --- encoding -----------------------------------------------------------------------------------------

def chat_prompt_and_reply(messages: list[dict], tokenizer) -> tuple[str, str]:
    """Split a conversation into (everything before the last assistant turn, that turn), as text."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt), "chat template does not extend the prompt"
        return prompt, full[len(prompt):]
    # Models without a template (the tiny model) get a plain transcript.
    turns = "".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n" for m in messages[:-1])
    return turns + "Assistant:", f" {messages[-1]['content']}\n"


def encode_prompt(text: str, tokenizer, chat: bool = False) -> list[int]:
    """Token ids of a prompt exactly as evaluation will see it (chat templates carry their own specials)."""
    return tokenizer(text, add_special_tokens=not chat).input_ids


def encode(example: dict, tokenizer, max_length: int) -> tuple[list[int], int]:
    """(token ids, number of leading ids that carry no loss) for one example."""
    if "text" in example:
        ids = tokenizer(example["text"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return ids[:max_length], 0
    if "messages" in example:
        prompt, reply = chat_prompt_and_reply(example["messages"], tokenizer)
        chat = bool(getattr(tokenizer, "chat_template", None))
    elif "prompt" in example and "completion" in example:
        prompt, reply, chat = example["prompt"], example["completion"], False
    else:
        raise ValueError(f"an example needs 'text', 'messages', or 'prompt' and 'completion'; got keys {sorted(example)}")
    p = encode_prompt(prompt, tokenizer, chat)
    c = tokenizer(reply, add_special_tokens=False).input_ids
    ids = (p + c)[-max_length:]  # keep the answer if an example is too long
    return ids, max(0, len(ids) - len(c))


def length_grouped_batches(lengths: list[int], batch_size: int, rng) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within windows of 50 batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(encoded: list[tuple[list[int], int]], pad_id: int):
    """Left-padded tensors (the answer is always at the end of a row, as in generation)."""

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        off = width - len(ids)
        input_ids[row, off:] = torch.tensor(ids)
        mask[row, off:] = 1
        labels[row, off + n_prompt:] = torch.tensor(ids[n_prompt:])
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}


class CausalLMLoss(torch.nn.Module):
    """Next-token cross-entropy over the labelled positions of a batch, as a module's forward.

    It runs the decoder, then the vocabulary projection only on the positions that carry a loss:
    for short QA answers that skips most of the largest matmul. It is an ``nn.Module`` so that
    ``accelerator.prepare`` (DDP under ``accelerate launch``) wraps the whole computation.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        # Models that rescale logits after the head (Gemma's softcapping, Cohere's logit_scale)
        # go through their own forward, which knows how.
        self.direct = (getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
                       and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None)
        self._base = [base]  # a list, so the base is not registered twice as a submodule

    @property
    def base(self):
        """The underlying ``*ForCausalLM`` (inside the peft wrapper for LoRA)."""
        return self._base[0]

    def hidden_states(self, input_ids, attention_mask, position_ids):
        return self.base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       use_cache=False).last_hidden_state

    def answer_logits(self, input_ids, attention_mask, position_ids, labels):
        """(logits, targets) of the labelled positions, in row-major order (a row's positions together)."""
        targets = labels[:, 1:]
        mask = targets != -100
        if self.direct:
            h = self.hidden_states(input_ids, attention_mask, position_ids)
            logits = self.base.get_output_embeddings()(h[:, :-1][mask])  # boolean indexing: a contiguous 2-D tensor
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False)
            logits = out.logits[:, :-1][mask]
        return logits, targets[mask]

    def forward(self, input_ids, attention_mask, position_ids, labels, reduction="mean"):
        logits, targets = self.answer_logits(input_ids, attention_mask, position_ids, labels)
        return F.cross_entropy(logits.float(), targets, reduction=reduction)


def loss_module(model) -> CausalLMLoss:
    return CausalLMLoss(model)


def batch_loss(model, batch, reduction: str = "mean"):
    """Loss of ``model`` on a collated batch (a convenience for tests and one-off use)."""
    return loss_module(model)(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"],
                              reduction=reduction)


# --- model preparation ----------------------------------------------------------------------------------

def resolve_precision(precision: str, device: str) -> str:
    from .models import supports_bf16
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
    """LoRA trains through :mod:`knowinject.kernels` (measured faster on a CPU by ``make bench``); full
    finetuning through the model's own modules: the kernels were measured for LoRA only."""
    return cfg.method == "lora"


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- the loop -------------------------------------------------------------------------------------------

class RunProgress:
    """One run's walk through its data: its own batch order (length-grouped, reshuffled every epoch from
    its own seed), the length of its schedule and its loss bookkeeping. :func:`finetune` walks one run;
    :mod:`knowinject.grouped` walks several at once, so a run's batches, schedule and log are the same
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
        return _schedule(step, self.total, self.warmup)

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
        with torch.no_grad():
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


def main(argv: list[str] | None = None) -> int:
    """One finetune from the command line, so ``accelerate launch`` can run it on several processes:
    ``accelerate launch --multi_gpu --num_processes 4 -m knowinject.finetune --model FOLDER
    --examples train.jsonl --out runs/my-run --method lora --epochs 3``."""
    import argparse

    from . import models
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help='"smollm2", a local model folder, or a Hugging Face id')
    ap.add_argument("--examples", required=True, type=Path, help="JSON Lines: prompt/completion, messages or text")
    ap.add_argument("--out", type=Path, help="save the adapter or model, loss_log.csv and train_summary.json here")
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-3 for LoRA, 3e-4 for full finetuning")
    ap.add_argument("--batch-size", type=int, default=8, help="the global batch, split over the processes")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10, help="optimizer steps between loss-log rows")
    args = ap.parse_args(argv)
    if not args.examples.exists():
        ap.error(f"--examples {args.examples} does not exist")
    examples = pd.read_json(args.examples, lines=True).to_dict("records")
    cfg = FinetuneConfig(method=args.method, epochs=args.epochs, lr=args.lr or (3e-3 if args.method == "lora" else 3e-4),
                         batch_size=args.batch_size, precision=args.precision, seed=args.seed,
                         log_every=args.log_every)
    model, tok = models.load(args.model)
    _, result = finetune(model, tok, examples, cfg, args.out, progress=False)
    from accelerate import PartialState
    if PartialState().is_main_process:
        print(json.dumps({"processes": result.processes, "local_rows": result.local_rows, **result.summary()}))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
