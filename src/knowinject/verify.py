"""Check every cached run against the manifest it recorded when it finished (``make verify``).

A run's ``provenance.json`` lists the sha256, size and line count of each file it wrote
(:mod:`knowinject.core.runs`); every read of a cached run checks the files it reads. This command checks a
whole cache at once: worlds, pretrained models and runs under the data folder (``KNOWINJECT_DATA``). A
damaged run is named with the file that differs; ``--remove`` deletes damaged runs so that the next run
recomputes them. Runs from before manifests existed are listed as such: they are not read, and are
recomputed when next asked for.

Usage: ``python -m knowinject.verify [--remove]``; exit 1 when a damaged run is left.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from knowinject.core import paths, runs


def finished_runs(roots: list[Path]) -> list[Path]:
    """Every folder with a ``provenance.json`` directly under the roots (a run renamed into place)."""
    return sorted(p.parent for root in roots if root.is_dir() for p in root.glob(f"*/{runs.DONE}"))


def check(folders: list[Path]) -> dict[str, list]:
    out: dict[str, list] = {"ok": [], "damaged": [], "no_manifest": []}
    for folder in folders:
        if not runs.is_done(folder):
            out["no_manifest"].append(folder)
            continue
        try:
            runs.verify(folder)
            out["ok"].append(folder)
        except runs.DamagedRun as e:
            out["damaged"].append((folder, str(e)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--remove", action="store_true", help="delete damaged runs (the next run recomputes them)")
    args = ap.parse_args(argv)
    roots = [paths.WORLDS, paths.MODELS, paths.RUNS]
    start = time.time()
    found = check(finished_runs(roots))
    n = sum(len(v) for v in found.values())
    print(f"{n} cached runs under {', '.join(paths.show(r) for r in roots)}: {len(found['ok'])} verified, "
          f"{len(found['damaged'])} damaged, {len(found['no_manifest'])} without a manifest "
          f"(written by an older version: never read, recomputed when next asked for) ({time.time() - start:.1f} s)")
    for folder, message in found["damaged"]:
        print(message, file=sys.stderr)
        if args.remove:
            shutil.rmtree(folder)
            print(f"removed {paths.show(folder)}", file=sys.stderr)
    return 1 if found["damaged"] and not args.remove else 0


if __name__ == "__main__":
    sys.exit(main())
