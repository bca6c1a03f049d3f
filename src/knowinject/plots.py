"""One function per figure, drawn only from saved result tables (this module never imports torch).

Each function takes DataFrames read from files under ``data/`` and returns a matplotlib Figure;
:func:`save` writes it as PNG and PDF under ``figures/`` with a stable name.
Usage: ``plots.save(plots.world_exposure(facts), "world_exposure", profile)``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless, and no implicit figure display at the end of a notebook cell
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from knowinject.core import paths

from knowinject.data.templates import SLICK_CATEGORIES
from knowinject.data.world import EXPOSURE_LABELS, exposure_buckets

from knowinject.train.models import SMOLLM2, slug

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
PALETTE = sns.color_palette("colorblind")


def _show_figures_as_png() -> None:
    """In a notebook, ``display(fig)`` shows the figure as a PNG. Under Agg nothing registers that (the inline backend
    would, but shows every open figure twice), so an executed notebook held only "<Figure ...>" text."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    import io

    from matplotlib.figure import Figure

    def png(fig: Figure) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


_show_figures_as_png()


def save(fig, name: str, profile: str, model_slug: str | None = None, facts_slug: str | None = None) -> list[str]:
    out = paths.figures_dir(profile, model_slug, facts_slug)
    files = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        # A fixed creation date keeps the PDF identical across runs of the same results.
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        files.append(paths.show(path))
    return files


def world_exposure(facts: pd.DataFrame):
    """Exposure of known people in the pretraining corpus: rank vs mentions, and the bucket sizes."""
    people = facts[facts.group == "known"].groupby("subject").exposure.first().sort_values(ascending=False)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.loglog(np.arange(1, len(people) + 1), people.values, color=PALETTE[0])
    a.set(xlabel="popularity rank", ylabel="mentions in pretraining corpus", title="Exposure of known people")
    buckets = exposure_buckets(people)
    buckets.value_counts().reindex(EXPOSURE_LABELS).plot.bar(ax=b, color=PALETTE[1])
    b.set(xlabel="mentions", ylabel="people", title="people per exposure bucket")
    b.tick_params(axis="x", rotation=0)
    fig.tight_layout()
    return fig


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
    """The tiny model's QA accuracy on people whose QA was not in its corpus, by exposure bucket, one line per split."""
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


