"""Where a grid's runs are computed: in this process (the default), or as tasks on Ray.

``make reproduce EXECUTOR=ray`` (``KNOWINJECT_EXECUTOR=ray``) starts a local Ray instance and makes
every run of a grid a Ray task; with ``RAY_ADDRESS`` set, the tasks join that cluster instead. A
task asks for one CPU, or one GPU where the run trains on one. Tasks call the same cached-run code
as the in-process loop and write into the same cache (``KNOWINJECT_DATA`` travels with them), so a
later in-process rerun finds every result; :func:`runs.cached_run`'s claim file keeps two workers
from computing one run twice.

Usage: ``folders = executor.map_runs(functools.partial(run_cell, track, ...), cells, desc="study A")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

EXECUTORS = ("local", "ray")


def name() -> str:
    """The executor asked for: ``KNOWINJECT_EXECUTOR`` (local | ray); ``ray`` when ``RAY_ADDRESS`` is set."""
    chosen = os.environ.get("KNOWINJECT_EXECUTOR", "").strip().lower()
    if not chosen:
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"
    if chosen not in EXECUTORS:
        raise ValueError(f"KNOWINJECT_EXECUTOR={chosen!r} is not an executor; use one of {', '.join(EXECUTORS)} "
                         "(e.g. make reproduce EXECUTOR=ray)")
    return chosen


def needs_gpu(track) -> bool:
    """Whether a track's runs ask Ray for a GPU: the pretrained track, on a machine with CUDA."""
    import torch
    return torch.cuda.is_available() and track.name == "smollm2"


def _env_vars() -> dict[str, str]:
    # The tasks must read and write the same data folders and see the same offline settings.
    keep = ("KNOWINJECT_DATA", "KNOWINJECT_FIGURES", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("KNOWINJECT_EXECUTOR=ray needs the ray package: `make setup` installs the pinned "
                           "version (requirements.txt)") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, runtime_env={"env_vars": _env_vars()}, include_dashboard=False,
                 log_to_driver=False, **({} if address else {"num_cpus": int(os.environ.get("KNOWINJECT_RAY_CPUS",
                                                                                           os.cpu_count() or 1))}))
    return ray


def _task(fn: Callable[[Any], Any], job: Any, threads: int) -> Any:
    import torch
    torch.set_num_threads(threads)  # one task per CPU: tasks must not each take every core
    return fn(job)


def map_runs(fn: Callable[[Any], Any], jobs: Iterable[Any], desc: str = "runs", progress: bool = True,
             gpu: bool = False) -> list[Any]:
    """``[fn(job) for job in jobs]``, in order, computed by the executor :func:`name` chooses."""
    jobs = list(jobs)
    if name() == "local" or not jobs:
        from tqdm.auto import tqdm
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    ray = _ray()
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(_task)
    refs = [remote.remote(fn, j, 1) for j in jobs]
    if progress:
        print(f"{desc}: {len(jobs)} runs as Ray tasks ({ray.available_resources().get('CPU', 0):.0f} CPUs free)")
    return ray.get(refs)
