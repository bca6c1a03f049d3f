"""Which executor computes a grid's runs, and the claim that keeps two workers from computing one run."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import pytest

from knowinject.core import executor, runs


def _slow_count(counter, tmp):
    with open(counter, "a") as f:
        f.write("x")
    time.sleep(1.5)
    (tmp / "out.txt").write_text("done")


def _worker(root, counter):
    runs.cached_run(root, "shared", {"a": 1}, lambda tmp: _slow_count(counter, tmp), verbose=False)


def test_two_processes_compute_a_run_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "computed"
    procs = [ctx.Process(target=_worker, args=(tmp_path / "runs", counter)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text() == "x", "the second worker recomputed a run the first had claimed"
    folder = tmp_path / "runs" / runs.run_id("shared", {"a": 1})
    assert (folder / "out.txt").read_text() == "done" and not list((tmp_path / "runs").glob("*.claim"))


def test_a_dead_workers_claim_is_taken_over(tmp_path):
    import json
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "runs"
    root.mkdir()
    folder = root / runs.run_id("r", {"b": 2})
    folder.with_name(folder.name + ".claim").write_text(
        json.dumps({"host": socket.gethostname(), "pid": dead.pid, "time": time.time()}))
    start = time.perf_counter()
    out = runs.cached_run(root, "r", {"b": 2}, lambda tmp: (tmp / "x").write_text("1"), verbose=False)
    assert (out / "x").exists() and time.perf_counter() - start < 10


def test_executor_is_chosen_by_environment(monkeypatch):
    monkeypatch.delenv("KNOWINJECT_EXECUTOR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert executor.name() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert executor.name() == "ray"
    monkeypatch.setenv("KNOWINJECT_EXECUTOR", "local")
    assert executor.name() == "local"
    monkeypatch.setenv("KNOWINJECT_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="EXECUTOR=ray"):
        executor.name()


def test_local_executor_keeps_order(monkeypatch):
    monkeypatch.setenv("KNOWINJECT_WORKERS", "1")  # in this process: a lambda needs no pickling
    assert executor.map_runs(lambda x: x * x, [3, 1, 2], progress=False) == [9, 1, 4]


def _square_and_threads(x):
    import os

    import torch
    return x * x, os.getpid(), torch.get_num_threads()


def test_local_workers_are_other_processes_and_share_the_cores(monkeypatch):
    import os

    monkeypatch.setenv("KNOWINJECT_WORKERS", "2")
    monkeypatch.delenv("KNOWINJECT_EXECUTOR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = executor.map_tasks(_square_and_threads, [3, 1, 2, 5], costs=[1, 9, 2, 4], progress=False)
    assert [o[0] for o in out] == [9, 1, 4, 25]  # in the order given, whatever order they ran in
    assert os.getpid() not in {o[1] for o in out}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {o[2] for o in out} == {max(1, cores // 2)}


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_workers_setting_says_what_to_give(monkeypatch, value):
    monkeypatch.setenv("KNOWINJECT_WORKERS", value)
    with pytest.raises(ValueError, match="whole number >= 1.*WORKERS=2"):
        executor.workers()


class _FlakyRay:
    """Stands in for the ray module: ``init`` fails as Ray Client does when the head cannot start its server."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, []

    def init(self, address=None, **kwargs):
        self.calls.append(address)
        if len(self.calls) <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client "
                                         "server failed. See ray_client_server_23000.err for detailed logs.")


def test_a_ray_client_connection_is_tried_again_when_the_heads_server_fails_to_start(monkeypatch, capsys):
    monkeypatch.setattr(executor.time, "sleep", lambda s: None)
    ray = _FlakyRay(failures=executor.CLIENT_TRIES - 1)
    executor._init(ray, "ray://head:10001", {})
    assert ray.calls == ["ray://head:10001"] * executor.CLIENT_TRIES
    assert "trying again" in capsys.readouterr().out


def test_a_cluster_that_never_starts_a_client_server_is_named_with_where_to_look(monkeypatch):
    monkeypatch.setattr(executor.time, "sleep", lambda s: None)
    ray = _FlakyRay(failures=executor.CLIENT_TRIES)
    with pytest.raises(RuntimeError, match=r"RAY_ADDRESS=ray://head:10001.*ray_client_server\*\.err") as e:
        executor._init(ray, "ray://head:10001", {})
    assert isinstance(e.value.__cause__, ConnectionAbortedError)
    assert len(ray.calls) == executor.CLIENT_TRIES
