"""The claims table: one row per claim (A1-A5, B1-B3) and track, with a verdict computed from the
effect's 95% interval by a stated rule, never typed in.

Rules (effects are signed so that the paper's claim predicts a positive value):
- ``directional`` (A1, A2, A3, B1): reproduced if the interval lies above 0; not reproduced if the
  point estimate is 0 or below; mixed if it is positive but the interval includes 0.
- ``non_inferior`` (B2, "matches or beats"): reproduced if the interval's lower end is above
  -margin; not reproduced if the whole interval lies below 0; mixed otherwise.
- ``equivalent`` (A5, "not fundamentally harder"): reproduced if the interval lies within
  +/- margin; not reproduced if it lies wholly outside it; mixed otherwise.
- ``consistent`` (A4, a claim over several controlled levels): reproduced if every level
  reproduces, not reproduced if none does, mixed otherwise.
- ``both`` (B3, attention and generic answers): reproduced if both parts reproduce, not reproduced if
  neither is even in the claimed direction, mixed otherwise.

Usage: ``findings.write(pd.concat([claims_a, claims_b]), profile)``.
"""

from __future__ import annotations

import math

import pandas as pd

from . import paths
from .provenance import save_table

CLAIMS = {
    "A1": "QA-format training data generalizes knowledge much better than documents carrying the same facts",
    "A2": "numerical information is harder for finetuning to retain than categorical information",
    "A3": "models struggle to use finetuned knowledge in multi-step reasoning, even with similar multi-step "
          "training examples",
    "A4": "A1 holds after controlling for augmentation (paraphrases per fact) and information volume",
    "A5": "teaching a new real-world fact is not fundamentally harder than teaching the model a persona fact",
    "B1": "QA-finetuning on lesser-known facts gives worse factuality than on well-known facts (5-10 points)",
    "B2": "finetuning on the better-known half matches or beats finetuning on the whole set",
    "B3": "finetuning on lesser-known facts moves attention off the subject, so the model falls back on a "
          "generic answer",
}
COLUMNS = ["claim", "track", "statement", "metric", "effect", "ci_low", "ci_high", "n_items", "n_seeds", "verdict"]
VERDICTS = ("reproduced", "not reproduced", "mixed")
B2_MARGIN = 0.03   # "matches": within 3 points (the paper's gaps are 5-10 points)
A5_MARGIN = 0.10   # "not fundamentally harder": within 10 points (the motivating gap was 86 points)


def _nan(*xs) -> bool:
    return any(x is None or (isinstance(x, float) and math.isnan(x)) for x in xs)


def directional(effect: float, lo: float, hi: float) -> str:
    if _nan(effect, lo, hi):
        return "not reproduced"
    if lo > 0:
        return "reproduced"
    return "not reproduced" if effect <= 0 else "mixed"


def non_inferior(effect: float, lo: float, hi: float, margin: float) -> str:
    if _nan(effect, lo, hi):
        return "not reproduced"
    if lo > -margin:
        return "reproduced"
    return "not reproduced" if hi < 0 else "mixed"


def equivalent(effect: float, lo: float, hi: float, margin: float) -> str:
    if _nan(effect, lo, hi):
        return "not reproduced"
    if -margin < lo and hi < margin:
        return "reproduced"
    return "not reproduced" if lo >= margin or hi <= -margin else "mixed"


def consistent(verdicts: list[str]) -> str:
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if not any(v == "reproduced" for v in verdicts):
        return "not reproduced"
    return "mixed"


def both(first: str, second: str) -> str:
    if first == second == "reproduced":
        return "reproduced"
    if first == second == "not reproduced":
        return "not reproduced"
    return "mixed"


def row(claim: str, track: str, metric: str, effect, lo, hi, n_items: int, n_seeds: int, verdict: str) -> dict:
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; claims: {', '.join(CLAIMS)}")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return {"claim": claim, "track": track, "statement": CLAIMS[claim], "metric": metric, "effect": effect,
            "ci_low": lo, "ci_high": hi, "n_items": int(n_items), "n_seeds": int(n_seeds), "verdict": verdict}


def markdown(table: pd.DataFrame) -> str:
    """The claims table as Markdown (effects in points of accuracy or attention share)."""
    lines = ["| claim | track | effect [95% CI] | verdict | metric | items | seeds |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        ci = "n/a" if _nan(r.effect) else f"{r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        lines.append(f"| {r.claim} | {r.track} | {ci} | **{r.verdict}** | {r.metric} | {r.n_items} | {r.n_seeds} |")
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, profile: str) -> pd.DataFrame:
    """``findings.csv`` and ``findings.md`` in the profile's results folder, rows in claim order."""
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"findings table lacks columns {missing}")
    table = table[COLUMNS].sort_values(["claim", "track"], key=lambda s: s.map(str)).reset_index(drop=True)
    out = paths.results_dir(profile)
    save_table(table, out / "findings.csv", profile=profile, made_from=["study_a_claims.csv", "study_b_claims.csv"])
    (out / "findings.md").write_text(markdown(table))
    return table


def readme_section(table: pd.DataFrame, start: str, end: str, readme_text: str) -> str:
    """``readme_text`` with the part between the ``start`` and ``end`` marker lines replaced by the table."""
    if start not in readme_text or end not in readme_text:
        raise ValueError(f"README lacks the markers {start!r} / {end!r} around the findings table")
    head, rest = readme_text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{markdown(table)}{end}{tail}"


def report(table: pd.DataFrame) -> str:
    """For each claim and track: the paper's statement, our effect with its interval, and the verdict."""
    lines = []
    for claim, g in table.groupby("claim", sort=True):
        lines.append(f"{claim}. Paper: {CLAIMS[claim]}.")
        for r in g.itertuples():
            effect = "no items" if _nan(r.effect) else f"{r.effect:+.3f} [95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            lines.append(f"    {r.track:8s} {r.verdict.upper():15s} {effect}; {r.metric} "
                         f"(n={r.n_items} items, {r.n_seeds} seeds)")
    return "\n".join(lines)
