"""Runs as pure functions of a config, cached on disk by a hash of it.

A run folder is ``<root>/<slug>-<hash>/``, holding ``config.json``, whatever the run writes and
``provenance.json``. It is built in a temporary sibling folder and renamed into place only when
complete, so an interrupted run leaves nothing half-written and the next call simply redoes it.

Usage: ``folder = cached_run(paths.RUNS, "ft-qa", cfg, lambda tmp: train(cfg, tmp))``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from knowinject.core import claims, paths
from knowinject.core.claims import claim
from knowinject.core.config import canonical_json, config_hash, save_json
from knowinject.core.provenance import provenance

DONE = "provenance.json"  # written last: its presence means the run finished
# One line per run finished, appended by whichever worker (process, Ray node, host) finished it: a
# record of who computed what, and how the cluster tests count that no run was computed twice.
LEDGER = "ledger.jsonl"


def run_id(slug: str, cfg: Any) -> str:
    return f"{slug}-{config_hash(cfg)}"


def is_done(folder: Path) -> bool:
    return (folder / DONE).exists()


def cached_run(root: Path, slug: str, cfg: Any, compute: Callable[[Path], Any], *, seed: int | None = None,
               profile: str | None = None, verbose: bool = True) -> Path:
    """Return the finished run folder for ``cfg``, computing it with ``compute(tmp_folder)`` only if needed."""
    spec = Spec(slug, cfg, seed)
    folder = spec.folder(root)
    if is_done(folder):
        if verbose:
            print(f"cached: {paths.show(folder)}")
        return folder
    with Batch(root, [spec], profile) as batch:
        if batch.todo:
            compute(batch.tmp(0))
            batch.finish(0)
    return folder


def _record(root: Path, run: str, held: claim | None) -> None:
    import json
    took = held is not None and held.took_over_from is not None
    line = json.dumps({"run": run, "host": claims.host(), "pid": os.getpid(), "time": time.time(),
                       "waited_s": round(held.waited_s, 3) if held else 0.0,
                       "claimed_at": held.claimed_at if held else None,
                       "took_over_from": held.took_over_from if took else None,
                       "stale_s": round(held.stale_s, 3) if took else None}) + "\n"
    # One write of one short line with O_APPEND: lines from several workers never interleave.
    fd = os.open(root / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def ledger(root: Path) -> pd.DataFrame:
    """Every run finished under ``root``, one row per completion: run, host, pid, time; how long its worker
    waited for another's claim on it (``waited_s``); when it acquired the claim (``claimed_at``); and, where
    it took the claim over from a lost holder, that holder's host (``took_over_from``, ``""`` for an
    unreadable claim) and how long the claim had gone without a heartbeat then (``stale_s``)."""
    import json
    path = Path(root) / LEDGER
    columns = ["run", "host", "pid", "time", "waited_s", "claimed_at", "took_over_from", "stale_s"]
    lines = path.read_text().splitlines() if path.exists() else []
    # Records, not pandas' JSON reader: it would read ``claimed_at`` (a name ending in _at) as a date. A
    # ledger written before the takeover columns gains them empty.
    return pd.DataFrame.from_records([json.loads(line) for line in lines if line.strip()], columns=columns)


@dataclass(frozen=True)
class Spec:
    """A run as a grid names it: a readable slug, the config its folder is hashed from, and its seed."""
    slug: str
    key: Any
    seed: int | None = None

    def folder(self, root: Path) -> Path:
        return Path(root) / run_id(self.slug, self.key)


class Batch:
    """Several runs computed together by one worker (:mod:`knowinject.train.grouped` trains them at once).

    On entry every run is claimed (in folder order, so two workers never wait on each other) and those
    already finished are left out (``todo``: the indices still to compute); each gets its own temporary
    folder holding its ``config.json``. :meth:`finish` renames one run into place the moment it is
    complete, so an interrupted batch keeps every run it finished; on exit the unfinished temporary
    folders are removed and the claims released.
    """

    def __init__(self, root: Path, specs: list[Spec], profile: str | None = None):
        self.root, self.specs, self.profile = Path(root), list(specs), profile
        self.folders = [s.folder(root) for s in self.specs]
        self._claims: dict[int, claim] = {}
        self._tmp: dict[int, Path] = {}
        self.todo: list[int] = []

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for i in sorted(range(len(self.specs)), key=lambda i: self.folders[i].name):
                if is_done(self.folders[i]):
                    continue
                c = claim(self.folders[i], show=paths.show)
                c.__enter__()
                self._claims[i] = c
                if is_done(self.folders[i]):  # another worker finished it while this one waited for the claim
                    continue
                # Holding the claim, any other partial copy of this run is a dead worker's (a lost node's):
                # no live worker writes into a run it does not hold.
                for stale in self.folders[i].parent.glob(self.folders[i].name + ".partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = self.folders[i].with_name(self.folders[i].name + f".partial-{os.getpid()}")
                tmp.mkdir()
                (tmp / "config.json").write_text(canonical_json(self.specs[i].key) + "\n")
                self._tmp[i] = tmp
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.todo = sorted(self._tmp)
        # Fault injection for the lost-node test (tests/test_cluster.py): a node started with this variable
        # holds its claimed runs that many seconds before computing them, so that it can be killed while it
        # holds them (a smoke run takes about a second: without the hold, the kill could land after it).
        hold = float(os.environ.get("KNOWINJECT_FAULT_HOLD_S") or 0)
        if hold > 0 and self.todo:
            time.sleep(hold)
        return self

    def tmp(self, i: int) -> Path:
        """Where run ``i`` writes its files until :meth:`finish`."""
        return self._tmp[i]

    def finish(self, i: int) -> Path:
        """Run ``i`` is complete: stamp its provenance and rename it into place."""
        tmp, folder = self._tmp.pop(i), self.folders[i]
        save_json(provenance(seed=self.specs[i].seed, profile=self.profile), tmp / DONE)
        if folder.exists():  # an older unfinished copy (no DONE): replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        _record(self.root, folder.name, self._claims.get(i))
        return folder

    def __exit__(self, *exc):
        for tmp in self._tmp.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmp.clear()
        for c in self._claims.values():
            c.__exit__()
        self._claims.clear()
        return False


def write_jsonl(df: pd.DataFrame, path: Path) -> None:
    """The one table format of the compendium: JSON Lines, one record per row, UTF-8."""
    df.to_json(path, orient="records", lines=True, force_ascii=False)


def read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


def cached_table(root: Path, slug: str, cfg: Any, make: Callable[[], pd.DataFrame], filename: str, *,
                 seed: int | None = None, profile: str | None = None, verbose: bool = True) -> pd.DataFrame:
    """A run whose product is one table: ``make()`` is called only if the run is not finished."""
    folder = cached_run(root, slug, cfg, lambda tmp: write_jsonl(make(), tmp / filename), seed=seed, profile=profile,
                        verbose=verbose)
    return read_jsonl(folder / filename)
