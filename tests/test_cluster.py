"""A real two-node Ray cluster on this machine, joined as the README documents: both address forms,
notebook 05's smoke grid on it, and a node lost mid-grid. The nodes are separate ``ray start``
processes (1 CPU each, their own ports and temp dir); the test stops exactly the processes it started.

The two nodes name themselves as two hosts (``KNOWINJECT_HOST``), so a claim of the lost node is
judged as one from another machine would be: by its lease, not by its process id."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from knowinject.core import claims, paths, runs

from .conftest import SLOW, assert_study_b_grid_matches, fresh_cache, is_grid_run

LEASE_S = 10.0  # the claims' lease in this cluster (the default, 120 s, would make the test slow)
# A cluster on localhost for the test: Ray's token authentication off on the nodes and the drivers alike
# (with it on, a driver needs the head's token; whether ray start turns it on depends on ~/.ray).
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``ray start --head`` and one ``ray start --address`` node, each in its own process group."""

    def __init__(self, tmp: Path):
        self.tmp = tmp / "ray"  # a short path: Ray's socket paths must fit in 107 bytes
        self.tmp.mkdir(parents=True)
        self.gcs, self.client = _free_port(), _free_port()
        base = random.Random(os.getpid()).randrange(20000, 29000, 200)  # below the ephemeral port range
        self.nodes: dict[str, subprocess.Popen] = {}
        common = {**os.environ, **NO_AUTH, "KNOWINJECT_CLAIM_LEASE_S": str(LEASE_S), "RAY_USAGE_STATS_ENABLED": "0"}
        common.pop("RAY_ADDRESS", None)
        try:
            self._start_nodes(common, base)
        except BaseException:
            self.stop()  # a cluster that failed to start leaves no process behind either
            raise

    def _start_nodes(self, common: dict, base: int) -> None:
        self._start("head", [RAY, "start", "--head", f"--port={self.gcs}", f"--ray-client-server-port={self.client}",
                             f"--temp-dir={self.tmp}", "--num-cpus=1", "--include-dashboard=false",
                             f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                             f"--metrics-export-port={_free_port()}", f"--min-worker-port={base}",
                             f"--max-worker-port={base + 99}", "--block"], {**common, "KNOWINJECT_HOST": "node-head"})
        self._wait_nodes(1)
        self._start("worker", [RAY, "start", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1",
                               f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                               f"--min-worker-port={base + 100}", f"--max-worker-port={base + 199}", "--block"],
                    # the worker holds each batch's claims a minute before computing: the lost-node test
                    # kills it while it holds them (otherwise a one-second smoke run can finish first)
                    {**common, "KNOWINJECT_HOST": "node-worker", "KNOWINJECT_FAULT_HOLD_S": "60"})
        self._wait_nodes(2)

    def _start(self, name, cmd, env):
        log = open(self.tmp.parent / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_nodes(self, n: int, timeout: float = 90.0) -> None:
        code = (f"import ray, json; ray.init(address='127.0.0.1:{self.gcs}', logging_level='ERROR'); "
                "print(json.dumps(sum(1 for x in ray.nodes() if x['Alive'])))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                               env={**os.environ, **NO_AUTH})
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the test cluster did not reach {n} nodes:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join((self.tmp.parent / f"{n}.log").read_text()[-2000:] for n in self.nodes)

    def client_server_logs(self) -> str:
        """The head's Ray Client server logs: why a ``ray://`` driver was refused is written there only."""
        files = sorted(self.tmp.glob("session_latest/logs/ray_client_server*.err"))
        return "\n".join(f"== {f.name}\n{f.read_text()[-1500:]}" for f in files)

    def tree(self, name: str) -> list[psutil.Process]:
        """The node's processes: its process group (``ray start --block`` and everything it started)."""
        pgid = self.nodes[name].pid
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == pgid:
                    out.append(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return out

    def kill(self, name: str, sig=signal.SIGKILL, grace_s: float = 10.0) -> None:
        procs = self.tree(name)
        try:
            os.killpg(self.nodes[name].pid, sig)
        except ProcessLookupError:
            pass
        _, left = psutil.wait_procs(procs, timeout=grace_s)
        if left:
            os.killpg(self.nodes[name].pid, signal.SIGKILL)
            psutil.wait_procs(left, timeout=5)
        self.nodes[name].wait(10)

    def stop(self) -> None:
        for name in [n for n in ("worker", "head") if n in self.nodes]:
            if self.nodes[name].poll() is None or self.tree(name):
                # A node's processes do not all exit on SIGTERM: after 3 s the rest are killed (10 s bought nothing)
                self.kill(name, signal.SIGTERM, grace_s=3.0)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(Path(tempfile_short()))
    try:
        yield c
    finally:
        trees = [p for n in c.nodes for p in c.tree(n)]
        c.stop()
        left = [p for p in trees if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(c.tmp.parent, ignore_errors=True)
        assert not left, f"Ray processes outlived the test cluster: {left}"


def tempfile_short() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="kc-", dir="/tmp")


# A driver that joins by RAY_ADDRESS and maps four tasks through the executor; each task says which
# host (node) ran it. Defined in the driver's __main__, so Ray ships the function by value.
DRIVER = """
import json, os, time
from knowinject.core import executor

def where(i):
    time.sleep(2)  # long enough that both nodes take tasks
    return os.environ.get("KNOWINJECT_HOST", "")

print(json.dumps(executor.map_tasks(where, range(4), progress=False)))
"""


def _map(address: str, cluster: Cluster) -> list:
    env = {**os.environ, **NO_AUTH, "RAY_ADDRESS": address, "KNOWINJECT_EXECUTOR": "ray"}
    r = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + "\n" + cluster.client_server_logs()
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_both_address_forms_join_the_cluster(cluster):
    for address in (f"ray://127.0.0.1:{cluster.client}", f"127.0.0.1:{cluster.gcs}"):
        where = _map(address, cluster)
        assert len(where) == 4 and set(where) == {"node-head", "node-worker"}, (address, where)


def _worker_claim(folder: Path) -> Path | None:
    for c in folder.glob("*.claim"):
        try:
            if json.loads(c.read_text()).get("host") == "node-worker":
                return c
        except (ValueError, FileNotFoundError):
            pass
    return None


def test_a_lost_node_costs_its_runs_and_one_lease_and_no_run_is_computed_twice(cluster, smoke_run, tmp_path):
    """Notebook 05's tiny grid on the cluster (Ray Client address); the worker node is killed while it
    holds a run. The grid finishes on the head: Ray retries the task, the head takes the dead node's claim
    over once its lease expires, every run is finished exactly once (the ledger), and the tables equal
    the in-process run's."""
    data = fresh_cache(smoke_run, tmp_path / "data", keep_runs=True)
    env = {**os.environ, **NO_AUTH, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp_path / "figures"),
           "KNOWINJECT_EXECUTOR": "ray", "RAY_ADDRESS": f"ray://127.0.0.1:{cluster.client}",
           "KNOWINJECT_CLAIM_LEASE_S": str(LEASE_S)}
    code = ("import papermill, sys; papermill.execute_notebook(sys.argv[1], sys.argv[2], parameters={'profile': "
            "'smoke', 'track_names': 'tiny', 'replicate': False}, kernel_name='python3', progress_bar=False, "
            "cwd=sys.argv[3])")
    with open(tmp_path / "05.log", "w") as log:
        nb = subprocess.Popen([sys.executable, "-c", code, str(paths.NOTEBOOKS / "05_study_b.ipynb"),
                               str(tmp_path / "05.ipynb"), str(paths.NOTEBOOKS)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        held, deadline = None, time.monotonic() + 600
        while held is None and nb.poll() is None and time.monotonic() < deadline:
            held = _worker_claim(data / "runs") if (data / "runs").exists() else None
            time.sleep(0.1)
        assert held is not None, "the worker node never held a run:\n" + (tmp_path / "05.log").read_text()[-3000:]
        killed_at = time.time()
        cluster.kill("worker")
        assert nb.wait(timeout=600 * SLOW) == 0, (tmp_path / "05.log").read_text()[-3000:] + cluster.client_server_logs()
    finally:
        if nb.poll() is None:
            nb.kill()
    assert "Ray tasks" in (tmp_path / "05.ipynb").read_text()
    ledger = runs.ledger(data / "runs")
    counts = ledger.run.value_counts()
    assert (counts == 1).all(), f"runs computed more than once: {counts[counts > 1].to_dict()}"
    grid = {f.name for f in (data / "runs").iterdir() if runs.is_done(f) and is_grid_run(f.name)}
    assert grid and grid <= set(ledger.run)  # every grid run finished is in the ledger, once
    # The dead node's run was taken over by the head, and only once the lease had run out: the ledger
    # records whose claim the head took, how long that claim had gone without a heartbeat then, and when
    # the head's own claim began. The node's last heartbeat came at most LEASE_S / 8 before the kill, so the
    # head's claim cannot begin sooner than a lease less that after it. (These are read off the takeover
    # itself; how long the head waited is not: on a slow machine it is still busy with its own runs when
    # the lease runs out, and then hardly waits, an AVX2-only CPU: 0-1 s.) No survivor waits longer than a
    # lease (plus poll and heartbeat slack).
    waited = ledger.waited_s.max()
    taken = ledger[ledger.run == held.name[:-len(".claim")]]
    assert len(taken) == 1, taken
    taken = taken.iloc[0]
    claimed_s = float(taken.claimed_at - killed_at)
    print(f"lost node: the head took the dead node's claim over {claimed_s:.1f} s after the kill, when it had gone "
          f"{taken.stale_s:.1f} s without a heartbeat; the survivor waited at most {waited:.1f} s for a claim; "
          f"the grid finished {ledger.time.max() - killed_at:.1f} s after the kill (lease {LEASE_S:.0f} s)")
    assert taken.host == "node-head" and taken.took_over_from == "node-worker"
    assert taken.stale_s >= LEASE_S
    assert claimed_s >= LEASE_S - LEASE_S / 8 - 0.5
    # only the dead node's claims were taken over (it may have held a batch of them): no live claim was lost
    assert set(ledger.took_over_from.dropna()) == {"node-worker"}
    assert waited <= LEASE_S + 2 * claims.POLL_S + 1
    assert set(ledger[ledger.waited_s > 0].host) == {"node-head"}
    assert not list((data / "runs").glob("*.claim")) and not list((data / "runs").glob("*.partial-*"))
    assert_study_b_grid_matches(data, smoke_run)
