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
from .templates import SLICK_CATEGORIES

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


def loss_curve(log: pd.DataFrame, title: str):
    """Training loss against tokens seen, from a run's ``loss_log.csv``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(log.tokens / 1e6, log.loss, color=PALETTE[0])
    ax.set(xlabel="tokens seen (millions)", ylabel="training loss", title=title, yscale="log")
    fig.tight_layout()
    return fig


def knownness_by_exposure(summary: pd.DataFrame):
    """QA accuracy of the pretrained tiny model about people whose QA was not in its corpus, by
    exposure bucket, with 95% bootstrap intervals: one line per question-template split and kind."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    styles = {"train": "-", "heldout": "--"}
    for i, ((split, kind), g) in enumerate(summary.groupby(["template_split", "kind"])):
        g = g.set_index("bucket").reindex(EXPOSURE_LABELS).dropna(subset=["mean"])
        x = [EXPOSURE_LABELS.index(b) for b in g.index]
        label = f"{kind}, {'training' if split == 'train' else 'held-out'} templates"
        ax.errorbar(x, g["mean"], yerr=[g["mean"] - g.ci_low, g.ci_high - g["mean"]], marker="o", capsize=3,
                    label=label, color=PALETTE[i // 2 * 2 + (kind == "numerical")], linestyle=styles[split])
    ax.set_xticks(range(len(EXPOSURE_LABELS)), EXPOSURE_LABELS)
    ax.set(xlabel="mentions of the person in the pretraining corpus", ylabel="exact match",
           title="What the tiny model stored (people whose QA it never saw)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def bench(df: pd.DataFrame):
    """Training tokens/s (labelled with MFU against the measured bf16 peak) and evaluation items/s."""
    train = df[df.tokens_per_s.notna()].reset_index(drop=True)
    ev = df[df.items_per_s.notna()].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    models_ = list(dict.fromkeys(train.model))
    colors = [PALETTE[models_.index(m)] for m in train.model]
    labels = [f"{m.split('-')[0]} b{r.batch_size}\n{r.method} {r.dtype}\n{r.implementation}"
              for m, r in zip(train.model, train.itertuples())]
    bars = axes[0].bar(range(len(train)), train.tokens_per_s, color=colors)
    axes[0].bar_label(bars, labels=[f"{m:.0%}" for m in train.mfu], fontsize=7, padding=2)
    axes[0].set_xticks(range(len(train)), labels, fontsize=6.5)
    axes[0].set(yscale="log", ylabel="training tokens / s (log)", title="Finetuning throughput (label: MFU vs bf16 peak)")
    for i, m in enumerate(models_):
        axes[0].bar([0], [0], color=PALETTE[i], label=m)
    axes[0].legend(fontsize=8)
    ev_colors = [PALETTE[2] if i == "batched" else PALETTE[3] for i in ev.implementation]
    ev_labels = [f"{'generate' if 'generate' in r.method else 'choice'}\n{r.dtype}\n"
                 f"{'batched' if r.implementation == 'batched' else 'single'}" for r in ev.itertuples()]
    axes[1].bar(range(len(ev)), ev.items_per_s, color=ev_colors)
    axes[1].set_xticks(range(len(ev)), ev_labels, fontsize=6.5)
    axes[1].set(yscale="log", ylabel="items / s (log)", title=f"Evaluation ({ev.model.iloc[0] if len(ev) else ''})")
    fig.tight_layout()
    return fig


def accuracy_by_popularity(summary: pd.DataFrame, title: str):
    """Accuracy of a base model by popularity quantile, one panel per relation, zero- and few-shot,
    with 95% bootstrap intervals (``summary`` from ``stats.by_group``)."""
    relations = list(dict.fromkeys(summary.relation))
    fig, axes = plt.subplots(1, len(relations), figsize=(2.6 * len(relations), 3.2), sharey=True, squeeze=False)
    for ax, rel in zip(axes[0], relations):
        g = summary[summary.relation == rel]
        for i, (metric, gm) in enumerate(g.groupby("metric", sort=False)):
            gm = gm.sort_values("bucket")
            ax.errorbar(range(len(gm)), gm["mean"], yerr=[gm["mean"] - gm.ci_low, gm.ci_high - gm["mean"]],
                        marker="o", capsize=3, color=PALETTE[i], label=metric)
            ax.set_xticks(range(len(gm)), gm.bucket)
        ax.set(title=rel, xlabel="popularity quantile", ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def slick_by_popularity(table: pd.DataFrame, title: str):
    """Share of SliCK categories per popularity quantile (all relations pooled)."""
    share = pd.crosstab(table.bucket, table.slick, normalize="index").reindex(columns=list(SLICK_CATEGORIES),
                                                                            fill_value=0)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    share.plot.bar(stacked=True, ax=ax, color=sns.color_palette("RdYlGn_r", 4), width=0.8)
    ax.set(xlabel="popularity quantile", ylabel="share of facts", title=title)
    ax.tick_params(axis="x", rotation=0)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig
