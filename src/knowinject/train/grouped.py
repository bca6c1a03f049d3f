"""Many LoRA runs over one frozen base: up to ``slots`` runs train at once in one process, each step
concatenating one batch of every run, each row through its own run's adapter.

Why: a run of a study grid is small (SmolLM2, batch 8 of ~20-token QA rows), and at that size a step
is mostly per-operator overhead and element-wise passes, not matmuls. The runs of a grid differ only in
their adapters and data, so they can share the frozen base's forward and backward: the base's matmuls
run once over every run's rows, each adapter's two small matmuls over its own rows only
(:class:`kernels._GroupedLoraLinear`). ``make bench`` measures what it buys (runs per hour, solo
against 2-16 at once).

Each run keeps exactly what it would have alone: its batch order, learning-rate schedule, loss and
log (:class:`finetune.RunProgress`), its own AdamW state (:func:`finetune.optimizer`), and an adapter
initialised from its own seed the way :func:`finetune.prepare` initialises it. Runs of unequal length
leave the group when they finish and the next waiting run takes the free slot. A run's checkpoints are
frozen copies of its adapter; they are evaluated together, in one pass over the base, by the caller's
``evaluate(model, checkpoints)``, which routes each checkpoint's rows to its slot
(``evaluate.generate(..., routes=...)``).

Usage: ``results = grouped.train(model, tok, [Job(examples, cfg), ...], evaluate_fn)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from knowinject.core import stages
from knowinject.core.config import require
from knowinject.core.seeding import seed_everything

from knowinject.train import kernels
from knowinject.train.encoding import collate, encode, loss_module
from knowinject.train.finetune import STEP_KEYS, FinetuneConfig, FinetuneResult, RunProgress, optimizer, resolve_precision


@dataclass
class Job:
    """One run of a group: its examples, its finetuning config, and the epochs at which its adapter is
    evaluated (empty: after its last epoch only)."""
    examples: list[dict]
    cfg: FinetuneConfig
    checkpoints: tuple[int, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A run's adapter at the end of an epoch, frozen in ``slot`` until it is evaluated; the run's last
    checkpoint is ``final`` and carries its training result."""
    job: int
    epoch: int
    slot: int
    final: bool
    result: FinetuneResult | None = None


@dataclass(frozen=True)
class GroupConfig:
    slots: int = 8              # runs training at once (their adapters live side by side on one base)
    max_tokens: int = 4096      # padded tokens in one step, all runs together: bounds activation memory
    evaluate_every: int = 8     # checkpoints collected before one evaluation pass over the base

    def __post_init__(self):
        require(self.slots >= 1, f"GroupConfig.slots must be >= 1, got {self.slots}")
        require(self.max_tokens >= 64, f"GroupConfig.max_tokens must be >= 64, got {self.max_tokens}")
        require(self.evaluate_every >= 1, f"GroupConfig.evaluate_every must be >= 1, got {self.evaluate_every}")


def batches(runs: list, family: Callable[[Any], str], cost: Callable[[Any], float], slots: int
            ) -> list[tuple[list, float]]:
    """A grid's runs in batches for the workers, each with its cost: one family's runs together (the rows
    of a step are padded to the longest, so QA rows should not wait on documents), costliest first, two
    groups' worth (``2 * slots``) a batch, so that a slot freed by a short run has a next run to take."""
    by_family: dict[str, list[tuple[Any, float]]] = {}
    for r in runs:
        by_family.setdefault(family(r), []).append((r, cost(r)))
    out = []
    for members in by_family.values():
        members.sort(key=lambda m: -m[1])
        for i in range(0, len(members), 2 * slots):
            chunk = members[i:i + 2 * slots]
            out.append(([r for r, _ in chunk], sum(w for _, w in chunk)))
    return out


def concurrent(method: str, cfg: GroupConfig) -> bool:
    """Whether a grid's runs of ``method`` train side by side: LoRA runs with more than one slot. Full
    finetunes (the tiny track) and ``slots=1`` train one run at a time through :func:`finetune.finetune`."""
    return method == "lora" and cfg.slots > 1


def shared_settings(cfg: FinetuneConfig) -> tuple:
    """What every run of a group must share: they live in one peft model over one base."""
    return (cfg.method, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets), cfg.precision)


def check_jobs(jobs: list[Job]) -> None:
    require(bool(jobs), "grouped.train() got no jobs")
    for j, job in enumerate(jobs):
        require(job.cfg.method == "lora", f"job {j}: grouped training is for LoRA runs (method='lora'), got "
                f"{job.cfg.method!r}; train full finetunes one at a time with finetune()")
        require(job.cfg.lora_dropout == 0, f"job {j}: grouped training needs lora_dropout=0 (rows of one batch must "
                "not share a dropout draw), got {job.cfg.lora_dropout}")
        require(bool(job.examples), f"job {j} has no examples")
        require(shared_settings(job.cfg) == shared_settings(jobs[0].cfg),
                f"job {j}'s LoRA settings {shared_settings(job.cfg)} differ from job 0's "
                f"{shared_settings(jobs[0].cfg)}: a group shares one adapter layout and precision")
        bad = [e for e in job.checkpoints if not 1 <= e <= math.ceil(job.cfg.epochs)]
        require(not bad, f"job {j}: checkpoints {bad} are not epochs of the run (1..{job.cfg.epochs})")


