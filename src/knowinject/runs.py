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
from pathlib import Path
from typing import Any

import pandas as pd

from . import paths
from .config import canonical_json, config_hash, save_json
from .provenance import provenance

DONE = "provenance.json"  # written last: its presence means the run finished


def run_id(slug: str, cfg: Any) -> str:
    return f"{slug}-{config_hash(cfg)}"


def is_done(folder: Path) -> bool:
    return (folder / DONE).exists()


def cached_run(root: Path, slug: str, cfg: Any, compute: Callable[[Path], Any], *, seed: int | None = None,
               profile: str | None = None, verbose: bool = True) -> Path:
    """Return the finished run folder for ``cfg``, computing it with ``compute(tmp_folder)`` only if needed."""
    folder = Path(root) / run_id(slug, cfg)
    if is_done(folder):
        if verbose:
            print(f"cached: {paths.show(folder)}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with claim(folder):
        if is_done(folder):  # another worker finished it while this one waited for the claim
            return folder
        tmp = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            (tmp / "config.json").write_text(canonical_json(cfg) + "\n")
            compute(tmp)
            save_json(provenance(seed=seed, profile=profile), tmp / DONE)
            if folder.exists():  # an older unfinished copy (no DONE): replace it
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


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
