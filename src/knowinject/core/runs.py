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

from knowinject.core import paths
from knowinject.core.config import canonical_json, config_hash, save_json
from knowinject.core.provenance import provenance

DONE = "provenance.json"  # written last: its presence means the run finished


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
        self._claims: list[claim] = []
        self._tmp: dict[int, Path] = {}
        self.todo: list[int] = []

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for i in sorted(range(len(self.specs)), key=lambda i: self.folders[i].name):
                if is_done(self.folders[i]):
                    continue
                c = claim(self.folders[i])
                c.__enter__()
                self._claims.append(c)
                if is_done(self.folders[i]):  # another worker finished it while this one waited for the claim
                    continue
                tmp = self.folders[i].with_name(self.folders[i].name + f".partial-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                (tmp / "config.json").write_text(canonical_json(self.specs[i].key) + "\n")
                self._tmp[i] = tmp
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.todo = sorted(self._tmp)
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
        return folder

    def __exit__(self, *exc):
        for tmp in self._tmp.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmp.clear()
        for c in self._claims:
            c.__exit__()
        self._claims.clear()
        return False


# --- claims: one worker per run ------------------------------------------------------------------------------
# Workers (Ray tasks, two notebooks, two machines on one shared disk) that reach the same uncomputed
# run take turns: the first creates ``<folder>.claim`` atomically (O_EXCL) and computes; the others
# wait for it and then find the finished folder. A claim whose owner died is taken over: on the same
# host when its process no longer exists, on another host when it is older than CLAIM_STALE_S.

CLAIM_STALE_S = 24 * 3600.0
CLAIM_POLL_S = 1.0


def _claim_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".claim")


def _owner_alive(text: str) -> bool:
    import json
    import socket
    try:
        owner = json.loads(text)
    except ValueError:
        return True  # being written right now
    if owner.get("host") != socket.gethostname():
        return time.time() - owner.get("time", 0) < CLAIM_STALE_S
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class claim:
    """Context manager: hold the claim on ``folder``'s run, waiting while a live worker holds it."""

    def __init__(self, folder: Path, poll_s: float | None = None):
        self.path = _claim_path(Path(folder))
        self.folder = Path(folder)
        self.poll_s = CLAIM_POLL_S if poll_s is None else poll_s

    def __enter__(self):
        import json
        import socket
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        waited = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    held_by = self.path.read_text()
                except FileNotFoundError:
                    continue  # released between the two calls: try again
                if not _owner_alive(held_by):
                    self.path.unlink(missing_ok=True)  # its owner died: take the run over
                    continue
                if not waited:
                    print(f"waiting: {paths.show(self.folder)} is being computed by {held_by}")
                    waited = True
                time.sleep(self.poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def write_jsonl(df: pd.DataFrame, path: Path) -> None:
    """The one table format of the compendium: JSON Lines, one record per row, UTF-8."""
    df.to_json(path, orient="records", lines=True, force_ascii=False)


def read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


def cached_table(root: Path, slug: str, cfg: Any, make: Callable[[], pd.DataFrame], filename: str, *,
                 seed: int | None = None, profile: str | None = None) -> pd.DataFrame:
    """A run whose product is one table: ``make()`` is called only if the run is not finished."""
    folder = cached_run(root, slug, cfg, lambda tmp: write_jsonl(make(), tmp / filename), seed=seed, profile=profile)
    return read_jsonl(folder / filename)
