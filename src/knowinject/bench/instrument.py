"""How much the controlled instrument moves with its pretraining draw: the default recipe pretrained from
several seeds, and one seed in fp32 against bf16 (``make instrument``; not part of ``make reproduce``).

The tiny track's claims are about a model pretrained with this recipe, not about one model, so a recipe
whose storage curve moves a lot between seeds (or between bf16 arithmetics: AMX and AVX-512 CPUs round
differently, and fp32 against bf16 stands in for that inside one machine) makes every tiny verdict a
property of the draw. Each model is notebook 02's cached pretraining with one setting changed, so
seed 0 in bf16 is notebook 02's own model, and the other seeds are the bases a K-base design reuses.

For each model: held-out-template accuracy (the measure on which two CPUs differed most) and
training-template knownness by exposure bucket, people whose QA was never in pretraining, with notebook
02's checks. Writes ``data/results/tiny_instrument.csv`` and prints the spread at 31-100 mentions
against the +/-5 point tolerance the instrument is held to.

Usage: ``python -m knowinject.bench.instrument [--seeds 0 1 2] [--no-fp32] [--profile default] [--out NAME]``
(``--out`` keeps another machine's measurement beside this one's, e.g. ``tiny_instrument_amx.csv``;
``--set epochs=3`` measures a candidate recipe, one pretrain-stage setting changed, over the same seeds).
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from knowinject.core import paths
from knowinject.core.config import ConfigError, build, stage_params
from knowinject.core.provenance import save_table

from knowinject.data import geo, world, worldfiles

from knowinject.train import pretrain

from knowinject.eval import storage

from knowinject.pipeline import parse_overrides


def measure(profile: str, seed: int, precision: str, changes: dict | None = None) -> pd.DataFrame:
    """One pretraining of the profile's recipe (``seed``, ``precision``, and any ``changes`` to the pretrain
    stage, a candidate recipe): storage by bucket, both measures."""
    wcfg = build(world.WorldConfig, stage_params(profile, "world"), "world")
    rcfg = build(geo.RealWorldConfig, stage_params(profile, "realworld"), "realworld")
    params = {**stage_params(profile, "pretrain"), **(changes or {}), "seed": seed, "precision": precision}
    pcfg = build(pretrain.PretrainConfig, params, "pretrain")
    w = worldfiles.build(wcfg, rcfg, profile)
    folder = pretrain.pretrain_base(w, pcfg, profile)
    scored = storage.stored_knowledge_run(folder, w, wcfg.qa_fraction, wcfg.seed, profile)
    seconds = json.loads((folder / "train_summary.json").read_text())["seconds"]
    return storage.draw_curves(folder, scored, seed).assign(seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knowinject.bench.instrument", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 pretraining of the first seed")
    ap.add_argument("--out", default="tiny_instrument.csv",
                    help="file name in the profile's results folder (another machine's draws beside this one's)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="change pretrain-stage settings (a candidate recipe), e.g. --set epochs=3")
    args = ap.parse_args(argv)
    try:  # the pipeline's own NAME=VALUE reading (3 -> int, 0.001 -> float, True -> bool)
        changes = parse_overrides(args.set)
    except ConfigError:
        changes = None
    if changes is None or {"seed", "precision"} & changes.keys():
        ap.error(f"--set {' '.join(args.set)!r}: give KEY=VALUE for pretrain settings other than seed and "
                 "precision (those are --seeds and the fp32 draw)")
    if not args.out.endswith(".csv") or "/" in args.out:
        ap.error(f"--out {args.out!r}: give a file name ending in .csv (it is written to the results folder)")
    draws = [(s, "auto") for s in args.seeds] + ([] if args.no_fp32 else [(args.seeds[0], "fp32")])
    parts = []
    for seed, precision in draws:
        print(f"== seed {seed}, precision {precision}", flush=True)
        parts.append(measure(args.profile, seed, precision, changes))
    table = pd.concat(parts, ignore_index=True)
    view = table.pivot_table(index=["measure", "seed", "precision"], columns="bucket", values="mean", sort=False)
    print(view.reindex(columns=[b for b in world.EXPOSURE_LABELS if b in view.columns]).round(3).to_string())
    s = storage.spread(table)
    print(f"held-out storage at {s['bucket']} mentions: {s['storage']}; largest move from seed {args.seeds[0]} bf16 "
          f"{s['largest move']:.3f} ({'within' if s['within tolerance'] else 'outside'} +/-{storage.TOLERANCE})")
    print(save_table(table, paths.results_dir(args.profile) / args.out, profile=args.profile,
                     draws=[{"seed": d[0], "precision": d[1]} for d in draws], changes=changes, spread=s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
