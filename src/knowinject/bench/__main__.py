"""The benchmarks, as one command (``make bench``): one run's throughput against Hugging Face's Trainer
(:mod:`knowinject.bench.single`), concurrent LoRA runs (:mod:`knowinject.bench.concurrent`) and what else
could shorten a reproduce (:mod:`knowinject.bench.levers`), then the figures.

Usage: ``python -m knowinject.bench [--quick | --replot | --profile-only | --grouped-only | --grouped-agreement
| --levers-only]``.
"""

from __future__ import annotations

import argparse

import pandas as pd

from knowinject.core import paths
from knowinject.core.provenance import save_table

from knowinject import plots
from knowinject.bench import concurrent, figures, levers
from knowinject.bench.single import profile_step, run, speedups


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="training and evaluation throughput benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a check, not a measurement)")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure and speed-ups from bench.csv")
    ap.add_argument("--profile-only", action="store_true", help="only the profile of a LoRA step (bench_profile.csv)")
    ap.add_argument("--grouped-only", action="store_true",
                    help="only concurrent LoRA runs against one at a time (concurrent.csv, about 30 minutes)")
    ap.add_argument("--grouped-agreement", action="store_true",
                    help="only: retrain SmolLM2 Study A cells one run at a time and compare them with the grouped runs "
                         "of `make reproduce` (bench_grouped_agreement.csv, about 6 minutes)")
    ap.add_argument("--levers-only", action="store_true",
                    help="only what else could shorten the default reproduce: parallel pretraining, a tiny run's parts, "
                         "Study B's evaluation, the prefill's projection (bench_levers.csv, about 20 minutes)")
    ap.add_argument("--lever", action="append", choices=levers.PARTS,
                    help="with --levers-only: only this part (repeatable); its rows replace theirs in bench_levers.csv")
    args = ap.parse_args(argv)
    out = paths.results_dir("default") / "bench.csv"
    if args.levers_only:
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
            print(levers.main(quick=args.quick, only=args.lever).drop(columns=["machine", "git_commit"]).round(3).to_string())
        return 0
    if args.grouped_agreement:
        agree = concurrent.agreement()
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(agree.round(4).to_string())
        print(save_table(agree, paths.results_dir("default") / "bench_grouped_agreement.csv"))
        return 0
    grouped_csv = paths.results_dir("default") / "concurrent.csv"
    if args.grouped_only or not (args.replot or args.profile_only):
        concurrent.main(quick=args.quick)
        if args.grouped_only:
            print(plots.save(figures.concurrent_runs(pd.read_csv(grouped_csv)), "bench_grouped", "default"))
            return 0
        levers.main(quick=args.quick)
    if not args.replot:
        # Whichever configuration is profiled first in a process runs slow (in one run the kernels'
        # step, profiled first, took 14% longer than peft's, while alternating four profiles gave the
        # kernels 15-29% shorter steps), so each is profiled twice, alternately, and the faster kept.
        runs = [profile_step(kernels=k) for _ in range(2) for k in (True, False)]
        prof = pd.concat([min((r for r in runs if r.kernels.iloc[0] == k), key=lambda r: r.step_seconds_profiled.iloc[0])
                          for k in (True, False)], ignore_index=True)
        save_table(prof, paths.results_dir("default") / "bench_profile.csv")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(prof[prof.op.str.startswith("(")].round(3).to_string())
        if args.profile_only:
            return 0
    if args.replot:
        df = pd.read_csv(out)
    else:
        df = run(args.quick)
        df.to_csv(out, index=False)
    sp = speedups(df)
    sp.to_csv(paths.results_dir("default") / "bench_speedups.csv", index=False)
    print(plots.save(figures.throughput(df), "bench", "default"))
    if grouped_csv.exists():
        print(plots.save(figures.concurrent_runs(pd.read_csv(grouped_csv)), "bench_grouped", "default"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[["model", "method", "implementation", "dtype", "tokens_per_s", "items_per_s", "mfu", "padding_waste"]]
              .round(3).to_string())
        print(sp)
    print(f"wrote {paths.show(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
