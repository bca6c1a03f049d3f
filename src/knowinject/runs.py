"""Runs as pure functions of a config, cached on disk by a hash of it.

A run folder is ``<root>/<slug>-<hash>/``, holding ``config.json``, whatever the run writes and
``provenance.json``. It is built in a temporary sibling folder and renamed into place only when
complete, so an interrupted run leaves nothing half-written and the next call simply redoes it.

Usage: ``folder = cached_run(paths.RUNS, "ft-qa", cfg, lambda tmp: train(cfg, tmp))``.
"""

from __future__ import annotations

import os
import shutil
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
