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


# --- the two-stage bootstrap ---------------------------------------------------------------------------------

def _simulated(rng, n_seeds, n_items, seed_sd=0.1, item_sd=0.2, noise_sd=0.1, mean=0.5):
    """Scores of n_seeds runs on n_items items: run effect + item effect + noise (true mean known)."""
    return (mean + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, item_sd, (1, n_items))
            + rng.normal(0, noise_sd, (n_seeds, n_items)))


def coverage(interval, n_seeds=5, n_items=60, trials=200, **sim) -> float:
    """How often ``interval(scores) -> (lo, hi)`` covers the true mean of simulated designs."""
    rng = np.random.default_rng(7)
    hits = 0
    for k in range(trials):
        lo, hi = interval(_simulated(rng, n_seeds, n_items, **sim), k)
        hits += lo <= 0.5 <= hi
    return hits / trials


def two_stage_interval(scores, k):
    e = stats.two_stage(scores, n_boot=400, seed=k)
    return e.ci_low, e.ci_high


def runs_ignored_interval(scores, k):
    """The same machinery with the training stage dropped: what an item-only interval assumes."""
    e = stats.two_stage(scores, n_boot=400, seed=k, resample_runs=False)
    return e.ci_low, e.ci_high


def item_only_interval(scores, k):
    e = stats.two_stage(scores, n_boot=400, seed=k)
    return e.item_ci_low, e.item_ci_high


def test_two_stage_interval_covers_95_percent_where_the_item_only_interval_falls_short():
    assert 0.91 <= coverage(two_stage_interval) <= 0.99
    assert coverage(item_only_interval) < 0.8
    # With little seed variance both are right: the two-stage interval is not just wider.
    assert 0.91 <= coverage(two_stage_interval, seed_sd=0.0) <= 0.99
    assert 0.88 <= coverage(item_only_interval, seed_sd=0.0) <= 0.99


def test_the_coverage_test_fails_an_interval_that_ignores_seed_variance():
    # Mutation check: the criterion above rejects the interval with the seed stage removed.
    assert not 0.91 <= coverage(runs_ignored_interval) <= 0.99


def test_two_stage_paired_and_shared_designs():
    rng = np.random.default_rng(3)
    item = rng.normal(0, 0.3, (1, 80))
    a = 0.7 + item + rng.normal(0, 0.05, (4, 80))
    b = 0.5 + item + rng.normal(0, 0.05, (4, 80))
    paired = stats.two_stage(a, b, paired_items=True)
    unpaired = stats.two_stage(a, b)
    assert paired.effect == pytest.approx(0.2, abs=0.03) and paired.ci_low > 0.1
    # Pairing over items removes the (large) item variance from the difference.
    assert paired.ci_high - paired.ci_low < 0.5 * (unpaired.ci_high - unpaired.ci_low)
    assert paired.n_items == 80 and unpaired.n_items == 160 and paired.n_seeds == 4
    assert paired.mde == pytest.approx(stats.MDE_Z * paired.se)
    # Items missing in some runs (NaN) are left out of those runs only.
    holes = pd.DataFrame(a).mask(np.eye(4, 80, dtype=bool))
    e = stats.two_stage(holes)
    assert e.effect == pytest.approx(np.nanmean(holes.to_numpy())) and e.n_items == 80
    assert stats.two_stage(pd.DataFrame()).n_items == 0


def test_runs_by_items_averages_repeated_scores():
    df = pd.DataFrame({"seed": [0, 0, 0, 1], "item_id": ["a", "a", "b", "a"], "persona": [0, 0, 0, 0],
                       "em": [1.0, 0.0, 1.0, 1.0]})
    m = stats.runs_by_items(df, "em", "seed", ["item_id", "persona"])
    assert m.shape == (2, 2) and m.loc[0, "a|0"] == 0.5 and np.isnan(m.loc[1, "b|0"])