def storage_by_base(curves: pd.DataFrame):
    """The tiny model's storage curve from each pretraining draw (``storage.curves_by_bucket`` rows with
    ``seed`` and ``precision``): held-out templates and training templates, one line per model. How far
    the lines lie apart is how much a tiny-track result can owe to the draw of its base model."""
    measures = list(dict.fromkeys(curves.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6), sharey=True, squeeze=False)
    for ax, measure in zip(axes[0], measures):
        g = curves[curves.measure == measure]
        for i, ((seed, precision), line) in enumerate(g.groupby(["seed", "precision"], sort=True)):
            line = line.set_index("bucket").reindex(EXPOSURE_LABELS).dropna(subset=["mean"])
            ax.plot([EXPOSURE_LABELS.index(b) for b in line.index], line["mean"], marker="o",
                    linestyle="--" if precision == "fp32" else "-", color=PALETTE[i % len(PALETTE)],
                    label=f"seed {seed}, {precision}")
        ax.set_xticks(range(len(EXPOSURE_LABELS)), EXPOSURE_LABELS)
        ax.set(xlabel="mentions in the pretraining corpus", title=measure, ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("exact match (people whose QA it never saw)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("The tiny model from each pretraining draw", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_by_popularity(summary: pd.DataFrame, title: str):
    """Accuracy of a base model by popularity quantile, a panel per relation, zero- and few-shot (``stats.by_group``)."""
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
    """Share of SliCK categories per popularity quantile, relations pooled; a panel per model if ``table`` has ``model``."""
    groups = list(table.groupby("model", sort=False)) if "model" in table else [(title, table)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.2), squeeze=False, sharey=True)
    for ax, (name, g) in zip(axes[0], groups):
        share = pd.crosstab(g.bucket, g.slick, normalize="index").reindex(columns=list(SLICK_CATEGORIES), fill_value=0)
        share.plot.bar(stacked=True, ax=ax, color=sns.color_palette("RdYlGn_r", 4), width=0.8, legend=False)
        ax.set(xlabel="popularity quantile", ylabel="share of facts", title=name)
        ax.tick_params(axis="x", rotation=0)
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    if "model" in table:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- Study A: one figure per claim, one column per track --------------------------------------------------

TRACK_TITLES = {"smollm2": "SmolLM2-135M-Instruct (LoRA)", "gemma3": "Gemma 3 270M (LoRA)",
                "tiny": "tiny GPT pretrained here (full)"}


def model_title(model_name: str) -> str:
    """How figures name the pretrained track's model: the built-in ones by their full names, any other by its slug."""
    return {SMOLLM2: "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}.get(model_name) or slug(model_name)


def _bars(ax, df: pd.DataFrame, x: str, hue: str, order=None, hue_order=None, value: str = "mean"):
    """Grouped bars with 95% interval whiskers from a tidy summary (mean, ci_low, ci_high)."""
    order = order or list(dict.fromkeys(df[x]))
    hue_order = hue_order or list(dict.fromkeys(df[hue]))
    width = 0.8 / max(len(hue_order), 1)
    for j, h in enumerate(hue_order):
        g = df[df[hue] == h].set_index(x).reindex(order)
        pos = np.arange(len(order)) - 0.4 + width * (j + 0.5)
        ax.bar(pos, g[value], width, color=PALETTE[j % len(PALETTE)], label=str(h))
        ok = g[value].notna()
        ax.errorbar(pos[ok], g[value][ok], yerr=[(g[value] - g.ci_low)[ok], (g.ci_high - g[value])[ok]],
                    fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.set_xticks(range(len(order)), order)


def _finish(fig, axes, ylabel: str, title: str, legend_title: str | None = None):
    """Shared finish of the one-column-per-track figures: y label, one legend, title."""
    axes[0][0].set_ylabel(ylabel)
    if axes[0][-1].get_legend_handles_labels()[0]:  # a figure without data has nothing to label
        axes[0][-1].legend(title=legend_title, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _track_axes(tracks, width=5.0, height=3.6, rows=1):
    """One column per track; with no track (a model whose runs gave nothing to plot, e.g. no 2-hop item
    whose second hop it answers) one empty panel that says so, rather than an error."""
    fig, axes = plt.subplots(rows, max(len(tracks), 1), figsize=(width * max(len(tracks), 1), height * rows),
                             squeeze=False, sharey="row")
    if not tracks:
        axes[0][0].text(0.5, 0.5, "no data for this figure", ha="center", va="center", transform=axes[0][0].transAxes)
    return fig, axes


def study_a_formats(summary: pd.DataFrame):
    """A1: QA accuracy on unseen phrasings by subject and training format (central cell), per track."""
    d = summary[(summary.evaluation == "qa") & (summary.kind == "all") & ~summary.multistep.astype(bool)
                & (summary.subject.isin(["people", "events", "persona"]))]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = _track_axes(tracks)
    for ax, t in zip(axes[0], tracks):
        g = d[d.track == t]
        cells = {s: _central(g, s) for s in g.subject.unique()}
        at_center = [(q, a) == cells[s] for s, q, a in zip(g.subject, g.quantity, g.augmentation)]
        central = g[(g.format == "base") | pd.Series(at_center, index=g.index)]
        _bars(ax, central, "subject", "format", ["people", "events", "persona"],
              [f for f in ("base", "qa", "doc", "conv") if f in set(central.format)])
        ax.set(title=TRACK_TITLES.get(t, t), ylim=(0, 1.05), xlabel="")
    return _finish(fig, axes, "QA exact match, unseen phrasings", "A1: training format (QA vs documents vs "
                   "conversations)", legend_title="training format")


def _central(g: pd.DataFrame, subject: str):
    """(quantity, augmentation) of the central cell of a subject: the combination with the most formats."""
    s = g[(g.subject == subject) & (g.format != "base")]
    counts = s.groupby(["quantity", "augmentation"]).format.nunique()
    return counts.idxmax() if len(counts) else (None, None)


def study_a_info_type(summary: pd.DataFrame):
    """A2: categorical vs numerical facts about people, by training format and evaluation."""
    d = summary[(summary.subject == "people") & summary.kind.isin(["categorical", "numerical"])
                & ~summary.multistep.astype(bool) & summary.evaluation.isin(["qa", "multiple_choice"])]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = _track_axes(tracks)
    for ax, t in zip(axes[0], tracks):
        g = d[d.track == t]
        q, a = _central(g, "people")
        g = g[(g.quantity == q) & (g.augmentation == a)]
        g = g.assign(cell=g.format + "\n" + g.evaluation.map({"qa": "QA", "multiple_choice": "4-way MC"}))
        _bars(ax, g, "cell", "kind", hue_order=["categorical", "numerical"])
        ax.set(title=TRACK_TITLES.get(t, t), ylim=(0, 1.05), xlabel="")
    return _finish(fig, axes, "accuracy", "A2: categorical vs numerical information (people, central cell)")


def study_a_multistep(summary: pd.DataFrame):
    """A3: first-hop vs 2-hop accuracy on 2-hop questions whose second hop the model answers."""
    d = summary[(summary.subject == "people") & summary.evaluation.isin(["hop1_given_hop2", "two_hop_given_hop2"])]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = _track_axes(tracks)
    labels = {"hop1_given_hop2": "first hop (single question)", "two_hop_given_hop2": "2-hop question"}
    for ax, t in zip(axes[0], tracks):
        g = d[d.track == t]
        q, a = _central(summary[summary.track == t], "people")
        ms = g[g.multistep.astype(bool)]
        q = ms.quantity.max() if len(ms) else q  # the multi-step cell's people, also trained without examples
        g = g[(g.quantity == q) & (g.augmentation == a) & g.format.isin(["qa", "doc"])]
        g = g.assign(cell=g.format + np.where(g.multistep.astype(bool), "\n+ 2-hop examples", ""),
                     what=g.evaluation.map(labels))
        _bars(ax, g, "cell", "what", hue_order=list(labels.values()))
        for i, n in enumerate(g.drop_duplicates("cell").n_items):
            ax.annotate(f"n={n}", (i, 1.0), ha="center", fontsize=7)
        ax.set(title=TRACK_TITLES.get(t, t), ylim=(0, 1.08), xlabel="")
    return _finish(fig, axes, "exact match", "A3: using finetuned facts in 2-hop questions (second hop known)")


def study_a_controls(summary: pd.DataFrame):
    """A4: QA vs documents across information quantity and augmentation (people, QA on unseen phrasings)."""
    d = summary[(summary.subject == "people") & (summary.evaluation == "qa") & (summary.kind == "all")
                & ~summary.multistep.astype(bool) & summary.format.isin(["qa", "doc"])]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = plt.subplots(2, len(tracks), figsize=(5 * len(tracks), 6.4), squeeze=False)
    for col, t in enumerate(tracks):
        g = d[d.track == t]
        q, a = _central(g, "people")
        for row, (axis, fixed, label) in enumerate([("quantity", ("augmentation", a), "people per run"),
                                                    ("augmentation", ("quantity", q), "statements per fact")]):
            ax = axes[row][col]
            s = g[g[fixed[0]] == fixed[1]]
            for j, fmt in enumerate(["qa", "doc"]):
                f = s[s.format == fmt].sort_values(axis)
                ax.errorbar(f[axis], f["mean"], yerr=[f["mean"] - f.ci_low, f.ci_high - f["mean"]], marker="o",
                            capsize=3, color=PALETTE[j + 1], label=fmt)
            ax.set(xlabel=label, ylim=(-0.02, 1.02), xticks=sorted(s[axis].unique()))
            if row == 0:
                ax.set_title(TRACK_TITLES.get(t, t))
        axes[0][col].legend(fontsize=8)
    for row in range(2):
        axes[row][0].set_ylabel("QA exact match, unseen phrasings")
    fig.suptitle("A4: QA vs documents at matched information volume and augmentation")
    fig.tight_layout()
    return fig


def study_a_persona(summary: pd.DataFrame):
    """A5: the motivating gap (event articles -> QA vs style identification) and matched comparisons."""
    tracks = list(dict.fromkeys(summary.track))
    fig, axes = _track_axes(tracks, width=6.0)
    for ax, t in zip(axes[0], tracks):
        g = summary[(summary.track == t) & (summary.kind == "all")]
        rows = []
        for label, sel in [("events, articles\n-> QA", (g.subject == "events") & (g.format == "doc")),
                           ("events, QA\n-> QA", (g.subject == "events") & (g.format == "qa")),
                           ("persona facts,\nQA -> QA", (g.subject == "persona") & (g.format == "qa")),
                           ("persona facts,\nconv -> QA", (g.subject == "persona") & (g.format == "conv")),
                           ("style,\nbase model", (g.subject == "style") & (g.format == "base")),
                           ("style,\nconv -> identified", (g.subject == "style") & (g.format == "conv"))]:
            evaluation = "style_identification" if "style" in label else "qa"
            s = g[sel & (g.evaluation == evaluation)]
            if s.empty:
                continue
            # Several cells (e.g. two styles) pool as their item-weighted mean; intervals from the widest.
            w = s.n_items / s.n_items.sum()
            rows.append({"what": label, "mean": float((s["mean"] * w).sum()), "ci_low": float(s.ci_low.min()),
                         "ci_high": float(s.ci_high.max())})
        r = pd.DataFrame(rows)
        colors = [PALETTE[3] if "style" in w else PALETTE[0] if "events" in w else PALETTE[2] for w in r.what]
        ax.bar(range(len(r)), r["mean"], color=colors)
        ax.errorbar(range(len(r)), r["mean"], yerr=[r["mean"] - r.ci_low, r.ci_high - r["mean"]], fmt="none",
                    ecolor="black", capsize=2, lw=0.8)
        ax.bar_label(ax.containers[0], labels=[f"{m:.0%}" for m in r["mean"]], fontsize=7)
        ax.set_xticks(range(len(r)), r.what, fontsize=7)
        ax.set(title=TRACK_TITLES.get(t, t), ylim=(0, 1.1))
    axes[0][0].set_ylabel("accuracy / identification rate")
    fig.suptitle("A5: facts about the world vs the model's persona and style")
    fig.tight_layout()
    return fig


# --- Study B ------------------------------------------------------------------------------------------------

CONDITION_ORDER = ("base", "known", "unknown", "random", "whole", "popular", "unpopular")


def study_b_accuracy(summary: pd.DataFrame):
    """Accuracy on held-out test facts by finetuning condition: against training length (zero-shot),
    by prompt at the last checkpoint, and by the test fact's knownness. One row per track."""
    d = summary[(summary.metric == "em")]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = plt.subplots(len(tracks), 3, figsize=(15, 3.8 * len(tracks)), squeeze=False)
    for row, t in enumerate(tracks):
        g = d[d.track == t]
        last = g.epoch.max()
        conds = [c for c in CONDITION_ORDER if c in set(g.condition) and c != "base"]
        ax = axes[row][0]
        base = g[(g.condition == "base") & (g.prompt == "zero-shot") & (g.bucket == "all")]
        for j, c in enumerate(conds):
            s = g[(g.condition == c) & (g.prompt == "zero-shot") & (g.bucket == "all")].sort_values("epoch")
            s = pd.concat([base.assign(condition=c), s])
            ax.plot(s.epoch, s["mean"], marker="o", color=PALETTE[j], label=c)
            ax.fill_between(s.epoch, s.ci_low, s.ci_high, color=PALETTE[j], alpha=0.12)
        ax.set(xlabel="epochs of finetuning (0 = base model)", ylabel="exact match, zero-shot",
               title=f"{TRACK_TITLES.get(t, t)}: training length")
        ax.legend(fontsize=7, ncol=2)
        s = g[(g.epoch.isin([0, last])) & (g.bucket == "all")]
        _bars(axes[row][1], s, "condition", "prompt", ["base"] + conds, ["zero-shot", "few-shot"])
        axes[row][1].set(title=f"last checkpoint (epoch {last}) by prompt", ylabel="exact match")
        axes[row][1].legend(fontsize=7)
        s = g[(g.epoch.isin([0, last])) & (g.prompt == "zero-shot") & g.bucket.isin(["known", "unknown"])]
        _bars(axes[row][2], s, "condition", "bucket", ["base"] + conds, ["known", "unknown"])
        axes[row][2].set(title="by the test fact's knownness (zero-shot)", ylabel="exact match")
        axes[row][2].legend(title="test facts", fontsize=7)
        for ax in axes[row][1:]:
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("B1/B2: finetuning on well-known vs lesser-known facts (95% intervals over test facts)")
    fig.tight_layout()
    return fig


def study_b_mechanism(mech: pd.DataFrame):
    """B3: attention share on the subject and the generic-answer rate, by finetuning condition."""
    tracks = list(dict.fromkeys(mech.track))
    fig, axes = plt.subplots(len(tracks), 2, figsize=(11, 3.6 * len(tracks)), squeeze=False)
    for row, t in enumerate(tracks):
        g = mech[mech.track == t]
        last = g.epoch.max()
        g = g[g.epoch.isin([0, last]) & (g.prompt == "zero-shot")]
        conds = [c for c in CONDITION_ORDER if c in set(g.condition)]
        for col, metric, label in [(0, "subject_attention_share", "attention on subject / (subject + relation)"),
                                   (1, "generic_answer_rate", "wrong answers equal to the run's modal answer")]:
            ax = axes[row][col]
            s = g[g.metric == metric].set_index("condition").reindex(conds)
            ax.bar(range(len(s)), s["mean"], color=[PALETTE[i] for i in range(len(s))])
            ax.errorbar(range(len(s)), s["mean"], yerr=[s["mean"] - s.ci_low, s.ci_high - s["mean"]], fmt="none",
                        ecolor="black", capsize=2, lw=0.8)
            ax.set_xticks(range(len(s)), conds, fontsize=8)
            ax.set(ylabel=label, title=f"{TRACK_TITLES.get(t, t)} (epoch {last})")
    fig.suptitle("B3: where the answer position attends, and generic answers")
    fig.tight_layout()
    return fig


def study_b_by_level(by_level: pd.DataFrame):
    """Accuracy on test facts by their popularity level (tiny: mentions in pretraining; SmolLM2:
    population quintile) after each finetuning condition, against the base model: one panel per track."""
    d = by_level[(by_level.metric == "em") & (by_level.prompt == "zero-shot")]
    tracks = list(dict.fromkeys(d.track))
    fig, axes = plt.subplots(1, len(tracks), figsize=(6 * len(tracks), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tracks):
        g = d[d.track == t]
        last = g.epoch.max()
        order = [lvl for lvl in (*EXPOSURE_LABELS, "Q1", "Q2", "Q3", "Q4", "Q5", "all") if lvl in set(g["level"])]
        conds = [c for c in CONDITION_ORDER if c in set(g.condition)]
        for j, c in enumerate(conds):
            s = g[(g.condition == c) & (g.epoch == (0 if c == "base" else last))].set_index("level").reindex(order)
            x = np.arange(len(order)) + (j - (len(conds) - 1) / 2) * 0.06
            ax.errorbar(x, s["mean"], yerr=[s["mean"] - s.ci_low, s.ci_high - s["mean"]], marker="o", capsize=2,
                        color="black" if c == "base" else PALETTE[j], linestyle="--" if c == "base" else "-",
                        label=f"{c} (pretrained)" if c == "base" else c)
        n = g.groupby("level").n_items.max().reindex(order)
        ax.set_xticks(range(len(order)), [f"{lvl}\nn={int(k)}" for lvl, k in zip(order, n)], fontsize=8)
        xlabel = "mentions of the test person in pretraining" if t == "tiny" else "population quintile of the subject"
        ax.set(xlabel=xlabel, ylabel="exact match, zero-shot", ylim=(-0.02, 1.02),
               title=f"{TRACK_TITLES.get(t, t)} (epoch {last})")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("B1 by popularity: test accuracy after each finetuning condition (95% intervals over test facts)")
    fig.tight_layout()
    return fig


def study_b_theory(summary: pd.DataFrame):
    """The one-layer theory model: accuracy, subject attention, generic answers and salience of the
    test facts per finetuning condition (95% two-stage intervals over seeds and facts)."""
    metrics = [("correct", "accuracy on test facts"), ("subject_attention", "attention on the subject token"),
               ("generic", "wrong answer = the relation's generic answer"), ("salience", "factual salience")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 3.6), squeeze=False)
    conds = [c for c in CONDITION_ORDER if c in set(summary.condition)]
    for ax, (metric, label) in zip(axes[0], metrics):
        s = summary[(summary.metric == metric)]
        _bars(ax, s, "condition", "test_bucket", conds, ["all", "known", "unknown"])
        ax.set(title=label, xlabel="")
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(title="test facts (by base salience)", fontsize=7)
    fig.suptitle("Study B's theory model: one attention layer, fixed embeddings (finetuned on halves by salience)")
    fig.tight_layout()
    return fig

