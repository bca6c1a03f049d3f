"""One function per figure, drawn only from saved result tables (this module never imports torch).

Each function takes DataFrames read from files under ``data/`` and returns a matplotlib Figure;
:func:`save` writes it as PNG and PDF under ``figures/`` with a stable name.
Usage: ``plots.save(plots.world_exposure(facts), "world_exposure", profile)``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless under papermill; Jupyter's inline backend still shows returned figures
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import paths

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
PALETTE = sns.color_palette("colorblind")


def save(fig, name: str, profile: str) -> list[str]:
    out = paths.figures_dir(profile)
    files = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        # A fixed creation date keeps the PDF identical across runs of the same results.
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        files.append(paths.show(path))
    return files


def world_exposure(facts: pd.DataFrame):
    """Zipf exposure of known people in the pretraining corpus: rank vs mentions, and the bucket sizes."""
    people = facts[facts.group == "known"].groupby("subject").exposure.first().sort_values(ascending=False)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.loglog(np.arange(1, len(people) + 1), people.values, color=PALETTE[0])
    a.set(xlabel="popularity rank", ylabel="mentions in pretraining corpus", title="Zipf exposure of known people")
    buckets = exposure_buckets(people)
    buckets.value_counts().reindex(EXPOSURE_LABELS).plot.bar(ax=b, color=PALETTE[1])
    b.set(xlabel="mentions", ylabel="people", title="people per exposure bucket")
    b.tick_params(axis="x", rotation=0)
    fig.tight_layout()
    return fig


EXPOSURE_EDGES = (0, 1, 3, 10, 30, 100, np.inf)
EXPOSURE_LABELS = ("1", "2-3", "4-10", "11-30", "31-100", ">100")


def exposure_buckets(exposure: pd.Series) -> pd.Series:
    return pd.cut(exposure, EXPOSURE_EDGES, labels=EXPOSURE_LABELS)


def realworld_popularity(real: pd.DataFrame):
    """Population (the popularity proxy) of real-world subjects, per relation."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.boxplot(data=real, x="popularity", y="relation", log_scale=True, ax=ax, color=PALETTE[2])
    ax.set(xlabel="population of the subject (popularity proxy)", ylabel="", title="Real-world facts (GeoNames)")
    fig.tight_layout()
    return fig
