"""Statistics: intervals narrow with more items; a real difference is detected, none is invented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from knowinject import stats


def test_bootstrap_interval_narrows_as_items_grow():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        _, lo, hi = stats.bootstrap_ci(rng.random(n) < 0.6)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(widths[0] / np.sqrt(10), rel=0.35)  # ~1/sqrt(n)


def test_interval_covers_the_mean_and_is_deterministic():
    x = np.random.default_rng(1).random(300) < 0.3
    mean, lo, hi = stats.bootstrap_ci(x)
    assert lo < mean < hi and stats.bootstrap_ci(x) == (mean, lo, hi)


def test_known_difference_is_detected_and_identical_conditions_are_not():
    rng = np.random.default_rng(2)
    n = 800
    a = rng.random(n) < 0.60
    b = rng.random(n) < 0.45            # a real 15-point gap
    diff, lo, hi = stats.paired_difference(a, b)
    assert lo > 0 and diff == pytest.approx(0.15, abs=0.06)
    same = rng.random(n) < 0.5
    diff, lo, hi = stats.paired_difference(same, same.copy())
    assert lo <= 0 <= hi and diff == 0
    c = rng.random(n) < 0.5             # two draws of the same condition
    _, lo, hi = stats.paired_difference(same, c)
    assert lo <= 0 <= hi


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([1, 0], [1, 0, 1])


def test_by_group_and_over_seeds():
    df = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2, "em": [1, 1, 1, 0, 0, 0, 1, 0]})
    s = stats.by_group(df, "g", "em")
    assert list(s.g) == ["a", "b"] and list(s["mean"]) == [0.75, 0.25] and list(s.n) == [4, 4]
    o = stats.over_seeds(df, ["g"], "em")
    assert list(o.n_seeds) == [2, 2] and o["mean"].tolist() == [0.75, 0.25]