class _Run:
    """A job in its slot: its adapter's name and slot, progress, optimizer and next batch."""

    def __init__(self, index: int, job: Job, encoded, slot: int, params, name: str):
        self.index, self.job, self.encoded, self.slot, self.name = index, job, encoded, slot, name
        self.progress = RunProgress(job.cfg, encoded)
        self.opt, self.sched = optimizer(params, job.cfg, self.progress)
        self.events = self.progress.events()
        self.batch = None           # (epoch, indices) of the next step, None when finished
        self.shared_rows = 0        # sum over its steps of the runs in the step (the group_runs statistic)
        self.want = set(job.checkpoints or (self.progress.n_epochs,))
        self.last_step = -1         # the group step it last took part in (who has waited longest)

    @property
    def width(self) -> int:
        """Tokens in the longest row of its next batch."""
        return max(len(self.encoded[i][0]) for i in self.batch[1])


IDLE = "knowinject-idle"


def _lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")


def train(model, tokenizer, jobs: list[Job], evaluate: Callable[[object, list[Checkpoint]], None] | None = None,
          cfg: GroupConfig = GroupConfig(), progress: bool = False) -> list[FinetuneResult]:
    """Train every job, ``cfg.slots`` at a time, over one frozen base; returns their results in job order.

    ``model`` is the base as :func:`tracks.load_base` gives it (bf16 when the runs train in bf16); it is
    wrapped in peft here. ``evaluate(model, checkpoints)`` is called with the model in eval mode (KV
    cache on, no gradients, adapters routed by slot) for batches of checkpoints; a job's last
    checkpoint has ``final=True``.
    """
    with stages.stage("finetuning"):  # its checkpoints' evaluation is a stage of its own (flush)
        return _train(model, tokenizer, jobs, evaluate, cfg, progress)


def _train(model, tokenizer, jobs, evaluate, cfg, progress):
    from peft import get_peft_model
    from tqdm.auto import tqdm

    check_jobs(jobs)
    device = next(model.parameters()).device
    precision = resolve_precision(jobs[0].cfg.precision, device.type)
    if precision == "bf16":
        model = model.to(torch.bfloat16)  # the frozen base, as finetune.prepare stores it
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    queue = list(range(len(jobs)))
    active: list[_Run] = []
    done: dict[int, FinetuneResult] = {}
    pending: list[Checkpoint] = []
    peft_model, slots, parts = None, None, None
    bar = tqdm(total=len(jobs), desc=f"grouped LoRA ({cfg.slots} slots)", disable=not progress, mininterval=2.0)

    def join(index: int) -> None:
        nonlocal peft_model, slots, parts
        job = jobs[index]
        name = f"run{index}"
        if peft_model is None:
            # peft's own "active adapter" is a placeholder that never trains and is never routed to: the
            # runs' adapters come and go, and peft must always have an active adapter that still exists.
            peft_model = get_peft_model(model, _lora_config(job.cfg), adapter_name=IDLE)
            if hasattr(peft_model.config, "use_cache"):
                peft_model.config.use_cache = False
            slots, parts = kernels.Slots(peft_model), loss_module(peft_model)
        seed_everything(job.cfg.seed)  # the adapter's initial weights: as finetune() draws them for this seed
        peft_model.add_adapter(name, _lora_config(job.cfg))  # new entries in the same LoRA layers
        params = [p for n, p in peft_model.named_parameters() if f".{name}." in n]
        encoded = [encode(e, tokenizer, job.cfg.max_length) for e in job.examples]
        run = _Run(index, job, encoded, slots.add(name), params, name)
        active.append(run)
        trainable()
        advance(run)

    def trainable() -> None:
        # peft keeps only its "active" adapter trainable after adding or deleting one: every training run is.
        for run in active:
            for p in run.opt.param_groups[0]["params"]:
                p.requires_grad_(True)

    def drop(name: str) -> None:
        peft_model.delete_adapter(name)
        trainable()

    def advance(run: _Run) -> None:
        """Move ``run`` to its next batch, freezing checkpoints at the epoch ends it passes."""
        for kind, epoch, what in run.events:
            if kind == "batch":
                run.batch = (epoch, what)
                return
            if what and epoch in run.want and epoch < run.progress.n_epochs:
                pending.append(Checkpoint(run.index, epoch, slots.freeze(run.slot), final=False))
        run.batch = None
        last = run.progress.n_epochs
        done[run.index] = run.progress.result(precision, group_runs=run.shared_rows / max(run.progress.step, 1))
        # The finished adapter is evaluated when no checkpoints were asked for, or when the last epoch was
        # asked for and ran in full (as finetune's on_epoch_end would be called).
        if not run.job.checkpoints or (last in run.want and run.progress.step == last * run.progress.per_epoch):
            pending.append(Checkpoint(run.index, last, run.slot, final=True, result=done[run.index]))

    def flush() -> None:
        if not pending:
            return
        peft_model.eval()
        peft_model.config.use_cache = True
        try:
            with torch.no_grad(), slots.evaluation(), stages.stage("checkpoint evaluation"):
                if evaluate is not None:
                    evaluate(peft_model, list(pending))
        finally:
            peft_model.train()
            peft_model.config.use_cache = False
        for c in pending:
            slots.release(c.slot)
            if c.final:
                drop(f"run{c.job}")
        pending.clear()

    n_steps = 0
    while queue or active:
        while queue and len(active) < cfg.slots:
            join(queue.pop(0))
        step_runs = choose(active, cfg.max_tokens)
        n_steps += 1
        if step_runs:
            _step(parts, slots, step_runs, tokenizer.pad_token_id, autocast, device)
            for r in step_runs:
                r.last_step = n_steps
                advance(r)
        finished = [r for r in active if r.batch is None]
        for r in finished:
            active.remove(r)
            bar.update(1)
            if not any(c.job == r.index for c in pending):  # nothing to evaluate: drop its adapter now
                slots.release(r.slot)
                drop(r.name)
        if len(pending) >= cfg.evaluate_every or (not queue and not active):
            flush()
    bar.close()
    return [done[i] for i in range(len(jobs))]


