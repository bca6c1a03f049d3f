"""Where a grid's runs are computed: in local worker processes (the default), or as tasks on Ray.

A grid hands over *tasks*, each a batch of runs that one worker computes together (LoRA runs of a
batch train concurrently over one base, :mod:`knowinject.train.grouped`). Locally, ``KNOWINJECT_WORKERS``
processes (``make reproduce WORKERS=n``; default: one per CPU core on a CPU, one on a GPU) take the
tasks, largest first, each worker with an equal share of the cores as torch threads; with one worker
the tasks run in this process. Why several single-threaded workers on a CPU: a small model's step does
not keep two cores busy (8 concurrent SmolLM2 Study A runs: 815 tokens/s in one 2-thread process, 1,014 on
two 1-thread workers; ``bench_grouped.csv`` of ``make bench``).

``make reproduce EXECUTOR=ray`` (``KNOWINJECT_EXECUTOR=ray``) starts a local Ray instance and makes
every task a Ray task; with ``RAY_ADDRESS`` set, the tasks join that cluster instead. A task asks for
one CPU, or one GPU where its runs train on one. Tasks call the same cached-run code as the local
workers and write into the same cache (``KNOWINJECT_DATA`` travels with them), so a later rerun
finds every result; the claim files of :class:`runs.Batch` keep two workers from computing one run twice.

Usage: ``folders = executor.map_tasks(functools.partial(compute, track, ...), batches, costs, desc="study A")``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from knowinject.core import stages

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


def workers() -> int:
    """Local worker processes: ``KNOWINJECT_WORKERS``, or one per CPU core without a GPU and one with one."""
    raw = os.environ.get("KNOWINJECT_WORKERS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"KNOWINJECT_WORKERS={raw!r} must be a whole number >= 1 (e.g. make reproduce WORKERS=2)")
        return n
    import torch
    return 1 if torch.cuda.is_available() else _cores()


def needs_gpu(track) -> bool:
    """Whether a track's runs ask Ray for a GPU: the pretrained track, on a machine with CUDA."""
    import torch
    return torch.cuda.is_available() and track.name == "smollm2"


