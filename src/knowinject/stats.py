"""Bootstrap confidence intervals, paired differences between conditions, seed aggregation, and the
two-stage (runs, then items) bootstrap that every claim's interval and power come from.

Usage: ``stats.bootstrap_ci(df.em)`` -> (mean, low, high); ``stats.by_group(df, "bucket", "em")``;
``stats.two_stage(scores_a, scores_b, paired_items=True)`` -> :class:`Effect`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from knowinject.core.seeding import numpy_rng

N_BOOT = 2000
# Minimum detectable effect at 80% power in a two-sided 5% test: (z_0.975 + z_0.80) standard errors.
MDE_Z = 1.959964 + 0.841621


def bootstrap_ci(values, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap interval over items."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    rng = numpy_rng(seed, "bootstrap")
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_difference(a, b, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the same items (aligned arrays), with a bootstrap interval that resamples items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs the same items in both conditions; got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot, level, seed)


def difference_ci(a, b, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two independent samples (different items), with a bootstrap interval that
    resamples each sample separately."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return (np.nan, np.nan, np.nan)
    rng = numpy_rng(seed, "bootstrap-difference")
    diffs = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def by_group(df: pd.DataFrame, group: str | list[str], value: str, seed: int = 0) -> pd.DataFrame:
    """Tidy summary: one row per group with mean, ci_low, ci_high and n."""
    rows = []
    for key, g in df.groupby(group, observed=True, sort=True):
        mean, lo, hi = bootstrap_ci(g[value], seed=seed)
        key = key if isinstance(key, tuple) else (key,)
        names = group if isinstance(group, list) else [group]
        rows.append({**dict(zip(names, key)), "mean": mean, "ci_low": lo, "ci_high": hi, "n": len(g)})
    return pd.DataFrame(rows)


def over_seeds(df: pd.DataFrame, group: list[str], value: str, seed_col: str = "seed") -> pd.DataFrame:
    """Per-seed means, then their mean and standard error across seeds (runs are the unit here)."""
    per_seed = df.groupby(group + [seed_col], observed=True)[value].mean().reset_index()
    agg = per_seed.groupby(group, observed=True)[value].agg(["mean", "std", "count"]).reset_index()
    agg["sem"] = agg["std"] / np.sqrt(agg["count"])
    return agg.rename(columns={"count": "n_seeds"})


@dataclass(frozen=True)
class Effect:
    """An effect (a mean, or a difference of means) with its two-stage interval (runs and items
    resampled), the item-only interval (runs averaged first, as if training were not random), the
    two-stage standard error, the design's size, and the mean of each condition (``mean_b`` is NaN
    for a one-sample effect): what says whether both sat at a ceiling or a floor."""
    effect: float
    ci_low: float
    ci_high: float
    item_ci_low: float
    item_ci_high: float
    se: float
    n_items: int
    n_seeds: int
    mean_a: float = np.nan
    mean_b: float = np.nan
    n_bases: int = 0                # base models resampled (0: runs resampled as independent draws)
    base_share: float = np.nan      # share of the variance from the base models (see two_stage)

    @property
    def mde(self) -> float:
        """Minimum detectable effect at 80% power (two-sided 5%), from the two-stage standard error."""
        return MDE_Z * self.se

    @classmethod
    def empty(cls) -> Effect:
        return cls(*(np.nan,) * 6, 0, 0)


def _as_matrix(scores) -> pd.DataFrame:
    """A runs x items table of scores (rows: seeds, columns: items); NaN where a run has no score."""
    m = scores if isinstance(scores, pd.DataFrame) else pd.DataFrame(np.atleast_2d(np.asarray(scores, dtype=float)))
    return m.astype(float)


def _counts(rng, n_boot: int, n: int) -> np.ndarray:
    """[n_boot, n] resampling counts: how often each unit is drawn in each bootstrap replicate."""
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], rng.integers(0, n, (n_boot, n))), 1)
    return w


def _replicates(y: pd.DataFrame, w_runs: np.ndarray, w_items: np.ndarray) -> np.ndarray:
    """Mean of the present cells of ``y`` under resampling weights for its runs and its items."""
    v = y.to_numpy()
    present = ~np.isnan(v)
    total = (w_runs @ np.where(present, v, 0.0) * w_items).sum(1)
    count = (w_runs @ present.astype(float) * w_items).sum(1)
    return total / np.where(count > 0, count, np.nan)


def two_stage(a, b=None, *, paired_items: bool = False, shared_runs: bool = False, n_boot: int = N_BOOT,
              level: float = 0.95, seed: int = 0, resample_runs: bool = True,
              bounds: tuple[float, float] | None = None, bases: dict | None = None) -> Effect:
    """Mean of ``a`` (runs x items), or mean(a) - mean(b), with a two-stage bootstrap interval.

    The statistic is the mean over all (run, item) cells. Its variance has a part from training
    (which runs were drawn) and a part from the test set (which items); the bootstrap measures each
    by resampling runs with replacement (items fixed) and items with replacement (runs fixed),
    rescales each by n / (n - 1) (a bootstrap over n units underestimates variance by that factor,
    which matters with 3-5 seeds), and the interval is point +/- t * SE with Satterthwaite's degrees of
    freedom, so that 3 seeds get the wide interval 3 seeds deserve. (The percentile interval of
    replicates that resample both stages at once covers 78% at 3 seeds; this one about 95%:
    ``tests/test_stats.py``.) ``paired_items``: a and b score the same items, resampled together.
    ``shared_runs``: the same runs scored both item sets (e.g. categorical and numerical facts of one
    finetune), resampled together; otherwise each condition's runs are resampled on their own.
    ``resample_runs=False`` drops the training part (what an item-only bootstrap assumes). The
    item-only interval reported beside it averages each item over runs, then resamples items.

    ``bases``: which base model each run (row label) finetuned, when runs of several pretrained bases are
    pooled. The training stage then resamples *bases*, each with all its runs (in both conditions: they
    finetuned the same bases), rather than runs: runs of one base share its draw, so treating them as
    independent understates the variance (a cluster bootstrap; ``tests/test_stats.py`` checks coverage
    with a base variance component, and that it fails without this). Its degrees of freedom are the
    number of bases less one. ``base_share`` estimates the part of the total variance due to the bases:
    the bases' resampling variance less that of runs resampled within their bases, over the total.

    ``bounds``: the range a score can take, e.g. (0, 1) for an accuracy. The two-stage interval is then
    truncated to the parameter's range, [lo, hi] for a mean and [lo - hi, hi - lo] for a difference
    (so no accuracy's interval leaves [0, 1] and no difference's [-1, +1]; with 36 items at 95% a t
    interval did). Truncation cannot lower coverage, since the parameter always lies in its range; it
    only drops values it cannot take (the coverage test runs with it). Scores outside ``bounds`` are an
    error. The item-only interval is a percentile bootstrap of means, inside the range already.
    """
    from scipy import stats as sps

    ya = _as_matrix(a)
    yb = None if b is None else _as_matrix(b)
    if yb is not None and shared_runs:
        rows = [r for r in ya.index if r in set(yb.index)]
        ya, yb = ya.loc[rows], yb.loc[rows]
    ya = ya.loc[:, ya.notna().any()]
    if yb is not None:
        yb = yb.loc[:, yb.notna().any()]
        if paired_items:
            cols = [c for c in ya.columns if c in set(yb.columns)]
            ya, yb = ya[cols], yb[cols]
    if ya.size == 0 or (yb is not None and yb.size == 0):
        return Effect.empty()
    if bounds is not None:
        values = np.concatenate([y.to_numpy().ravel() for y in (ya, yb) if y is not None])
        values = values[~np.isnan(values)]
        if len(values) and (values.min() < bounds[0] or values.max() > bounds[1]):
            raise ValueError(f"two_stage: scores lie in [{values.min():g}, {values.max():g}], outside the stated "
                             f"bounds {bounds}; pass the metric's true range, or bounds=None for an unbounded one")
    rng = numpy_rng(seed, "bootstrap-two-stage")
    fixed = {y.shape: np.ones((n_boot, y.shape[0])) for y in (ya, yb) if y is not None}
    if bases is not None:
        missing = [r for y in (ya, yb) if y is not None for r in y.index if r not in bases]
        if missing:
            raise ValueError(f"two_stage: runs {missing} have no base in `bases`")
        labels = sorted({bases[r] for y in (ya, yb) if y is not None for r in y.index}, key=str)
        base_of = {y.shape: np.array([labels.index(bases[r]) for r in y.index]) for y in (ya, yb) if y is not None}

    def variance(resample: str) -> float:
        """Bootstrap variance of the statistic when only runs (or bases, or runs within their bases), or
        only items, are resampled."""
        if resample == "bases":  # one draw of bases for both conditions: they finetuned the same bases
            draw = _counts(rng, n_boot, len(labels))
            stat = _replicates(ya, draw[:, base_of[ya.shape]], np.ones((n_boot, ya.shape[1])))
            if yb is not None:
                stat = stat - _replicates(yb, draw[:, base_of[yb.shape]], np.ones((n_boot, yb.shape[1])))
            return float(np.nanvar(stat, ddof=1))
        if resample == "within":
            def within(y):
                w = np.zeros((n_boot, y.shape[0]))
                for b in np.unique(base_of[y.shape]):
                    rows = np.flatnonzero(base_of[y.shape] == b)
                    w[:, rows] = _counts(rng, n_boot, len(rows))
                return w
            wa = within(ya)
            stat = _replicates(ya, wa, np.ones((n_boot, ya.shape[1])))
            if yb is not None:
                wb = wa if shared_runs else within(yb)
                stat = stat - _replicates(yb, wb, np.ones((n_boot, yb.shape[1])))
            return float(np.nanvar(stat, ddof=1))

        def w(y, shared=None):
            if resample == "runs":
                return (shared if shared is not None else _counts(rng, n_boot, y.shape[0])), np.ones((n_boot, y.shape[1]))
            return fixed[y.shape], (shared if shared is not None else _counts(rng, n_boot, y.shape[1]))
        wr, wi = w(ya)
        stat = _replicates(ya, wr, wi)
        if yb is not None:
            share = (wr if resample == "runs" and shared_runs else wi if resample == "items" and paired_items else None)
            wr_b, wi_b = w(yb, share)
            stat = stat - _replicates(yb, wr_b, wi_b)
        return float(np.nanvar(stat, ddof=1))

    point = float(np.nanmean(ya.to_numpy())) - (float(np.nanmean(yb.to_numpy())) if yb is not None else 0.0)
    n_runs = ya.shape[0] if yb is None or shared_runs else ya.shape[0] + yb.shape[0]
    df_runs = max(ya.shape[0] - 1, 0) if yb is None or shared_runs else max(ya.shape[0] + yb.shape[0] - 2, 0)
    n_items = ya.shape[1] if yb is None or paired_items else ya.shape[1] + yb.shape[1]
    df_items = (ya.shape[1] - 1) if yb is None or paired_items else (ya.shape[1] + yb.shape[1] - 2)
    base_share = np.nan
    if bases is not None and resample_runs:
        n_runs, df_runs = len(labels), len(labels) - 1
        v_runs = variance("bases") * n_runs / df_runs if df_runs > 0 else 0.0
    else:
        v_runs = variance("runs") * n_runs / max(df_runs, 1) if resample_runs and df_runs > 0 else 0.0
    v_items = variance("items") * n_items / max(df_items, 1) if df_items > 0 else 0.0
    if bases is not None and resample_runs and v_runs + v_items > 0:
        runs_total = ya.shape[0] + (0 if yb is None or shared_runs else yb.shape[0])
        inner = runs_total - len(labels)  # degrees of freedom of runs within their bases
        v_within = variance("within") * runs_total / inner if inner > 0 else 0.0
        base_share = float(np.clip((v_runs - v_within) / (v_runs + v_items), 0.0, 1.0))
    se = float(np.sqrt(v_runs + v_items))
    terms = [(v, d) for v, d in ((v_runs, df_runs), (v_items, df_items)) if v > 0 and d > 0]
    dof = (v_runs + v_items) ** 2 / sum(v ** 2 / d for v, d in terms) if terms else np.inf
    half = float(sps.t.ppf(1 - (1 - level) / 2, dof)) * se if se > 0 else 0.0
    lo, hi = point - half, point + half
    if bounds is not None:
        low, high = bounds if yb is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
        lo, hi = max(lo, low), min(hi, high)
    # The item-only interval: each item averaged over runs, then items resampled.
    ia = ya.mean(axis=0).dropna()
    if yb is None:
        _, ilo, ihi = bootstrap_ci(ia, n_boot, level, seed)
    elif paired_items:
        both = pd.concat([ia.rename("a"), yb.mean(axis=0).dropna().rename("b")], axis=1).dropna()
        _, ilo, ihi = paired_difference(both.a, both.b, n_boot, level, seed)
    else:
        _, ilo, ihi = difference_ci(ia, yb.mean(axis=0).dropna(), n_boot, level, seed)
    n_seeds = ya.shape[0] if yb is None or shared_runs else min(ya.shape[0], yb.shape[0])
    mean_a = float(np.nanmean(ya.to_numpy()))
    mean_b = float(np.nanmean(yb.to_numpy())) if yb is not None else np.nan
    return Effect(point, lo, hi, float(ilo), float(ihi), se, int(n_items), int(n_seeds), mean_a, mean_b,
                  len(labels) if bases is not None else 0, base_share)


def runs_by_items(df: pd.DataFrame, value: str, run: str = "seed", item: str | list[str] = "item_id") -> pd.DataFrame:
    """The runs x items table :func:`two_stage` takes, from a long table with one row per score
    (several rows of a (run, item) pair are averaged)."""
    items = [item] if isinstance(item, str) else list(item)
    d = df.assign(_item=df[items].astype(str).agg("|".join, axis=1)) if len(items) > 1 else df.assign(_item=df[items[0]])
    return d.pivot_table(index=run, columns="_item", values=value, aggfunc="mean").astype(float)


BASE = "pretrain_seed"  # the column that says which pretrained base a run finetuned (the tiny track's K bases)


def bases_of(df: pd.DataFrame, run: str = "seed", base: str = BASE) -> dict | None:
    """``{run: base}`` for :func:`two_stage`'s ``bases`` when ``df`` pools runs of several pretrained bases;
    None when it has no ``base`` column or one base only (the runs are then the only training draw)."""
    if base not in df or df[base].nunique() < 2:
        return None
    per_run = df.groupby(run)[base].nunique()
    if (per_run > 1).any():
        raise ValueError(f"bases_of: runs {list(per_run[per_run > 1].index)} appear under several bases in "
                         f"column {base!r}; a run label ({run!r}) must belong to one base")
    return df.drop_duplicates(run).set_index(run)[base].to_dict()
