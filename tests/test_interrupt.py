"""Ctrl-C mid-grid: the pipeline stops within a stated bound, leaves no process and no claim behind,
says what finished and what was dropped, and a rerun resumes to the uninterrupted tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from knowinject import pipeline

from .conftest import SLOW, assert_study_b_grid_matches, fresh_cache

BOUND_S = pipeline.STOP_S + 10  # the pipeline's own deadline for its kernel and workers, plus its exit


def _live(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_ctrl_c_mid_grid_stops_cleanly_and_a_rerun_resumes(smoke_run, tmp_path):
    data = fresh_cache(smoke_run, tmp_path / "data", keep_runs=True)
    env = {**os.environ, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp_path / "figures"),
           "KNOWINJECT_WORKERS": "2", "KNOWINJECT_EXECUTOR": "local"}
    # The two tracks it compares, without multiple choice and the one-layer model: the rerun computes no more
    # than the tables it checks.
    cmd = [sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke", "05", "-p", "track_names=tiny,smollm2",
           "-p", "mc_forms=''", "-p", "one_layer=False"]
    log = tmp_path / "pipeline.log"
    with open(log, "w") as out:
        # Its own process group, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600 * SLOW
        while time.monotonic() < deadline and proc.poll() is None:
            if "local worker processes" in log.read_text() and list((data / "runs").glob("*.claim")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the pipeline ended before its grid started:\n" + log.read_text()[-3000:]
        time.sleep(2)  # runs in flight on both workers
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 3, f"expected a kernel and two workers, found {tree}"
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=BOUND_S + 30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert took < BOUND_S, f"the pipeline took {took:.1f} s to stop (bound {BOUND_S:.0f} s)"
    print(f"Ctrl-C to exit: {took:.1f} s")
    time.sleep(0.5)
    assert not _live(tree), f"processes outlived the pipeline: {_live(tree)}"
    assert not list(data.rglob("*.claim")) and not list(data.rglob("*.partial-*")), "a claim or a partial run was left"
    assert "Finished: no notebook. Dropped: 05_study_b" in text and "again to resume" in text
    # the pipeline's message alone: no thread's or cell's traceback before it (InvalidStateError: CANCELLED was one)
    assert "Traceback" not in text and "InvalidStateError" not in text, text[-3000:]
    # The rerun resumes and gives the uninterrupted tables.
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800 * SLOW)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for track in ("tiny", "smollm2"):
        assert_study_b_grid_matches(data, smoke_run, track, one_design=False)