# A step's rows are padded to its longest: a run joins a step only if its rows are at least this share of
# the step's width, or at most PAD_TOKENS shorter (short QA rows: a step saved costs more than the padding).
MIN_WIDTH_SHARE = 2 / 3
PAD_TOKENS = 16


def choose(active: list[_Run], max_tokens: int) -> list[_Run]:
    """The runs that take the next step together: the one that has waited longest (so every run moves
    on), and those of the others whose next batch is about as wide, as many as the token budget allows
    (a run that waits keeps its batch: its order of batches does not depend on who it shares steps with)."""
    ready = [r for r in active if r.batch is not None]
    if not ready:
        return []
    lead = min(ready, key=lambda r: (r.last_step, r.slot))
    chosen, widest, narrowest, rows = [lead], lead.width, lead.width, len(lead.batch[1])
    for r in sorted((r for r in ready if r is not lead), key=lambda r: (abs(r.width - lead.width), r.slot)):
        w, n = max(widest, r.width), min(narrowest, r.width)
        if (n < MIN_WIDTH_SHARE * w and w - n > PAD_TOKENS) or w * (rows + len(r.batch[1])) > max_tokens:
            continue
        chosen.append(r)
        widest, narrowest, rows = w, n, rows + len(r.batch[1])
    return sorted(chosen, key=lambda r: r.slot)  # slot order: each run's rows one contiguous block


def _step(parts, slots, runs: list[_Run], pad_id: int, autocast, device) -> None:
    """One optimizer step of every run in ``runs``: one forward and backward over their rows together,
    each run's loss its own mean over its answer tokens, each run's AdamW stepping its own adapter."""
    encoded, routes, n_rows = [], [], []
    for r in runs:
        _, idx = r.batch
        encoded += [r.encoded[i] for i in idx]
        routes += [r.slot] * len(idx)
        n_rows.append(len(idx))
    batch = collate(encoded, pad_id)
    n_loss = (batch["labels"][:, 1:] != -100).sum(1)
    row_bounds = torch.tensor([0] + n_rows).cumsum(0)
    per_run = [int(n_loss[lo:hi].sum()) for lo, hi in zip(row_bounds[:-1], row_bounds[1:])]
    batch = {k: batch[k].to(device) for k in STEP_KEYS}
    with slots.training(), kernels.routed(routes), autocast:
        logits, targets = parts.answer_logits(**batch)
        losses = [F.cross_entropy(lg.float(), tg) for lg, tg in zip(logits.split(per_run), targets.split(per_run))]
    torch.stack(losses).sum().backward()
    real = batch["attention_mask"].sum(1).cpu()
    for r, loss, n, lo, hi in zip(runs, losses, per_run, row_bounds[:-1], row_bounds[1:]):
        r.opt.step()
        r.sched.step()
        r.opt.zero_grad(set_to_none=True)
        epoch, _ = r.batch
        r.shared_rows += len(runs)
        r.progress.record(epoch, float(loss.detach()), n, int(real[lo:hi].sum()), int(hi - lo) * batch["input_ids"].shape[1],
                          r.sched.get_last_lr()[0])


def slot_routes(checkpoints: list[Checkpoint], counts: list[int]) -> list[int]:
    """Per-row slot ids for items laid out checkpoint after checkpoint (``counts[i]`` rows each)."""
    return [c.slot for c, n in zip(checkpoints, counts) for _ in range(n)]


def seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 2)
