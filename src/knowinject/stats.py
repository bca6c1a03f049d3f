"""Bootstrap confidence intervals, paired differences between conditions, and seed aggregation.

Usage: ``stats.bootstrap_ci(df.em)`` -> (mean, low, high); ``stats.by_group(df, "bucket", "em")``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .seeding import numpy_rng

N_BOOT = 2000


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
