"""A reproduction report: this checkout's results beside the committed ones.

For every claim and track: whether the verdict is the same, and whether the new effect lies inside the
committed two-stage interval. For every result table: the largest deviation over the values both
runs have (timings left out: they measure the machine). For both runs: the CPU with its bf16 / AMX
features, the precision and the commit, and which machines computed this run's cached models and runs (more
than one kind means its results mix instruments). Exit status 1 when any verdict moved between reproduced and not
reproduced (either way), 0 otherwise; the report goes to stdout and to ``build/compare-<profile>.md``.

"Committed" is the version of each table at a git revision (``--ref``, default ``HEAD``); "this run" is
the file in the working tree (``data/results/``, or ``KNOWINJECT_DATA``), as ``make reproduce`` left it.

Usage: ``make compare`` or ``python -m knowinject.compare [--ref HEAD] [--profile default]``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from knowinject.core import paths
from knowinject.core.config import second_models

MACHINE_TABLES = ("stages.csv",)  # where a run's minutes went: it measures the machine, not a result
TIMING = ("seconds", "tokens_per_s", "train_seconds", "wall_s", "s_per_step", "runs_per_hour", "finished_utc")
# Whole-number columns that say which row it is (the checkpoint, the seed), not what it measured: where the text
# labels alone do not identify the rows, they join them, so that a track added to a table does not shift its rows.
INDEX_NUMBERS = ("epoch", "seed", "k_shot", "pretrain_seed")
OUTCOMES = ("verdict", "reason", "replication_verdict", "replication_reason", "prediction", "predicted", "response",
            "slick", "identified")
FLIPS = {("reproduced", "not reproduced"), ("not reproduced", "reproduced"), ("lifts", "lowers"), ("lowers", "lifts")}


def _md(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs tabulate, which is not pinned)."""
    if index:
        df = df.reset_index().rename(columns={"index": ""})

    def cell(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def committed(path: Path, ref: str) -> str | None:
    """The text of ``path`` at git revision ``ref``, or None where it was not committed there."""
    try:
        rel = path.resolve().relative_to(paths.ROOT)
    except ValueError:  # KNOWINJECT_DATA outside the repository: the same relative layout in the repo
        rel = Path("data") / path.resolve().relative_to(paths.DATA)
    try:
        r = subprocess.run(["git", "show", f"{ref}:{rel.as_posix()}"], cwd=paths.ROOT, capture_output=True, text=True)
    except OSError:  # no git (a Binder image without it): nothing committed to compare against
        return None
    return r.stdout if r.returncode == 0 else None


def _run_facts(prov: dict | None, pretrain: dict | None) -> dict:
    prov = prov or {}
    cpu = prov.get("cpu") or {}
    features = cpu.get("features")
    return {"commit": (prov.get("git_commit") or "unknown")[:10] + (" (dirty)" if prov.get("git_dirty") else ""),
            "cpu": cpu.get("model") or prov.get("device", "unknown"),
            "bf16 / AMX features": ", ".join(features) if features else ("none" if features == [] else "not recorded"),
            "precision": (pretrain or {}).get("precision", "not recorded"),
            "created": prov.get("created_utc", "unknown")}


def machines(profile: str) -> pd.DataFrame:
    """The machines that computed this checkout's cached pretrained models and runs of ``profile`` (each
    folder's ``provenance.json`` under ``data/models`` and ``data/runs``): CPU model, bf16 / AMX features and
    device, with how many folders each computed. Runs are keyed by their config, not by the machine, and
    bf16 arithmetic differs between these features, so more than one row means this run's results mix
    instruments: a cache copied from another machine, or a Ray cluster of unlike nodes."""
    rows = []
    for root in (paths.MODELS, paths.RUNS):
        for prov in sorted(Path(root).glob("*/provenance.json")):
            try:
                p = json.loads(prov.read_text())
            except (OSError, ValueError):
                continue
            if p.get("profile") != profile:
                continue
            facts = _run_facts(p, None)
            rows.append({"cpu": facts["cpu"], "bf16 / AMX features": facts["bf16 / AMX features"],
                         "device": p.get("device", "unknown")})
    columns = ["cpu", "bf16 / AMX features", "device", "runs"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).value_counts(sort=True).rename("runs").reset_index()[columns]


def identities(folder: Path, load) -> pd.DataFrame:
    """The models behind each side's result tables, from their provenance: per track (and tiny base), the
    content key (the weights' sha256, a hub id's commit) the tables record, committed and in this run, so a
    reader sees whether the two runs read the same models."""
    rows: dict[str, dict] = {}
    for path in sorted(folder.glob("*.provenance.json")):
        for side, text in zip(("committed", "this run"), load(path.name)):
            meta = json.loads(text) if isinstance(text, str) else {}
            for name, ident in (meta.get("models") or {}).items():
                if isinstance(ident, dict):
                    key = ident.get("content_key") or (
                        "sha256:" + next(iter(ident["weights_sha256"].values()))
                        if len(ident.get("weights_sha256") or {}) == 1 else None)
                    rows.setdefault(name, {"model": name})[side] = key or "-"
    return pd.DataFrame(list(rows.values()), columns=["model", "committed", "this run"]).fillna("-")


def _cell(r, pre: str, side: str, verdict, absent: str) -> str:
    """One run's effect, interval and verdict for a claim, or ``absent`` where that run has no such claim."""
    if not isinstance(verdict, str):
        return absent
    get = lambda col: getattr(r, f"{pre}{col}_{side}", np.nan)  # noqa: E731
    return f"{get('effect'):+.3f} [{get('ci_low'):+.3f}, {get('ci_high'):+.3f}] {verdict}"


def claims(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and track (main design, and the replication where both have one)."""
    rows = []
    merged = old.merge(new, on=["claim", "track"], how="outer", suffixes=("_old", "_new"))
    for r in merged.itertuples():
        for design, pre in (("main", ""), ("replication", "replication_")):
            v_old, v_new = getattr(r, f"{pre}verdict_old", None), getattr(r, f"{pre}verdict_new", None)
            if not isinstance(v_old, str) and not isinstance(v_new, str):
                continue
            e_new = getattr(r, f"{pre}effect_new", np.nan)
            lo, hi = getattr(r, f"{pre}ci_low_old", np.nan), getattr(r, f"{pre}ci_high_old", np.nan)
            inside = bool(lo <= e_new <= hi) if not np.isnan([e_new, lo, hi]).any() else None
            both = isinstance(v_old, str) and isinstance(v_new, str)  # else a claim one run adds or lacks
            rows.append({"claim": r.claim, "track": r.track, "design": design,
                         "committed": _cell(r, pre, "old", v_old, "new claim"),
                         "this run": _cell(r, pre, "new", v_new, "not in this run"),
                         "same verdict": v_old == v_new if both else None, "new effect in committed interval": inside,
                         "flipped": (v_old, v_new) in FLIPS})
    return pd.DataFrame(rows)


# How far a claim's effect may move from a reference run before the smoke test calls it drift: three
# times the reference's two-stage half-width. A run of the same design on another instrument draw differs
# from the reference by about sqrt(2) standard errors, and the half-width is about 2 of them (more with
# few seeds), so an honest redraw (seeds and items) exceeds this less than once in 10^4 rows (4.2 sd); a change of what the design
# computes, or an instrument far from the reference, does not stay inside it.
DRIFT_FACTOR = 3.0


def drift(reference: pd.DataFrame, new: pd.DataFrame, factor: float = DRIFT_FACTOR) -> list[str]:
    """What moved too far between two claims tables (findings.csv): rows missing on either side, verdicts
    that flipped between reproduced and not reproduced, effects further from the reference than
    ``factor`` times its two-stage half-width. Empty when the run agrees with the reference."""
    problems = []
    merged = reference.merge(new, on=["claim", "track"], how="outer", suffixes=("_ref", "_new"), indicator="side")
    for r in merged.itertuples():
        if r.side != "both":
            problems.append(f"{r.claim} {r.track}: only in the {'reference' if r.side == 'left_only' else 'new run'}")
            continue
        for design, pre in (("main", ""), ("replication", "replication_")):
            v_ref, v_new = getattr(r, f"{pre}verdict_ref"), getattr(r, f"{pre}verdict_new")
            if (v_ref, v_new) in FLIPS:
                problems.append(f"{r.claim} {r.track} {design}: verdict {v_ref} -> {v_new}")
            e_ref, e_new = getattr(r, f"{pre}effect_ref"), getattr(r, f"{pre}effect_new")
            half = (getattr(r, f"{pre}ci_high_ref") - getattr(r, f"{pre}ci_low_ref")) / 2
            if np.isnan(e_ref) != np.isnan(e_new):
                problems.append(f"{r.claim} {r.track} {design}: effect {e_ref:+.3f} -> {e_new:+.3f}")
            elif not np.isnan(e_ref) and abs(e_new - e_ref) > factor * half + 1e-9:
                problems.append(f"{r.claim} {r.track} {design}: effect {e_ref:+.3f} -> {e_new:+.3f}, moved "
                                f"{abs(e_new - e_ref):.3f} > {factor:g} x the reference half-width {half:.3f}")
    return problems


def deviation(old: pd.DataFrame, new: pd.DataFrame) -> dict:
    """The largest absolute difference over the numeric columns both tables have, rows aligned by their
    non-numeric columns where those identify them, or with their checkpoint and seed (:data:`INDEX_NUMBERS`),
    else by position."""
    num = [c for c in old.columns if c in new.columns and c not in TIMING and old[c].dtype.kind in "fiub"
           and new[c].dtype.kind in "fiub"]
    # Rows are identified by their labels, not by their outcomes (a verdict that changed is a row that
    # moved, not a new row), and a label column one run lacks (all empty there) identifies nothing.
    labels = [c for c in old.columns if c in new.columns and c not in num and c not in TIMING and c not in OUTCOMES
              and old[c].notna().any() and new[c].notna().any()]
    # The fewest leading labels that identify every row on both sides: a later label can carry a number
    # (findings' B3 metric quotes its generic-answer rate), and keying on it would drop the rows it moved in.
    keys = next((labels[:k] for k in range(1, len(labels) + 1)
                 if not old.duplicated(labels[:k]).any() and not new.duplicated(labels[:k]).any()), [])
    index = [c for c in INDEX_NUMBERS if c in num]
    if not keys and index and not old.duplicated(labels + index).any() and not new.duplicated(labels + index).any():
        keys, num = labels + index, [c for c in num if c not in index]
    if keys:
        label = {c: str for c in keys}  # one dtype on both sides (a CSV column reads as float where it is empty)
        both = old[keys + num].astype(label).merge(new[keys + num].astype(label), on=keys, how="inner",
                                                   suffixes=("_old", "_new"))
    else:
        n = min(len(old), len(new))
        both = pd.concat([old[num].iloc[:n].add_suffix("_old").reset_index(drop=True),
                          new[num].iloc[:n].add_suffix("_new").reset_index(drop=True)], axis=1)
    worst, where = 0.0, ""
    for c in num:
        d = (both[f"{c}_new"].astype(float) - both[f"{c}_old"].astype(float)).abs()
        if len(d) and d.max(skipna=True) > worst:
            worst, where = float(d.max(skipna=True)), c
    return {"rows committed": len(old), "rows this run": len(new), "rows compared": len(both),
            "largest deviation": worst, "in column": where or "-"}


def report(profile: str = "default", ref: str = "HEAD") -> tuple[str, bool]:
    """The report as Markdown, and whether a verdict flipped between reproduced and not reproduced."""
    folder = paths.results_dir(profile)
    out = [f"# Reproduction report: this run against `{ref}` (profile {profile})", ""]

    def load(name):
        path = folder / name
        text = committed(path, ref)
        old = pd.read_csv(io.StringIO(text)) if text is not None and name.endswith(".csv") else text
        new = (pd.read_csv(path) if name.endswith(".csv") else path.read_text()) if path.exists() else None
        return old, new

    prov_old, prov_new = (json.loads(t) if isinstance(t, str) else None for t in load("findings.provenance.json"))
    pre_old, pre_new = (json.loads(t) if isinstance(t, str) else None for t in load("tiny_pretrain.json"))
    facts = pd.DataFrame({"committed": _run_facts(prov_old, pre_old), "this run": _run_facts(prov_new, pre_new)})
    out += ["## The two runs", "", _md(facts, index=True), ""]
    kinds = machines(profile)
    out += ["## The machines behind this run's cached models and runs", ""]
    if kinds.empty:
        out += [f"No cached model or run of profile {profile} under `{paths.show(paths.DATA)}`: nothing to check.", ""]
    else:
        out += [_md(kinds), ""]
        if len(kinds) > 1:
            out += [f"**This run's results mix {len(kinds)} kinds of machine.** Runs are cached by their config, "
                    "not by the machine that computed them, and bf16 arithmetic differs between CPUs, so these "
                    "results combine instruments that would not agree run for run (a cache copied from another "
                    "machine, or a Ray cluster of unlike nodes). Compare within one kind: rerun in a fresh data "
                    "folder (`KNOWINJECT_DATA`) on one machine.", ""]
    models = identities(folder, load)
    if not models.empty:
        same = int((models["committed"] == models["this run"]).sum())
        out += ["## The models behind the result tables", "",
                f"Content keys (sha256 of the weights) the tables' provenance records: {same} of {len(models)} the "
                "same in both runs.", "", _md(models), ""]
    old, new = load("findings.csv")
    flipped = False
    if old is None or new is None:
        out += [f"No findings.csv {'committed at ' + ref if old is None else 'in this run'}: nothing to compare.", ""]
    else:
        table = claims(old, new)
        flipped = bool(table.flipped.any())
        same, inside = table["same verdict"], table["new effect in committed interval"]
        added = int(same.isna().sum())
        out += ["## Claims", "", f"{int((same == True).sum())} of {int(same.notna().sum())} verdicts the same"  # noqa: E712
                f"{f' ({added} claims in one run only)' if added else ''}; "
                f"{int((inside == True).sum())} of {int(inside.notna().sum())} new effects inside the committed "  # noqa: E712
                f"two-stage interval; {int(table.flipped.sum())} flipped between reproduced and not reproduced.", "",
                _md(table.drop(columns="flipped")), ""]
    rows = []
    # The profile's own tables, then each second real model's (a built-in model's name is its folder's).
    tables = sorted(folder.glob("*.csv")) + [p for m in second_models(profile)
                                             for p in sorted(paths.results_dir(profile, m).glob("*.csv"))]
    for path in tables:
        name = str(path.relative_to(folder))
        if path.name in MACHINE_TABLES:
            continue
        o, n = load(name)
        if o is None or n is None:
            rows.append({"table": name, "note": "not committed" if o is None else "missing in this run"})
            continue
        rows.append({"table": name, **deviation(o, n)})
    out += ["## Result tables", ""]
    out += (["Largest absolute deviation over the values both runs have (timings left out).", "",
             _md(pd.DataFrame(rows)), ""] if rows else [f"No result tables under `{paths.show(folder)}`.", ""])
    if flipped:
        out += ["**A verdict moved between reproduced and not reproduced** (exit status 1).", ""]
    return "\n".join(out), flipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--ref", default="HEAD", help="the git revision of the committed results (default HEAD)")
    args = ap.parse_args(argv)
    text, flipped = report(args.profile, args.ref)
    print(text)
    out = paths.ensure(paths.ROOT / "build") / f"compare-{args.profile}.md"
    out.write_text(text)
    print(f"(written to {paths.show(out)})", file=sys.stderr)
    return 1 if flipped else 0


if __name__ == "__main__":
    sys.exit(main())
