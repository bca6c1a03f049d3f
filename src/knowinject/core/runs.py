"""Runs as pure functions of a config, cached on disk by a hash of it.

A run folder is ``<root>/<slug>-<hash>/``, holding ``config.json``, whatever the run writes and
``provenance.json``. It is built in a temporary sibling folder and renamed into place only when
complete, so an interrupted run leaves nothing half-written and the next call simply redoes it.

``provenance.json`` is also the run's manifest: the sha256, size and line count of every file the run
wrote. A run is finished only when it has one (runs written before manifests existed count as absent and
are recomputed), and every read of a cached run checks its files against it (:func:`verify`): a file cut
short, half-written or edited stops with :class:`DamagedRun`, naming the folder and the file, never a
result. ``python -m knowinject.verify`` (``make verify``) checks a whole cache.

Usage: ``folder = cached_run(paths.RUNS, "ft-qa", cfg, lambda tmp: train(cfg, tmp))``.
"""

from __future__ import annotations

import hashlib
import json
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


class DamagedRun(RuntimeError):
    """A cached run's files do not match the manifest written when it finished."""


# Text files get a line count in the manifest, so a damaged one is described by what was lost.
_TEXT = (".jsonl", ".json", ".csv", ".txt", ".md")


def _file_facts(path: Path) -> dict:
    h, size, lines = hashlib.sha256(), 0, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
            size += len(block)
            lines += block.count(b"\n")
    out = {"sha256": h.hexdigest(), "bytes": size}
    if path.suffix in _TEXT:
        out["lines"] = lines
    return out


def manifest(folder: Path) -> dict[str, dict]:
    """Every file below ``folder`` but the provenance itself: relative path -> sha256, bytes (and lines)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): _file_facts(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != DONE}


def _recorded(folder: Path) -> dict | None:
    """The manifest a finished run recorded, or None (no provenance, unreadable, or written before manifests)."""
    try:
        files = json.loads((Path(folder) / DONE).read_text()).get("files")
    except (OSError, ValueError):
        return None
    return files if isinstance(files, dict) else None


def is_done(folder: Path) -> bool:
    """A run finished with a manifest. One without (interrupted, or from before manifests) is absent."""
    return (folder / DONE).exists() and _recorded(folder) is not None


# Files already checked in this process, by (path, size, mtime): a notebook reads a run's tables several times.
_VERIFIED: set[tuple] = set()


def _damage(folder: Path, name: str, expected: dict) -> str | None:
    path = Path(folder) / name
    if not path.is_file():
        return "is missing"
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp in _VERIFIED:
        return None
    found = _file_facts(path)
    if found["sha256"] == expected["sha256"]:
        _VERIFIED.add(stamp)
        return None
    what = [f"{found['bytes']} bytes where the run wrote {expected['bytes']}"]
    if "lines" in expected:
        what.append(f"{found.get('lines')} lines where it wrote {expected['lines']}")
        text = path.read_bytes()
        if text and not text.endswith(b"\n"):
            what.append("its last line is cut off")
    return "does not match the run's manifest (" + "; ".join(what) + ")"


def damaged_message(folder: Path, name: str, why: str) -> str:
    return (f"cached run {paths.show(folder)} is damaged: its file {name} {why}. Nothing was read from it. "
            f"Remove the run's folder (rm -rf {paths.show(folder)}) and run again: the next run recomputes it. "
            "`make verify` checks every cached run.")


def verify(folder: Path, names: list[str] | None = None) -> None:
    """Check a finished run's files (or only ``names``) against its manifest; :class:`DamagedRun` if one differs."""
    folder = Path(folder)
    files = _recorded(folder)
    if files is None:
        raise DamagedRun(f"cached run {paths.show(folder)} has no manifest in its {DONE}: it is unfinished or was "
                         f"written by an older version. Remove it (rm -rf {paths.show(folder)}) and run again.")
    for name in (names if names is not None else files):
        if name not in files:
            continue
        why = _damage(folder, name, files[name])
        if why:
            raise DamagedRun(damaged_message(folder, name, why))


