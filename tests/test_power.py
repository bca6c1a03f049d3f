"""The power table: variance components from a claims row, and plans that reach the target MDE."""

import math

import numpy as np
import pandas as pd
import pytest

from knowinject.studies import power

from knowinject import stats


def test_components_recover_the_two_stage_parts_of_simulated_data():
    # Runs x items scores with a known seed component and item component; the split read back from the
    # saved columns (MDE and item-only interval) matches the split of the variances that made the data.
    rng = np.random.default_rng(0)
    n_runs, n_items = 8, 400
    run = rng.normal(0, 0.10, (n_runs, 1))
    item = rng.normal(0, 1.0, (1, n_items))
    scores = pd.DataFrame(0.5 + run + item + rng.normal(0, 0.2, (n_runs, n_items)))
    e = stats.two_stage(scores)
    v_runs, v_items = power.components(e.mde / stats.MDE_Z, e.item_ci_low, e.item_ci_high)
    assert v_runs + v_items == pytest.approx(e.se ** 2)
    assert v_runs == pytest.approx(0.10 ** 2 / n_runs, rel=0.8)
    assert v_items == pytest.approx((1.0 ** 2 + 0.2 ** 2 / n_runs) / n_items, rel=0.3)


def test_a_plan_reaches_the_target_and_one_fewer_does_not():
    v_runs, v_items, s, i, target = 4e-3, 1e-3, 3, 60, 0.15
    p = power.plan(v_runs, v_items, s, i, target)
    assert power.projected_mde(v_runs, v_items, s, i, p["seeds_needed"], i) <= target
    assert power.projected_mde(v_runs, v_items, s, i, p["seeds_needed"] - 1, i) > target
    # the items' variance alone is above what the target allows: seeds cannot get there
    p = power.plan(1e-4, 5e-3, 3, 60, 0.15)
    assert p["seeds_needed"] == math.inf
    assert power.projected_mde(1e-4, 5e-3, 3, 60, 3, p["items_needed"]) <= 0.15
    assert power.projected_mde(1e-4, 5e-3, 3, 60, 3, p["items_needed"] - 1) > 0.15
    # growing both by the factor reaches the target exactly
    k = power.plan(1e-4, 5e-3, 3, 60, 0.15)["scale_both"]
    assert power.projected_mde(1e-4, 5e-3, 3, 60, 3 * k, 60 * k) == pytest.approx(0.15)
    # a design already at the target needs nothing
    assert power.plan(1e-5, 1e-5, 3, 60, 0.15) == {"seeds_needed": 3, "items_needed": 60, "scale_both": 1.0}


def test_table_prices_the_extra_seeds_of_a_claims_own_cells():
    claims = pd.DataFrame([{"claim": "A4", "track": "tiny", "effect": 0.05, "ci_low": 0.0, "ci_high": 0.1,
                            "item_ci_low": 0.04, "item_ci_high": 0.06, "mde": 0.2, "n_seeds": 5, "n_items": 40}])
    t = power.table(claims, {("A", "tiny"): 60.0}, {"tiny": {"quantities": [6, 12, 24], "augmentations": [1, 2]}},
                    workers=2)
    r = t.iloc[0]
    assert r.paper_effect == power.PAPER_EFFECT["A4"]
    assert r.runs_per_seed == 8                      # QA and documents at 4 quantity / augmentation levels
    assert r.seeds_in_plan == r.seeds_needed and r.extra_runs == (r.seeds_needed - 5) * 8
    assert r.extra_minutes == pytest.approx(r.extra_runs * 60 / 60 / 2)
    assert r.seed_share > 0.9 and not r.mde_at_target
    assert "| A4 | tiny | 0.10 |" in power.markdown(t)
    # items' variance above the target: the plan grows seeds and items together
    claims.loc[0, ["item_ci_low", "item_ci_high"]] = [-0.2, 0.2]
    r = power.table(claims, {("A", "tiny"): 60.0}, {"tiny": {}}).iloc[0]
    assert r.seeds_needed == math.inf and r.seeds_in_plan == math.ceil(r.scale_both * 5) and r.extra_runs > 0


def test_the_base_models_share_of_variance_is_not_bought_down_by_seeds():
    """Seed s finetunes base s mod K: more seeds leave the base part of the variance where it is, so a
    target below it is out of reach of seeds (and items), and one above it needs more seeds than the same
    training variance with no base part."""
    budget = (0.05 / power.MDE_Z) ** 2
    assert power.plan(0.2 * budget, 0.2 * budget, 5, 100, 0.05, v_base=budget)["seeds_needed"] == math.inf
    with_base = power.plan(0.4 * budget, 0.4 * budget, 5, 100, 0.05, v_base=0.3 * budget)
    without = power.plan(0.7 * budget, 0.4 * budget, 5, 100, 0.05)
    assert with_base["seeds_needed"] > without["seeds_needed"]