def test_bounded_interval_stays_in_range_and_keeps_coverage():
    """Accuracies near the ceiling (36 items, 3 runs, like A3 on SmolLM2): the t interval passes 1;
    truncated to [0, 1] (a difference to [-1, 1]) it does not, and covers the true mean exactly as
    often (truncation only drops values the parameter cannot take)."""
    rng = np.random.default_rng(11)
    covered = {"truncated": 0, "raw": 0}
    beyond = 0
    for k in range(200):
        p = np.clip(0.95 + rng.normal(0, 0.03, (3, 1)), 0, 1)
        y = (rng.random((3, 36)) < p).astype(float)
        raw = stats.two_stage(y, n_boot=200, seed=k)
        cut = stats.two_stage(y, n_boot=200, seed=k, bounds=(0, 1))
        assert 0 <= cut.ci_low <= cut.ci_high <= 1 and cut.effect == raw.effect
        beyond += raw.ci_high > 1
        covered["raw"] += raw.ci_low <= 0.95 <= raw.ci_high
        covered["truncated"] += cut.ci_low <= 0.95 <= cut.ci_high
    assert beyond > 20  # the mutation: without bounds the interval leaves the parameter's range
    assert covered["truncated"] == covered["raw"] and 0.88 <= covered["truncated"] / 200 <= 0.99
    # A difference of accuracies: [-1, 1]. First hop all right, 2-hop mostly wrong.
    first, second = np.ones((3, 36)), (rng.random((3, 36)) < 0.05).astype(float)
    d = stats.two_stage(first, second, paired_items=True, shared_runs=True, bounds=(0, 1))
    assert -1 <= d.ci_low <= d.ci_high <= 1 and (d.mean_a, d.mean_b) == (1.0, second.mean())
    assert stats.two_stage(first, second, paired_items=True, shared_runs=True).ci_high > 1
    with pytest.raises(ValueError, match=r"outside the stated bounds \(0, 1\)"):
        stats.two_stage(first * 2, bounds=(0, 1))


def _with_bases(rng, n_bases=4, runs_per_base=3, n_items=60, base_sd=0.12, run_sd=0.03):
    """Runs finetuned from several pretrained bases: a base effect shared by its runs, then run, item
    and noise effects (the tiny track's design when pretraining is a level of it)."""
    base = np.repeat(rng.normal(0, base_sd, n_bases), runs_per_base)[:, None]
    n = n_bases * runs_per_base
    y = 0.5 + base + rng.normal(0, run_sd, (n, 1)) + rng.normal(0, 0.2, (1, n_items)) + rng.normal(0, 0.1, (n, n_items))
    return pd.DataFrame(y), {r: r // runs_per_base for r in range(n)}


def _base_coverage(use_bases: bool, trials: int = 200) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for k in range(trials):
        y, bases = _with_bases(rng)
        e = stats.two_stage(y, n_boot=400, seed=k, bases=bases if use_bases else None)
        hits += e.ci_low <= 0.5 <= e.ci_high
    return hits / trials


def test_resampling_base_models_covers_a_base_variance_component():
    assert 0.91 <= _base_coverage(True) <= 0.99
    y, bases = _with_bases(np.random.default_rng(1))
    e = stats.two_stage(y, bases=bases)
    assert e.n_bases == 4 and 0.5 < e.base_share <= 1.0  # the base draw dominates this design's variance
    assert stats.two_stage(y).n_bases == 0
    with pytest.raises(ValueError, match=r"runs \[11\] have no base"):
        stats.two_stage(y, bases={r: 0 for r in range(11)})


def test_the_base_coverage_test_fails_when_runs_are_resampled_as_independent():
    # Mutation check: base resampling switched off (runs of one base treated as independent draws).
    assert not 0.91 <= _base_coverage(False) <= 0.99


def test_bases_of_maps_runs_to_their_base_only_when_several_bases_are_pooled():
    df = pd.DataFrame({"seed": [0, 0, 1, 2, 3], "pretrain_seed": [0, 0, 1, 2, 0], "em": 1.0})
    assert stats.bases_of(df) == {0: 0, 1: 1, 2: 2, 3: 0}
    assert stats.bases_of(df[df.pretrain_seed == 0]) is None  # one base: the runs are the only training draw
    assert stats.bases_of(df.drop(columns="pretrain_seed")) is None
    with pytest.raises(ValueError, match=r"runs \[0\] appear under several bases"):
        stats.bases_of(df.assign(pretrain_seed=[0, 1, 1, 2, 0]))