def run_folder(path: Path) -> Path | None:
    """The finished run a file belongs to (its folder, or a parent up to two levels up), or None."""
    path = Path(path)
    for folder in list(path.parents)[:3]:
        if (folder / DONE).exists():
            return folder
    return None


def cached_run(root: Path, slug: str, cfg: Any, compute: Callable[[Path], Any], *, seed: int | None = None,
               profile: str | None = None, verbose: bool = True) -> Path:
    """Return the finished run folder for ``cfg``, computing it with ``compute(tmp_folder)`` only if needed."""
    spec = Spec(slug, cfg, seed)
    folder = spec.folder(root)
    if is_done(folder):
        verify(folder)
        if verbose:
            print(f"cached: {paths.show(folder)}")
        return folder
    with Batch(root, [spec], profile) as batch:
        if batch.todo:
            compute(batch.tmp(0))
            batch.finish(0)
    return folder


def _record(root: Path, run: str, held: claim | None) -> None:
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
        """Run ``i`` is complete: stamp its provenance with the manifest of its files and rename it into place."""
        tmp, folder = self._tmp.pop(i), self.folders[i]
        save_json({**provenance(seed=self.specs[i].seed, profile=self.profile), "files": manifest(tmp)}, tmp / DONE)
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


def models_of(folders) -> list[str]:
    """The models (content keys, :func:`knowinject.train.models.content_key`) that the runs in ``folders`` (a
    list, or dicts and lists of them) were computed from, as their configs name them: what a results table's
    provenance records as ``run_models``, one list per track."""
    if isinstance(folders, dict):
        return sorted({k for v in folders.values() for k in models_of(v)})
    keys = set()
    for f in folders:
        if isinstance(f, (dict, list, tuple)):
            keys |= set(models_of(f))
            continue
        track = json.loads((Path(f) / "config.json").read_text()).get("track")
        if isinstance(track, dict) and track.get("model"):
            keys.add(track["model"])
    return sorted(keys)


class MixedModels(ValueError):
    """A results table whose runs came from more than one model for one track and base."""


def check_models(meta: dict, table: str) -> None:
    """Refuse a table (its provenance ``meta``) in which a track's runs name a model other than the one
    recorded for that track, one of its bases or its replication: the table would mix two models' results
    under one name."""
    recorded = meta.get("models") or {}
    for label, keys in (meta.get("run_models") or {}).items():
        # the track's own model, each of its pretrained bases ("tiny pretrain-seed 1") and its replication's
        # model where that is another ("tiny replication": a second world pretrains its own)
        mine = {ident.get("content_key"): name for name, ident in recorded.items()
                if isinstance(ident, dict) and (name == label or name.startswith(f"{label} "))}
        stray = [k for k in keys if k not in mine]
        if stray:
            own = ", ".join(f"{name} {k}" for k, name in mine.items()) or "none recorded"
            raise MixedModels(f"{table}: the runs of track {label!r} come from more than one model: {stray[0]} besides "
                              f"the table's own ({own}). Rerun the notebook that wrote it (its runs are keyed by the "
                              "model's weights, so a rerun reads only the model it names).")


def write_jsonl(df: pd.DataFrame, path: Path) -> None:
    """The one table format of the compendium: JSON Lines, one record per row, UTF-8."""
    df.to_json(path, orient="records", lines=True, force_ascii=False)


def read_jsonl(path: Path) -> pd.DataFrame:
    """A JSON Lines table; a file of a finished run is first checked against the run's manifest."""
    folder = run_folder(path)
    if folder is not None:
        verify(folder, [Path(path).relative_to(folder).as_posix()])
    return pd.read_json(path, lines=True, dtype=False)


def cached_table(root: Path, slug: str, cfg: Any, make: Callable[[], pd.DataFrame], filename: str, *,
                 seed: int | None = None, profile: str | None = None, verbose: bool = True) -> pd.DataFrame:
    """A run whose product is one table: ``make()`` is called only if the run is not finished."""
    folder = cached_run(root, slug, cfg, lambda tmp: write_jsonl(make(), tmp / filename), seed=seed, profile=profile,
                        verbose=verbose)
    return read_jsonl(folder / filename)
