"""Where a pipeline run's time goes: named stages of work, each with its seconds and the FLOPs its models computed.

Usage: ``with stages.stage("knownness"): ...`` around a part of the work; :func:`watch` a model once (the
loaders in :mod:`knowinject.train.models` do) and its forward passes count their FLOPs into the innermost
stage open in their process. The pipeline gives each notebook a log (``KNOWINJECT_STAGE_LOG``): every
process of the notebook, its kernel and the local workers it starts, appends one JSON line per stage it
closes. Without that variable nothing is recorded and a stage costs nothing.

A stage's seconds are its own: the time of a stage opened inside it is that stage's, so the stages of one
process add up to its time. The kernel's wait for its workers is a stage of its own (:data:`WORKERS`);
:func:`table` divides that wall time among the stages the workers ran in it.

FLOPs follow ``make bench``'s rule (:func:`knowinject.bench.machine.flops_needed`): 2 per parameter of the
decoder body per real token (padding is waste and is not counted), 2 per parameter of the vocabulary
projection per position projected (only where it is used), times 3 in training when the body's own weights
train (full finetunes, pretraining: the backward pass computes weight and activation gradients) and times 2
when only adapters do (LoRA: activation gradients). A generated row that has finished still rides along
with its batch and is counted, so generation's count is an upper bound by those few tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

ENV = "KNOWINJECT_STAGE_LOG"
WORKERS = "waiting for the workers"  # the kernel's stage while local workers compute (divided by :func:`table`)
REST = "the rest of the notebook (kernel start, cached results, tables, figures)"

_stack: list[dict] = []   # the stages open in this process, innermost last
_worker = False           # whether this process is a worker (its stages are divided into the kernel's wait)


def mark_worker() -> None:
    """This process computes tasks for a notebook's kernel (:mod:`knowinject.core.executor` calls it)."""
    global _worker
    _worker = True


@contextlib.contextmanager
def stage(name: str, **extra):
    """A named part of the work (``extra``: fields written with its row, such as the workers it waited for)."""
    log = os.environ.get(ENV)
    if not log:
        yield
        return
    entry = {"name": name, "start": time.time(), "inner": 0.0, "flops": 0.0, "precision": set()}
    _stack.append(entry)
    try:
        yield
    finally:
        _stack.pop()
        end = time.time()
        total = end - entry["start"]
        if _stack:
            _stack[-1]["inner"] += total
        row = {"name": name, "pid": os.getpid(), "worker": _worker, "start": entry["start"], "end": end,
               "seconds": max(0.0, total - entry["inner"]), "flops": entry["flops"],
               "precision": "+".join(sorted(entry["precision"])), **extra}
        try:  # one short line per write, appended: the processes of a notebook share the file
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError:  # a worker on another node has no such folder: its stages go unrecorded
            pass


def count(flops: float, precision: str) -> None:
    """Add FLOPs to the innermost open stage (none open, or no log: nothing)."""
    if _stack:
        _stack[-1]["flops"] += flops
        _stack[-1]["precision"].add(precision)


def _precision(weight) -> str:
    import torch

    kind = weight.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def _factor(weight) -> int:
    """Forward only (1), LoRA training (2: activation gradients) or full training (3: and weight gradients)."""
    import torch

    if not torch.is_grad_enabled():
        return 1
    return 3 if weight.requires_grad else 2


