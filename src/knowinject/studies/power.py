"""The power table: for each claim and track, how many seeds or test items would bring the design's
minimum detectable effect (MDE) down to the effect the paper reports, and what the extra runs cost.

The two-stage variance of an effect is a training part and a test-set part, ``se**2 = v_runs + v_items``
(:func:`knowinject.stats.two_stage`). Each shrinks with its own sample: ``v_runs`` with the seeds (runs
per condition), ``v_items`` with the test items. From the saved claims table they are recovered as

- ``v_items`` = the variance of the item-only interval (runs averaged first, then items resampled):
  its half-width over z(0.975), squared;
- ``v_runs`` = ``se**2 - v_items`` (0 if negative: the item-only interval was the wider one).

and the MDE of a design with ``S'`` seeds and ``I'`` items is projected as
``MDE_Z * sqrt(v_base + v_runs * S / S' + v_items * I / I')``. The projection holds the per-unit
variances fixed, which is what the bootstrap measured, and a component cannot shrink below what its
sample allows: a design whose items alone give an MDE above the target can reach it only with more
items, whatever the seeds. ``v_base`` is the part of the training variance that comes from the
pretrained bases where the claim resampled several (the tiny track: ``base_share`` of the claims
table, times ``se**2``). Seed s finetunes base s mod K, so more seeds at the same K bases do not shrink
it: only more bases (one pretraining each) would, and a plan that needs them says "seeds cannot".

Usage: ``power.table(findings_table, run_seconds, settings)``; notebook 06 writes ``power.csv``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from knowinject.stats import MDE_Z

Z95 = 1.959964
# The effect each claim's design should be able to see. Study B's abstract gives B1 as 5-10 points (the
# smaller end is the target) and B2's margin is the 3 points of findings.B2_MARGIN. Study A publishes no
# per-cell numbers (RESEARCH.md): "far better", "harder", "struggle" are read as at least 10 points, A5's
# equivalence margin is 10 points, and B3's attention share and its subject-swap answer rate are asked to
# move 5 points (its paper gives a proof, not a size).
PAPER_EFFECT = {"A1": 0.10, "A2": 0.10, "A3": 0.10, "A4": 0.10, "A5": 0.10, "B1": 0.05, "B2": 0.03, "B3": 0.05,
                "B3-swap": 0.05}
MAX_SEEDS = 1000   # beyond this a plan is reported as unreachable by seeds alone


def components(se: float, item_ci_low: float, item_ci_high: float) -> tuple[float, float]:
    """(v_runs, v_items) of a two-stage standard error, the item part read from the item-only interval."""
    if any(isinstance(x, float) and math.isnan(x) for x in (se, item_ci_low, item_ci_high)):
        return np.nan, np.nan
    v_items = ((item_ci_high - item_ci_low) / (2 * Z95)) ** 2
    return max(se ** 2 - v_items, 0.0), min(v_items, se ** 2)


def projected_mde(v_runs: float, v_items: float, n_seeds: int, n_items: int, seeds: float, items: float) -> float:
    """The MDE with ``seeds`` seeds and ``items`` items, from the variances measured at ``n_seeds`` / ``n_items``."""
    return MDE_Z * math.sqrt(v_runs * n_seeds / seeds + v_items * n_items / items)


def plan(v_runs: float, v_items: float, n_seeds: int, n_items: int, target: float, v_base: float = 0.0) -> dict:
    """Seeds needed at today's items, items needed at today's seeds, and the factor by which both would
    have to grow together, for the MDE to reach ``target``. ``inf`` where that lever alone cannot.
    ``v_base``: variance from the pretrained bases, which neither seeds nor items shrink."""
    if any(math.isnan(x) for x in (v_runs, v_items)) or n_seeds < 1 or n_items < 1:
        return {"seeds_needed": np.nan, "items_needed": np.nan, "scale_both": np.nan}
    budget = (target / MDE_Z) ** 2 - v_base  # the variance the target leaves to runs and items
    if v_runs + v_items <= budget:
        return {"seeds_needed": n_seeds, "items_needed": n_items, "scale_both": 1.0}
    seeds = math.ceil(v_runs * n_seeds / (budget - v_items)) if budget > v_items else math.inf
    items = math.ceil(v_items * n_items / (budget - v_runs)) if budget > v_runs else math.inf
    return {"seeds_needed": seeds if seeds <= MAX_SEEDS else math.inf, "items_needed": items,
            "scale_both": (v_runs + v_items) / budget if budget > 0 else math.inf}


def runs_per_seed(claim: str, study_a: dict) -> int:
    """Finetunes one more seed of a claim's own cells costs, from the track's study settings (a profile's
    ``study_a_<track>`` stage): A1 QA and documents; A2 one QA run (both fact types); A3 the 2-hop cell;
    A4 QA and documents at every quantity and augmentation level; A5 each persona and the events; B1-B3
    two finetunes (the known half and the unknown half or the whole pool)."""
    if claim == "A1":
        return 2
    if claim in ("A2", "A3"):
        return 1
    if claim == "A4":
        levels = len(study_a.get("quantities", [])) + len(study_a.get("augmentations", [])) - 1
        return 2 * max(levels, 1)
    if claim == "A5":
        return int(study_a.get("n_personas", 2)) + 1
    return 2


def table(claims: pd.DataFrame, run_seconds: dict, settings: dict, workers: int = 2) -> pd.DataFrame:
    """One row per claim and track of the main design (``claims``: findings.csv).

    ``run_seconds``: {(study, track): seconds one finetune took in the grid (its wall time over the runs
    that shared its steps)}; ``settings``: {track: the profile's ``study_a_<track>`` stage}. The extra
    minutes are the added finetunes of the cheapest plan (``seeds_in_plan`` seeds: seeds alone where they
    can reach the target, else seeds and items grown together) at that rate over ``workers`` workers."""
    rows = []
    for r in claims.itertuples():
        if r.claim not in PAPER_EFFECT:  # R0 reads the instrument; the paper gives it no effect to be powered for
            continue
        target = PAPER_EFFECT[r.claim]
        v_runs, v_items = components(float(r.mde) / MDE_Z, float(r.item_ci_low), float(r.item_ci_high))
        share = float(getattr(r, "base_share", np.nan))
        v_base = min(share * (float(r.mde) / MDE_Z) ** 2, v_runs) if not np.isnan(share) else 0.0
        n_seeds, n_items = int(r.n_seeds), int(r.n_items)
        p = plan(v_runs - v_base, v_items, n_seeds, n_items, target, v_base)
        study = r.claim[0]
        per_seed = runs_per_seed(r.claim, settings.get(r.track, {}))
        secs = run_seconds.get((study, r.track), np.nan)
        # The cheapest plan in finetunes: seeds alone where they can reach the target, else seeds and items
        # grown together by scale_both (items cost evaluation only in Study B; in Study A they come with runs
        # of more people or of fresh draws, which this price leaves out).
        if np.isnan(p["scale_both"]) or p["scale_both"] == math.inf:
            seeds_plan = np.nan
        elif np.isfinite(p["seeds_needed"]):
            seeds_plan = p["seeds_needed"]
        else:
            seeds_plan = math.ceil(p["scale_both"] * n_seeds - 1e-9)
        extra_runs = (seeds_plan - n_seeds) * per_seed
        minutes = extra_runs * secs / 60 / workers if not np.isnan(secs) else np.nan
        total = v_runs + v_items
        rows.append({"claim": r.claim, "track": r.track, "paper_effect": target, "effect": r.effect,
                     "mde": r.mde, "n_seeds": n_seeds, "n_items": n_items,
                     "seed_share": v_runs / total if total > 0 else np.nan,  # bases included
                     "base_share": v_base / total if total > 0 and not np.isnan(share) else np.nan,
                     "item_share": v_items / total if total > 0 else np.nan,
                     "seeds_needed": p["seeds_needed"], "items_needed": p["items_needed"],
                     "scale_both": p["scale_both"], "seeds_in_plan": seeds_plan, "runs_per_seed": per_seed,
                     "extra_runs": extra_runs,
                     "extra_minutes": minutes,
                     "mde_at_target": bool(r.mde <= target) if not np.isnan(r.mde) else False})
    return pd.DataFrame(rows)



def _n(v) -> str:
    return "n/a" if pd.isna(v) else ("more than " + str(MAX_SEEDS) if v == math.inf else f"{int(v)}")


def markdown(table: pd.DataFrame) -> str:
    """The power table as Markdown: what the design sees today and what would bring its MDE to the target."""
    lines = ["| claim | track | target | MDE now | seeds, items now | variance from seeds | seeds needed (items as now) | "
             "items needed (seeds as now) | both grown by | cheapest plan: seeds, extra finetunes (minutes) |",
             "|" + "---|" * 10]
    for r in table.itertuples():
        if pd.isna(r.extra_runs):
            extra = "n/a"
        elif r.extra_runs == 0:
            extra = "as now"
        else:
            minutes = "" if pd.isna(r.extra_minutes) else f" ({r.extra_minutes:.0f} min)"
            extra = f"{int(r.seeds_in_plan)} seeds, +{int(r.extra_runs)}{minutes}"
        seeds = "seeds cannot" if r.seeds_needed == math.inf else _n(r.seeds_needed)
        items = "items cannot" if r.items_needed == math.inf else _n(r.items_needed)
        share = "n/a" if pd.isna(r.seed_share) else f"{r.seed_share:.0%}"
        if "base_share" in table and not pd.isna(r.base_share):
            share += f" ({r.base_share:.0%} bases)"
        both = ("n/a" if pd.isna(r.scale_both) else "more bases needed" if r.scale_both == math.inf
                else f"x{r.scale_both:.1f}")
        lines.append(f"| {r.claim} | {r.track} | {r.paper_effect:.2f} | {r.mde:.3f} | {r.n_seeds}, {r.n_items} | {share} | "
                     f"{seeds} | {items} | {both} | {extra} |")
    return "\n".join(lines) + "\n"
