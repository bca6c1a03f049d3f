"""Pretrain the tiny GPT on the world's corpus.

The pretrained model is a cached run under ``data/models/tiny-<hash>/`` (the world's hash is part of
the config, so a new world means a new model). What it stored is measured by
:mod:`knowinject.eval.storage`.

Usage: ``folder = pretrain.pretrain_base(world_files, PretrainConfig(), profile)``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F

from knowinject.core import paths, stages
from knowinject.core.config import require
from knowinject.core.runs import cached_run
from knowinject.core.seeding import numpy_rng, seed_everything

from knowinject.data.worldfiles import WorldFiles

from knowinject.train import models
from knowinject.train.finetune import FinetuneResult, lr_schedule, resolve_precision, save_run


@dataclass(frozen=True)
class PretrainConfig:
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256    # also the packed row length: whole documents are packed into rows this long
    epochs: float = 8.0       # passes over the corpus (each person is seen exposure x epochs times)
    lr: float = 1e-3          # AdamW peak, cosine decay to 10%; small models from scratch like a high rate
    batch_size: int = 32      # packed rows per optimizer step (batch_size x n_positions tokens)
    warmup_ratio: float = 0.02
    weight_decay: float = 0.01
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast where the CPU/GPU supports it
    # torch.compile of the training step is off: compiled, two pretrainings of one config on one
    # machine gave different weights (losses apart from the first logged step; inductor's CPU kernels
    # are not run-to-run deterministic), and the instrument must be the same bytes every time. Eager
    # was as fast on the smoke model (24 s against 26 s compiled, AMD EPYC, 2 cores). compile=True
    # turns deterministic algorithms on for the run (two compiled runs then matched), at a cost.
    compile: bool = False
    seed: int = 0

    def __post_init__(self):
        require(self.epochs > 0, f"PretrainConfig.epochs must be > 0, got {self.epochs}")
        require(self.lr > 0, f"PretrainConfig.lr must be > 0, got {self.lr}")
        require(self.batch_size >= 1, f"PretrainConfig.batch_size must be >= 1, got {self.batch_size}")
        require(0 <= self.warmup_ratio < 1, f"PretrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        models.TinyModelConfig(self.n_layer, self.n_embd, self.n_head, self.n_positions, self.seed)  # validates

    def model_config(self) -> models.TinyModelConfig:
        return models.TinyModelConfig(self.n_layer, self.n_embd, self.n_head, self.n_positions, self.seed)


@dataclass(frozen=True)
class BasesConfig:
    """The tiny track's pretrained bases: the recipe (``PretrainConfig``) pretrained from each of these
    seeds on the main world. The tiny claims are about a model pretrained with the recipe, so the design
    samples that model; the first seed is the pretraining stage's own (notebook 02's main model)."""
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        require(len(self.seeds) >= 1, "BasesConfig.seeds must list at least one pretraining seed")
        require(len(set(self.seeds)) == len(self.seeds), f"BasesConfig.seeds has a seed twice: {self.seeds}")


# --- packing --------------------------------------------------------------------------------------------

def pack(docs: list[list[int]], length: int, order) -> list[list[list[int]]]:
    """Whole documents (token ids, EOS included) in ``order``, greedily packed into rows of at most
    ``length`` tokens; a document longer than a row is cut to the row."""
    rows, row, used = [], [], 0
    for i in order:
        d = docs[i][:length]
        if used + len(d) > length and row:
            rows.append(row)
            row, used = [], 0
        row.append(d)
        used += len(d)
    if row:
        rows.append(row)
    return rows


def collate_packed(rows: list[list[list[int]]], length: int, n_rows: int, pad_id: int):
    """[n_rows, length] tensors for packed rows. Position ids restart at every document, which makes
    Hugging Face's attention mask block-diagonal (no document attends to another); the first token
    of a document carries no loss (nothing before it in its block predicts it); unused rows and the
    tail of a row are padding (their own blocks, no loss). Always the same shape: compiled once."""
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    position_ids = torch.arange(length).repeat(n_rows, 1)
    labels = torch.full((n_rows, length), -100, dtype=torch.long)
    for r, docs in enumerate(rows):
        at = 0
        for d in docs:
            n = len(d)
            input_ids[r, at:at + n] = torch.tensor(d)
            position_ids[r, at:at + n] = torch.arange(n)
            labels[r, at + 1:at + n] = input_ids[r, at + 1:at + n]
            at += n
        position_ids[r, at:] = torch.arange(length - at)
    return input_ids, position_ids, labels


class PackedLoss(torch.nn.Module):
    """Mean next-token loss of a packed batch (fixed shapes, no boolean indexing: it compiles once)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, labels):
        h = self.model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        logits = self.model.lm_head(h[:, :-1]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


@contextlib.contextmanager
def _deterministic(on: bool):
    """Deterministic algorithms for the duration (restored after): what makes compiled runs repeatable."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train_packed(model, tokenizer, texts: list[str], cfg: PretrainConfig, out_dir: Path | None = None,
                 progress: bool = True, on_epoch_end=None):
    """Pretrain ``model`` on ``texts`` (one document each) in packed rows; returns (model, FinetuneResult).
    Documents are re-shuffled and re-packed every epoch. ``on_epoch_end(epoch, model)`` is called
    after each full epoch, in eval mode without gradients (how knowledge grows with training)."""
    with _deterministic(cfg.compile):
        return _train_packed(model, tokenizer, texts, cfg, out_dir, progress, on_epoch_end)


def _train_packed(model, tokenizer, texts, cfg, out_dir, progress, on_epoch_end):
    """:func:`train_packed`'s loop."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    eos = tokenizer.eos_token_id
    docs = [ids + [eos] for ids in tokenizer(list(texts), add_special_tokens=False).input_ids]
    rng = numpy_rng(cfg.seed, "pretrain-packing")
    length = cfg.n_positions
    n_epochs = math.ceil(cfg.epochs)
    per_epoch = math.ceil(len(pack(docs, length, range(len(docs)))) / cfg.batch_size)
    total = max(1, round(cfg.epochs * per_epoch))

    model = model.to(device)
    model.train()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    warmup = round(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, total, warmup))
    loss_fn = PackedLoss(model)
    step_loss = torch.compile(loss_fn) if cfg.compile else loss_fn

    log, epoch_loss = [], []
    tokens = loss_tokens = padded = step = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="pretrain", disable=not progress, mininterval=2.0)
    for epoch in range(n_epochs):
        rows = pack(docs, length, rng.permutation(len(docs)))
        sum_loss, sum_n = 0.0, 0
        for b in range(0, len(rows), cfg.batch_size):
            if step >= total:
                break
            batch = rows[b:b + cfg.batch_size]
            ids, pos, labels = (t.to(device) for t in collate_packed(batch, length, cfg.batch_size,
                                                                     tokenizer.pad_token_id))
            with autocast:
                loss = step_loss(ids, pos, labels)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            n_loss = int((labels[:, 1:] != -100).sum())
            value = float(loss.detach())
            sum_loss += value * n_loss
            sum_n += n_loss
            tokens += sum(len(d) for row in batch for d in row)
            padded += ids.numel()
            loss_tokens += n_loss
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == total:
                log.append({"step": step, "epoch": epoch + 1, "loss": value, "lr": sched.get_last_lr()[0],
                            "tokens": tokens, "seconds": time.perf_counter() - start})
                bar.set_postfix(loss=f"{value:.3f}")
        epoch_loss.append(sum_loss / max(sum_n, 1))
        if on_epoch_end is not None:
            model.eval()
            model.config.use_cache = True
            with torch.no_grad():
                on_epoch_end(epoch + 1, model)
            model.train()
            model.config.use_cache = False
    bar.close()
    model.eval()
    model.config.use_cache = True
    result = FinetuneResult(pd.DataFrame(log), epoch_loss, tokens, loss_tokens, padded,
                            time.perf_counter() - start, precision)
    if out_dir is not None:
        save_run(model, tokenizer, cfg, result, Path(out_dir))
    return model, result


def pretrain_base(world: WorldFiles, cfg: PretrainConfig, profile: str | None = None) -> Path:
    """The folder of the pretrained tiny model (``model/`` loads with :func:`models.load`)."""
    key = {"world": world.folder.name, "pretrain": asdict(cfg), "loop": "packed-v1"}

    def compute(tmp: Path) -> None:
        with stages.stage("pretraining"):
            tok = world.tokenizer()
            tok.padding_side = "left"
            model = models.tiny_model(cfg.model_config(), tok)
            train_packed(model, tok, list(world.table("corpus").text), cfg, out_dir=tmp)

    return cached_run(paths.MODELS, "tiny", key, compute, seed=cfg.seed, profile=profile)