def param_split(model) -> tuple[int, int]:
    """(non-embedding parameters, parameters of the vocabulary projection), adapters left out."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings().weight.numel()
    total = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    embed = base.get_input_embeddings().weight.numel()
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    return total - embed - (0 if tied else head), head


def watch(model) -> None:
    """Count the FLOPs of ``model``'s forward passes (a ``*ForCausalLM``) into the open stage. Idempotent."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None or getattr(body, "_knowinject_watched", False):
        return
    embed = base.get_input_embeddings().weight
    # A matrix of the body: it trains in a full finetune only.
    weight = next((p for n, p in body.named_parameters() if "lora_" not in n and p is not embed and p.dim() == 2), None)
    if weight is None:
        return
    n_body, n_head = param_split(base)

    def on_body(module, args, kwargs):
        if not _stack:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            return
        new = x.shape[1]
        mask = kwargs.get("attention_mask")
        # A decoding step (one new position) extends every row's mask by a 1: no sum needed, and none paid
        # at every generated token of a small model.
        padded = new > 1 and getattr(mask, "dim", lambda: 0)() == 2
        tokens = int(mask[:, -new:].sum()) if padded else x.shape[0] * new
        count(2.0 * n_body * tokens * _factor(weight), _precision(weight))

    def on_head(module, args):
        if _stack:
            count(2.0 * n_head * (args[0].numel() // args[0].shape[-1]) * _factor(weight), _precision(weight))

    body.register_forward_pre_hook(on_body, with_kwargs=True)
    head.register_forward_pre_hook(on_head)
    body._knowinject_watched = True


# --- the table the pipeline writes --------------------------------------------------------------------------------

def read(log: Path) -> list[dict]:
    """The rows of a stage log (a line cut short by a killed process is skipped)."""
    rows = []
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def table(rows: list[dict], notebook_seconds: float, peaks: dict[str, float]):
    """One row per stage of a notebook: ``seconds`` of wall time (adding up to ``notebook_seconds`` with the
    :data:`REST` row), ``worker_seconds`` (summed over the workers), ``flops`` and ``share_of_peak``: the FLOPs
    over the seconds times the machine's measured matmul peak (``peaks``: FLOP/s by precision, all cores).

    The kernel's wait for its workers is divided among the stages the workers ran in it: each worker stage
    counts ``1/n`` of its seconds (``n`` workers share the machine), and what is left of the wait, the workers
    idle at the end of a grid, is a row of its own."""
    import pandas as pd

    kernel = [r for r in rows if not r["worker"]]
    workers = [r for r in rows if r["worker"]]
    out = []
    for r in kernel:
        if r["name"] != WORKERS:
            out.append({**r, "wall": r["seconds"], "worker_seconds": float("nan")})
            continue
        inside = [w for w in workers if w["start"] >= r["start"] - 1.0 and w["end"] <= r["end"] + 1.0]
        n = max(1, int(r.get("workers", 1)))
        for w in inside:
            out.append({**w, "wall": w["seconds"] / n, "worker_seconds": w["seconds"]})
        idle = r["seconds"] - sum(w["seconds"] for w in inside) / n
        out.append({**r, "name": f"{WORKERS}: idle" if inside else WORKERS, "wall": max(0.0, idle),
                    "worker_seconds": float("nan"), "flops": 0.0})
    cols = ["stage", "precision", "seconds", "worker_seconds", "flops"]
    if not out:
        df = pd.DataFrame(columns=cols)
    else:
        df = pd.DataFrame(out).rename(columns={"name": "stage"})
        # A stage that ran in two precisions (the tiny track in fp32, SmolLM2 in bf16) has a row for each; its
        # parts that computed nothing join the precision it computed most in.
        most = df[df.precision != ""].groupby(["stage", "precision"]).flops.sum().reset_index()
        most = most.sort_values("flops", kind="stable").groupby("stage").precision.last()
        df["precision"] = df.precision.where(df.precision != "", df.stage.map(most).fillna(""))
        df = (df.groupby(["stage", "precision"], sort=False)
              .agg(seconds=("wall", "sum"), worker_seconds=("worker_seconds", lambda s: s.sum(min_count=1)),
                   flops=("flops", "sum"))
              .reset_index())
    rest = {"stage": REST, "seconds": max(0.0, notebook_seconds - float(df.seconds.sum())),
            "worker_seconds": float("nan"), "flops": 0.0, "precision": ""}
    df = pd.concat([df, pd.DataFrame([rest])], ignore_index=True)
    df["share_of_notebook"] = df.seconds / notebook_seconds if notebook_seconds > 0 else float("nan")
    peak = df.precision.map(lambda p: peaks.get(p, float("nan")) if p and "+" not in p else float("nan"))
    df["peak_flops_per_s"] = peak
    df["share_of_peak"] = (df.flops / (df.seconds * peak)).where(df.flops > 0)
    return df