def _env_vars() -> dict[str, str]:
    # The tasks must read and write the same data folders and see the same offline settings.
    # The claims' lease is the cluster's: every worker must judge a claim by the driver's. (KNOWINJECT_HOST
    # is a node's own name and stays with the node.)
    keep = ("KNOWINJECT_DATA", "KNOWINJECT_FIGURES", "KNOWINJECT_CLAIM_LEASE_S", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", stages.ENV)
    return {k: os.environ[k] for k in keep if k in os.environ}


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("KNOWINJECT_EXECUTOR=ray needs the ray package: `make setup` installs the pinned "
                           "version (requirements.txt)") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        _init(ray, address, dict(runtime_env={"env_vars": _env_vars()}, include_dashboard=False, log_to_driver=False,
                                 **({} if address else {"num_cpus": int(os.environ.get("KNOWINJECT_RAY_CPUS",
                                                                                      os.cpu_count() or 1))})))
    return ray


CLIENT_TRIES = 3  # Ray Client connections tried before a grid gives up on the cluster


def _init(ray, address: str | None, kwargs: dict) -> None:
    """``ray.init``, trying a Ray Client (``ray://``) connection again when the head fails to start its server.

    Why: for each driver that joins by ``ray://`` the head starts a server process; that start failed once
    in CI ("Starting Ray client server failed", the cluster healthy, the next connection fine), and a grid
    should not be lost to it. A failed try leaves nothing behind (Ray's client disconnects), so trying
    again is safe. Any other error, and the last try's, is the user's to see."""
    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionAbortedError as e:  # what Ray Client raises when the head's server start fails
            if attempt == CLIENT_TRIES:
                raise RuntimeError(
                    f"could not join the Ray cluster at RAY_ADDRESS={address}: the head node failed {CLIENT_TRIES} "
                    "times to start a Ray Client server for this driver. Its reason is in the head's logs, "
                    "ray_client_server*.err under <temp dir>/session_latest/logs (/tmp/ray by default); or "
                    "join from a cluster node by the GCS address (RAY_ADDRESS=<head ip>:6379)") from e
            print(f"Ray Client: the head failed to start a server for this driver (try {attempt} of {CLIENT_TRIES}; "
                  f"{str(e).strip().splitlines()[-1][:200]}); trying again", flush=True)
            time.sleep(2.0 * attempt)


_BUSY = False  # in a worker: whether it is running a task (a SIGTERM then has runs to unwind)


def _run_busy(fn: Callable[[Any], Any], task: Any) -> Any:
    """``fn(task)`` with the worker marked busy, so that a SIGTERM meanwhile unwinds the task's runs."""
    global _BUSY
    _BUSY = True
    try:
        with stages.stage(TASK):  # what a task's named stages leave: loading its base, its data, writing its runs
            return fn(task)
    finally:
        _BUSY = False


def _task(fn: Callable[[Any], Any], job: Any, threads: int) -> Any:
    import torch
    stages.mark_worker()
    torch.set_num_threads(threads)  # one task per CPU: tasks must not each take every core
    return _run_busy(fn, job)


TASK = "worker tasks: loading models and data, writing runs"

_POOL = None  # (workers, threads, ProcessPoolExecutor): kept for the life of the process (a notebook's kernel)


def _threads(n_workers: int) -> int:
    return max(1, _cores() // n_workers)


def _exit_on_sigterm(signum, frame):
    if not _BUSY:  # idle, or already exiting (the pool's shutdown): nothing to unwind, and no traceback to print
        os._exit(128 + signum)
    raise SystemExit(128 + signum)  # unwinds the worker's runs: temporary folders removed, claims released


def _start_worker(threads: int) -> None:
    import signal

    import torch
    stages.mark_worker()
    torch.set_num_threads(threads)
    # Ctrl-C is the parent's to handle (it reaches the whole process group): the parent stops handing out
    # tasks and then stops its workers with SIGTERM, which unwinds the runs they hold (a run is renamed
    # into place whole or not at all, and its claim is released), so a rerun resumes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _in_worker(fn: Callable[[Any], Any], task: Any) -> Any:
    try:
        return _run_busy(fn, task)
    except SystemExit:  # SIGTERM from stop_workers, after the task's runs unwound: leave, take nothing more
        os._exit(143)


def stop_workers(grace_s: float = 10.0) -> None:
    """Stop the local worker processes now (Ctrl-C): SIGTERM, then SIGKILL after ``grace_s``."""
    global _POOL
    if _POOL is None:
        return
    _quiet_broken_pool()
    pool, _POOL = _POOL[2], None
    procs = list(getattr(pool, "_processes", {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _quiet_broken_pool() -> None:
    """Python 3.11's pool manager thread, finding its workers stopped, sets an exception on every pending
    future, and a future this module has just cancelled answers with ``InvalidStateError: CANCELLED`` (a
    traceback printed by the thread before the pipeline's own message; Python 3.12 guards the call). The
    cancelled future's task never ran, so that exception says nothing: it alone is kept off the screen."""
    from concurrent.futures import InvalidStateError

    previous = threading.excepthook
    if getattr(previous, "_knowinject_quiet", False):
        return

    def hook(args):
        if isinstance(args.exc_value, InvalidStateError) and "CANCELLED" in str(args.exc_value):
            return
        previous(args)

    hook._knowinject_quiet = True
    threading.excepthook = hook


def _pool(n: int):
    global _POOL
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if _POOL is None or _POOL[0] != n or getattr(_POOL[2], "_broken", False):
        if _POOL is not None:
            _POOL[2].shutdown(cancel_futures=True)
        # spawn, not fork: a forked copy of a process that already ran torch threads can deadlock.
        threads = _threads(n)
        _POOL = (n, threads, ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(threads,)))
    return _POOL[2]


def map_tasks(fn: Callable[[Any], Any], tasks: Iterable[Any], costs: Iterable[float] | None = None, desc: str = "tasks",
              progress: bool = True, gpu: bool = False) -> list[Any]:
    """``[fn(task) for task in tasks]``, in order, computed by the executor :func:`name` chooses; ``costs``
    (relative work per task) lets the local workers start the largest tasks first."""
    tasks = list(tasks)
    costs = [1.0] * len(tasks) if costs is None else list(costs)
    if not tasks:
        return []
    from tqdm.auto import tqdm
    if name() == "ray":
        with stages.stage(stages.WORKERS, workers=_cores()):  # a cluster's other nodes record no stages here
            return _map_ray(fn, tasks, desc, progress, gpu)
    n = min(workers(), len(tasks))
    if n == 1:
        return [_run_busy(fn, t) for t in tqdm(tasks, desc=desc, disable=not progress)]
    with stages.stage(stages.WORKERS, workers=workers()):
        return _map_pool(fn, tasks, costs, desc, progress)


def _cores() -> int:
    """The CPU cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _map_pool(fn: Callable[[Any], Any], tasks: list, costs: list[float], desc: str, progress: bool) -> list[Any]:
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm
    pool = _pool(workers())
    if progress:
        print(f"{desc}: {len(tasks)} batches of runs on {workers()} local worker processes "
              f"({_POOL[1]} thread{'s' if _POOL[1] > 1 else ''} each)")
    order = sorted(range(len(tasks)), key=lambda i: -costs[i])  # longest first: the workers finish together
    futures = {pool.submit(_in_worker, fn, tasks[i]): i for i in order}
    out: list[Any] = [None] * len(tasks)
    try:
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            out[futures[f]] = f.result()
    except BaseException as e:  # a failed task or Ctrl-C: start nothing more (the runs already finished are kept)
        for f in futures:
            f.cancel()
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            stop_workers()  # and stop the runs in flight, so nothing outlives the interrupted cell
        raise
    return out


def _map_ray(fn, tasks: list, desc: str, progress: bool, gpu: bool) -> list:
    """The tasks as Ray tasks; a progress bar over finished tasks, whichever node finishes them. A task
    whose node is lost is retried on another (Ray's default for tasks); its runs' claims are taken over
    there once their lease expires (:mod:`knowinject.core.claims`)."""
    from tqdm.auto import tqdm

    ray = _ray()
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=3)(_task)
    refs = [remote.remote(fn, t, 1) for t in tasks]
    if progress:
        print(f"{desc}: {len(tasks)} batches of runs as Ray tasks ({ray.cluster_resources().get('CPU', 0):.0f} "
              "CPUs in the cluster)", flush=True)
    pending = list(refs)
    try:
        with tqdm(total=len(refs), desc=desc, disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=5.0)
                bar.update(len(done))
        return ray.get(refs)
    except BaseException:  # Ctrl-C (or a failed task): cancel the rest; a cancelled task unwinds its runs
        for r in pending:
            ray.cancel(r)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=10.0)
        for r in pending:
            ray.cancel(r, force=True)
        raise


def map_runs(fn: Callable[[Any], Any], jobs: Iterable[Any], desc: str = "runs", progress: bool = True,
             gpu: bool = False) -> list[Any]:
    """``[fn(job) for job in jobs]``, one task per job (see :func:`map_tasks`)."""
    return map_tasks(fn, jobs, desc=desc, progress=progress, gpu=gpu)


def _call(task: Callable[[], Any]) -> Any:
    return task()


def run_tasks(tasks: list[tuple[Callable[[], Any], float]], desc: str = "tasks", progress: bool = True,
              gpu: bool = False) -> list[Any]:
    """Run ``(callable, cost)`` tasks (each a picklable callable of no arguments, such as a
    ``functools.partial`` of a module-level function): tasks of several grids can share one pool."""
    return map_tasks(_call, [t for t, _ in tasks], [c for _, c in tasks], desc=desc, progress=progress, gpu=gpu)
