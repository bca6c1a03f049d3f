"""The claims at a glance: every claim and track of ``findings.csv`` in one forest plot (``figures/claims.png``,
the front page's figure), drawn from that table alone (this module never imports torch).

Usage: ``plots.save(forest.claims(pd.read_csv("data/results/findings.csv")), "claims", profile)``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from knowinject.plots import PALETTE

VERDICT_COLOURS = {"reproduced": PALETTE[2], "not reproduced": PALETTE[3], "undecided": PALETTE[7],
                   "mixed": PALETTE[4], "unmeasurable": PALETTE[5], "lifts": PALETTE[0], "lowers": PALETTE[1]}


def claims(findings: pd.DataFrame):
    """Every claim and track of ``findings.csv`` in one forest plot: the effect (filled: main design) and its
    two-stage 95% interval, coloured by verdict; the replication (hollow) just below it; the MDE as a grey
    bar from 0; the paper's effect or margin, where it states one, as a green band or dashed line. Effects
    are signed so that the paper's claim predicts a positive value (a non-inferiority or equivalence claim:
    inside its margin)."""
    t = findings.reset_index(drop=True)
    n = len(t)
    fig, ax = plt.subplots(figsize=(8.2, 0.34 * n + 1.4))
    y = np.arange(n)[::-1].astype(float)
    for yi, r in zip(y, t.itertuples()):
        if not np.isnan(r.mde):
            ax.plot([0, r.mde], [yi - 0.32] * 2, color="0.75", lw=3, solid_capstyle="butt", zorder=1)
        low, high = getattr(r, "paper_low", np.nan), getattr(r, "paper_high", np.nan)
        if not np.isnan(low) and not np.isnan(high):
            ax.fill_between([low, high], yi - 0.45, yi + 0.45, color=PALETTE[2], alpha=0.12, lw=0, zorder=0)
        elif not np.isnan(low):
            ax.plot([low, low], [yi - 0.45, yi + 0.45], color=PALETTE[2], ls="--", lw=1, zorder=0)
        colour = VERDICT_COLOURS.get(r.verdict, "0.3")
        if not np.isnan(r.effect):
            ax.plot([r.ci_low, r.ci_high], [yi + 0.08] * 2, color=colour, lw=2, zorder=2)
            ax.plot(r.effect, yi + 0.08, "o", color=colour, ms=6, zorder=3)
        rep = getattr(r, "replication_effect", np.nan)
        if not np.isnan(rep):
            rc = VERDICT_COLOURS.get(r.replication_verdict, "0.3")
            ax.plot([r.replication_ci_low, r.replication_ci_high], [yi - 0.16] * 2, color=rc, lw=1.2, zorder=2)
            ax.plot(rep, yi - 0.16, "o", mfc="white", mec=rc, ms=5, zorder=3)
    ax.axvline(0, color="0.2", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.claim}  {r.track}" for r in t.itertuples()])
    ax.set_ylim(-0.8, n - 0.2)
    ax.set_xlabel("effect (signed so that the paper's claim predicts > 0), 95% two-stage interval")
    ax.grid(axis="y", visible=False)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    present = [v for v in VERDICT_COLOURS if v in set(t.verdict) | set(t.get("replication_verdict", pd.Series()).dropna())]
    handles = [Line2D([], [], color=VERDICT_COLOURS[v], marker="o", lw=2, label=v) for v in present]
    handles += [Line2D([], [], color="0.4", marker="o", mfc="white", lw=1.2, label="replication"),
                Line2D([], [], color="0.75", lw=3, label="MDE (80% power)"),
                Patch(color=PALETTE[2], alpha=0.25, label="paper's effect / margin")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / (0.34 * n + 1.4) - 0.02),
              ncol=4, frameon=False, fontsize=8)
    ax.set_title("Every claim, by track: effect, interval, verdict and replication")
    fig.tight_layout()
    return fig


def _size(n: float) -> str:
    return "?" if np.isnan(n) else f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.1f}M"


def by_model(table: pd.DataFrame):
    """Each claim's effect and two-stage 95% interval for every model that ran it (``by_model.csv``), one panel
    per claim, models ordered by parameter count; filled: main design, hollow: replication, coloured by verdict.
    The footnote says what else differs between the models, so the figure reads as a comparison of instruments
    and not as a scaling law."""
    claims_ = list(dict.fromkeys(table.claim))
    cols = min(len(claims_), 5) or 1
    rows = -(-len(claims_) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows + 0.9), squeeze=False)
    for ax, claim in zip(axes.flat, claims_):
        g = table[table.claim == claim].reset_index(drop=True)
        x = np.arange(len(g))
        for xi, r in zip(x, g.itertuples()):
            c = VERDICT_COLOURS.get(r.verdict, "0.3")
            if not np.isnan(r.effect):
                ax.plot([xi - 0.1] * 2, [r.ci_low, r.ci_high], color=c, lw=2)
                ax.plot(xi - 0.1, r.effect, "o", color=c, ms=6)
            if isinstance(r.replication_verdict, str) and not np.isnan(r.replication_effect):
                rc = VERDICT_COLOURS.get(r.replication_verdict, "0.3")
                ax.plot([xi + 0.1] * 2, [r.replication_ci_low, r.replication_ci_high], color=rc, lw=1.2)
                ax.plot(xi + 0.1, r.replication_effect, "o", mfc="white", mec=rc, ms=5)
        ax.axhline(0, color="0.2", lw=0.8)
        ax.set_xticks(x, [f"{r.track}\n{_size(r.n_params)}" for r in g.itertuples()], fontsize=7)
        ax.set_xlim(-0.6, len(g) - 0.4)
        ax.set_title(claim, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(claims_):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("effect (paper predicts > 0)", fontsize=8)
    notes = "; ".join(dict.fromkeys(f"{r.track}: {r.architecture}, {r.facts}, {r.finetuning}"
                                    for r in table.drop_duplicates("track").sort_values("n_params").itertuples()))
    fig.suptitle("Every claim by model (filled: main design; hollow: replication; colour: verdict)", fontsize=11)
    fig.text(0.5, 0.01, "The models differ in more than size: " + notes + ". A comparison of instruments, not a "
             "scaling law.", ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig
