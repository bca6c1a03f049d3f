"""The benchmarks' figures, drawn only from their saved tables (no torch, like :mod:`knowinject.plots`):
``make bench`` draws them after measuring, notebook 06 redraws them from the committed CSVs.

Usage: ``plots.save(figures.throughput(pd.read_csv("data/results/bench.csv")), "bench", "default")``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from knowinject.plots import PALETTE


def throughput(df: pd.DataFrame):
    """Training tokens/s (labelled with MFU against the measured bf16 peak) and evaluation items/s."""
    train = df[df.tokens_per_s.notna()].reset_index(drop=True)
    ev = df[df.items_per_s.notna()].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.5, 1]})
    models_ = list(dict.fromkeys(train.model))
    colors = [PALETTE[models_.index(m)] for m in train.model]
    impl = {"ours": "ours", "trainer-default": "Trainer", "ours-without-kernels": "ours w/o\nkernels"}
    # The model is the bar's colour (legend), so a tick label only says what differs within a model.
    labels = [f"b{r.batch_size}\n{r.method}\n{r.dtype}\n{impl.get(r.implementation, r.implementation)}"
              for r in train.itertuples()]
    bars = axes[0].bar(range(len(train)), train.tokens_per_s, color=colors)
    axes[0].bar_label(bars, labels=[f"{m:.0%}" for m in train.mfu], fontsize=7, padding=2)
    axes[0].set_xticks(range(len(train)), labels, fontsize=6.5)
    axes[0].set(yscale="log", ylabel="training tokens / s (log)", title="Finetuning throughput (label: MFU vs bf16 peak)")
    for i, m in enumerate(models_):
        axes[0].bar([0], [0], color=PALETTE[i], label=m)
    axes[0].legend(fontsize=8)
    short = {"batched": "batch", "batched-pairs": "batch\npairs", "one-question-at-a-time": "one\nquestion",
             "one-at-a-time": "one"}
    ev_colors = [PALETTE[2] if i.startswith("batched") else PALETTE[3] for i in ev.implementation]
    ev_labels = [f"{'gen' if 'generate' in r.method else 'MC'}\n{r.dtype}\n{short.get(r.implementation, r.implementation)}"
                 for r in ev.itertuples()]
    axes[1].bar(range(len(ev)), ev.items_per_s, color=ev_colors)
    axes[1].set_xticks(range(len(ev)), ev_labels, fontsize=6.5)
    axes[1].set(yscale="log", ylabel="items / s (log)", title=f"Evaluation ({ev.model.iloc[0] if len(ev) else ''})")
    fig.tight_layout()
    return fig


def concurrent_runs(df: pd.DataFrame):
    """Runs per hour of a Study A cell and a Study B condition: one at a time against k at once over one
    base (training alone, and training plus evaluation), labelled with the speed-up."""
    runs = df[df.study.notna()].reset_index(drop=True)
    studies = list(dict.fromkeys(runs.study))
    fig, axes = plt.subplots(1, len(studies), figsize=(6.2 * len(studies), 4.2), squeeze=False)
    for ax, study in zip(axes[0], studies):
        g = runs[runs.study == study].reset_index(drop=True)
        labels = ["solo" if r.k == 1 else f"k={r.k}" + ("\n2 workers" if r.workers > 1 else "") for r in g.itertuples()]
        x = np.arange(len(g))
        for i, (col, what) in enumerate((("runs_per_hour_training", "training"), ("runs_per_hour", "training + evaluation"))):
            bars = ax.bar(x + (i - 0.5) * 0.4, g[col], 0.4, color=PALETTE[i], label=what)
            speed = g[col] / g[col].iloc[0]
            ax.bar_label(bars, labels=[f"{v:.1f}x" for v in speed], fontsize=7, padding=2)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(ylabel="runs per hour", title=g.workload.iloc[0].split(" (")[0] + f" (batch 8 a run, {g.machine.iloc[0][:28]})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
