"""Claims as leases (:mod:`knowinject.core.claims`): a holder's heartbeat keeps its claim, a claim that
is not refreshed (dead host, empty or corrupt file) is taken over within one lease, and exactly one
worker wins a takeover. Each test has a mutation check: the same test with the mechanism removed fails."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pandas as pd
import pytest

from knowinject.core import claims, runs

LEASE = 0.8  # seconds: short, so that each case runs in a few leases


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setattr(claims, "LEASE_S", LEASE)
    monkeypatch.setattr(claims, "POLL_S", 0.05)


def _acquire_within(folder, seconds: float) -> float | None:
    """Seconds until a new worker (a thread of this process) holds ``folder``'s claim, or None if it
    does not within ``seconds``; it releases the claim at once."""
    got = {}

    def worker():
        start = time.monotonic()
        with claims.claim(folder):
            got["s"] = time.monotonic() - start

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(seconds)
    return got.get("s")


def _write_claim(folder, text: str, age: float = 0.0):
    path = claims.claim_path(folder)
    path.write_text(text)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _elsewhere(pid=1):
    return json.dumps({"host": "node-that-died", "pid": pid, "time": time.time(), "token": "t"})


def test_a_live_holder_keeps_its_claim_past_the_lease(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with claims.claim(folder):
        assert _acquire_within(folder, 3 * LEASE) is None  # held for three leases: nobody took it
    assert _acquire_within(folder, LEASE) is not None
    # Mutation: without the heartbeat the same holder loses its claim after one lease.
    monkeypatch.setattr(claims._Heartbeat, "add", lambda self, path, token: None)
    with claims.claim(folder):
        assert _acquire_within(folder, 3 * LEASE) is not None


def test_a_claim_of_a_dead_host_is_taken_over_within_one_lease(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _write_claim(folder, _elsewhere(), age=LEASE / 2)  # refreshed half a lease ago, then its node died
    waited = _acquire_within(folder, 3 * LEASE)
    assert waited is not None and LEASE / 4 < waited < LEASE + 0.5
    # Mutation: the 24-hour rule this replaced (a claim from another host counts as alive for a day).
    monkeypatch.setattr(claims, "LEASE_S", 24 * 3600.0)
    _write_claim(folder, _elsewhere(), age=LEASE / 2)
    assert _acquire_within(folder, 3 * LEASE) is None


@pytest.mark.parametrize("text", ["", "{\"host\": \"node-1\", \"pi", "\x00\x01 not json"])
def test_an_empty_or_corrupt_claim_is_judged_by_its_age(tmp_path, monkeypatch, text):
    folder = tmp_path / "run"
    _write_claim(folder, text, age=0.0)  # being written right now: wait for it
    waited = _acquire_within(folder, 3 * LEASE)
    assert waited is not None and waited > LEASE * 0.9  # not taken at once, taken within about one lease
    # Mutation: "unreadable means being written right now", with no time limit, blocks forever.
    monkeypatch.setattr(claims, "is_stale", lambda text, st, now=None: False)
    _write_claim(folder, text, age=10 * LEASE)
    assert _acquire_within(folder, 3 * LEASE) is None


def _naive_take_over(path, seen):
    """What this replaced: unlink whatever claim is there now and retry."""
    path.unlink(missing_ok=True)
    return True


@pytest.mark.parametrize("mutant", [False, True])
def test_exactly_one_worker_wins_a_takeover(tmp_path, mutant):
    folder = tmp_path / "run"
    path = _write_claim(folder, _elsewhere(), age=2 * LEASE)
    held = path.read_text(), path.stat().st_ino
    take_over = _naive_take_over if mutant else claims.take_over
    # Two workers both saw the same stale claim. The first takes it over and claims the run...
    assert take_over(path, held)
    first = claims.claim(folder).__enter__()
    fresh = path.read_text()
    # ...then the second acts on what it saw: it must not remove the first one's fresh claim.
    second_won = take_over(path, held)
    if mutant:  # the mutation check: the naive takeover lets both compute
        assert second_won and not path.exists()
        return
    assert not second_won and path.read_text() == fresh
    # While a takeover is under way (its file is fresh) nobody else takes over; a stale one is cleared.
    first.__exit__(None, None, None)
    path = _write_claim(folder, _elsewhere(), age=2 * LEASE)
    lock = path.with_name(path.name + ".takeover")
    lock.write_text("")
    assert not claims.take_over(path, (path.read_text(), path.stat().st_ino)) and path.exists()
    os.utime(lock, (time.time() - 2 * LEASE, time.time() - 2 * LEASE))
    assert not claims.take_over(path, (path.read_text(), path.stat().st_ino)) and not lock.exists()
    assert claims.take_over(path, (path.read_text(), path.stat().st_ino)) and not path.exists()


def _race(root, counter, lease):
    claims.LEASE_S, claims.POLL_S = lease, 0.02

    def compute(tmp):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (tmp / "out").write_text("done")

    runs.cached_run(root, "race", {"k": 1}, compute, verbose=False)


def test_six_workers_racing_for_a_stale_claim_compute_the_run_once(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    folder = root / runs.run_id("race", {"k": 1})
    _write_claim(folder, _elsewhere(), age=2 * LEASE)
    (root / (folder.name + ".partial-99999")).mkdir()  # what the dead holder had written: removed on takeover
    counter = tmp_path / "computed"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_race, args=(root, counter, LEASE)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    assert len(counter.read_text().split()) == 1, "a stale claim was taken over twice"
    assert len(runs.ledger(root)) == 1 and runs.ledger(root).run.iloc[0] == folder.name
    assert not list(root.glob("*.claim*")) and not list(root.glob("*.partial-*"))
    assert (folder / "out").read_text() == "done"


def test_the_ledger_records_a_takeover_and_how_stale_the_claim_was(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    folder = root / runs.run_id("lost", {"k": 2})
    _write_claim(folder, _elsewhere(), age=LEASE / 2)  # its node's last heartbeat, half a lease ago
    before = time.time()
    runs.cached_run(root, "lost", {"k": 2}, lambda tmp: (tmp / "out").write_text("done"), verbose=False)
    runs.cached_run(root, "fresh", {"k": 3}, lambda tmp: (tmp / "out").write_text("done"), verbose=False)
    rows = runs.ledger(root).set_index("run")
    lost, fresh = rows.loc[folder.name], rows.loc[runs.run_id("fresh", {"k": 3})]
    # taken over once the lease ran out, not before, and at most a poll after it did
    assert lost.took_over_from == "node-that-died"
    assert LEASE <= lost.stale_s < LEASE + 0.5
    assert before + LEASE / 2 - 0.1 <= lost.claimed_at <= lost.time
    assert pd.isna(fresh.took_over_from) and pd.isna(fresh.stale_s) and fresh.claimed_at <= fresh.time
    # An empty claim is taken over by its age as well, and its holder is recorded as unknown ("").
    folder = root / runs.run_id("empty", {"k": 4})
    _write_claim(folder, "", age=2 * LEASE)
    runs.cached_run(root, "empty", {"k": 4}, lambda tmp: (tmp / "out").write_text("done"), verbose=False)
    row = runs.ledger(root).set_index("run").loc[folder.name]
    assert row.took_over_from == "" and row.stale_s >= 2 * LEASE


def test_a_ledger_from_before_the_takeover_columns_still_reads(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / runs.LEDGER).write_text(json.dumps({"run": "r-1", "host": "h", "pid": 1, "time": 1.0, "waited_s": 0.0}) + "\n")
    table = runs.ledger(root)
    assert list(table.columns) == ["run", "host", "pid", "time", "waited_s", "claimed_at", "took_over_from", "stale_s"]
    assert table.run.tolist() == ["r-1"] and table.took_over_from.isna().all()
