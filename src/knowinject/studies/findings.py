"""The claims table: one row per claim (A1-A5, B1-B3) and track, with a verdict computed from the
effect's 95% interval by a stated rule, never typed in, and the same claim re-measured on data the
first design never saw (the replication).

Every interval is the two-stage one (:func:`stats.two_stage`: training runs and test items
resampled); the item-only interval stands beside it for comparison, and the minimum detectable
effect (80% power, two-sided 5%) says how large an effect the design could have seen.

Rules (effects are signed so that the paper's claim predicts a positive value). A rule's boundary
is 0 for a direction, -margin for non-inferiority, +/-margin for equivalence; an interval that
straddles the boundary is **undecided**:
- ``directional`` (A1, A2, A3, B1): reproduced if the interval lies above 0; not reproduced if it
  lies at or below 0; undecided otherwise.
- ``non_inferior`` (B2, "matches or beats"): reproduced if the interval lies above -margin; not
  reproduced if it lies at or below -margin; undecided otherwise.
- ``equivalent`` (A5, "not fundamentally harder"): reproduced if the interval lies within
  +/- margin; not reproduced if it lies wholly outside; undecided otherwise.
- ``consistent`` (A4, one claim over several controlled levels) and ``both`` (B3, attention and
  generic answers): reproduced if every part is, not reproduced if every part is not; mixed if
  some parts are reproduced and others not; undecided otherwise.

Before any rule, :func:`judge` asks whether the design could see an effect at all. It is
**unmeasurable** (the reason in the ``reason`` column) when both conditions sit within
``MEASURE_MARGIN`` of 100% (ceiling) or of 0% (floor), or when the two-stage standard error is 0
(zero variance: every run scored every item alike). A zero-width interval at 0 is then not evidence
against the claim; the instrument could not move. In ``consistent`` / ``both`` an unmeasurable part
counts as undecided, and the whole is unmeasurable only when every part is.

Usage: ``findings.write(findings.combine(claims), profile)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from knowinject.core import paths
from knowinject.core.provenance import save_table

from knowinject.stats import Effect

CLAIMS = {
    "A1": "QA-format training data generalizes knowledge much better than documents carrying the same facts",
    "A2": "numerical information is harder for finetuning to retain than categorical information",
    "A3": "models struggle to use finetuned knowledge in multi-step reasoning, even with similar multi-step "
          "training examples",
    "A4": "A1 holds after controlling for augmentation (paraphrases per fact) and information volume",
    "A5": "teaching a new real-world fact is not fundamentally harder than teaching the model a persona fact",
    "R0": "finetuning lifts factuality: the regime Study B's claims are about (the whole-pool finetune answers more "
          "held-out test facts than the base model); a reading of the instrument, not a claim of the paper",
    "B1": "QA-finetuning on lesser-known facts gives worse factuality than on well-known facts (5-10 points)",
    "B2": "finetuning on the better-known half matches or beats finetuning on the whole set",
    "B3": "finetuning on lesser-known facts moves attention off the subject, so the model falls back on a "
          "generic answer",
    "B3-swap": "B3, read causally: after finetuning on lesser-known facts the model ignores the subject's name, "
               "so its answer changes less when the subject is swapped for another",
}
# mean_a / mean_b: the two conditions' means, in the order of the metric's "a minus b" (NaN for a
# one-sample effect), so that a row shows when both sat at a ceiling (e.g. 1.000 against 0.994).
COLUMNS = ["claim", "track", "statement", "metric", "effect", "ci_low", "ci_high", "item_ci_low", "item_ci_high",
           "n_items", "n_seeds", "n_bases", "base_share", "mde", "verdict", "reason", "mean_a", "mean_b",
           "replication_effect", "replication_ci_low", "replication_ci_high", "replication_n_items",
           "replication_n_seeds", "replication_n_bases", "replication_verdict", "replication_reason",
           "replication_mean_a", "replication_mean_b", "paper_effect", "paper_low", "paper_high"]
CLAIM_COLUMNS = ["claim", "track", "design", "statement", "metric", "effect", "ci_low", "ci_high", "item_ci_low",
                 "item_ci_high", "n_items", "n_seeds", "n_bases", "base_share", "mde", "verdict", "reason", "mean_a",
                 "mean_b"]
VERDICTS = ("reproduced", "not reproduced", "undecided", "mixed", "unmeasurable", "lifts", "lowers")
REASONS = ("ceiling", "floor", "zero variance", "chance")
# R0 is a reading of the instrument, whose direction is named (lifts / lowers) rather than reproduced.
REGIME = {"reproduced": "lifts", "not reproduced": "lowers"}
# Both conditions within 2 points of 100% (or of 0%): the largest effect the design could then show is
# 2 points, below the smallest effect any claim is about (B2's 3-point margin; B1's 5-10 points).
MEASURE_MARGIN = 0.02
DESIGNS = ("main", "replication")
TRACK_ORDER = ("smollm2", "smollm2-cloze", "smollm2-mc", "gemma3", "gemma3-cloze", "gemma3-mc", "tiny", "one-layer")
B2_MARGIN = 0.03   # "matches": within 3 points (the paper's gaps are 5-10 points)
A5_MARGIN = 0.10   # "not fundamentally harder": within 10 points (the motivating gap was 86 points)
# What the paper states of a claim's size, where it states one (the rest state a direction only): the text
# the claims table shows, and the interval [low, high] a figure draws as the reference (NaN: open-ended).
PAPER = {"B1": ("+0.05 to +0.10", 0.05, 0.10),
         "B2": (f"margin -{B2_MARGIN:.2f}", -B2_MARGIN, math.nan),
         "A5": (f"margin +/-{A5_MARGIN:.2f}", -A5_MARGIN, A5_MARGIN)}
PAPER_COLUMNS = ["paper_effect", "paper_low", "paper_high"]


def _nan(*xs) -> bool:
    return any(x is None or (isinstance(x, float) and math.isnan(x)) for x in xs)


class Verdict(NamedTuple):
    """A verdict and, for ``unmeasurable`` (or a composite with unmeasurable parts), why."""
    verdict: str
    reason: str = ""


def unmeasurable(e: Effect) -> str:
    """Why the design could not measure ``e`` ("ceiling", "floor", "zero variance"), or "" if it could.
    Ceiling and floor need both conditions' means (a difference of two accuracies)."""
    if _nan(e.effect):
        return ""
    if not _nan(e.mean_a, e.mean_b):
        if min(e.mean_a, e.mean_b) >= 1 - MEASURE_MARGIN:
            return "ceiling"
        if max(e.mean_a, e.mean_b) <= MEASURE_MARGIN:
            return "floor"
    return "zero variance" if not e.se > 0 else ""


def judge(e: Effect, rule, *args) -> Verdict:
    """``rule`` (directional, non_inferior, equivalent) applied to ``e``'s interval, unless the design
    could not measure it: then ``unmeasurable`` with the reason."""
    reason = unmeasurable(e)
    return Verdict("unmeasurable", reason) if reason else Verdict(rule(e.ci_low, e.ci_high, *args))


def regime(e: Effect) -> Verdict:
    """R0's reading: ``lifts`` if the whole-pool finetune minus the base model lies above 0, ``lowers`` if at or
    below 0, else undecided (or unmeasurable, as :func:`judge` says)."""
    v = judge(e, directional)
    return Verdict(REGIME.get(v.verdict, v.verdict), v.reason)


def includes(lo: float, hi: float, value: float) -> bool:
    return not _nan(lo, hi) and lo <= value <= hi


def at_chance(accuracies: list[tuple[float, float]], chance: float) -> bool:
    """Whether every accuracy a multiple-choice claim reads (the base model's and each compared finetune's
    95% interval, ``(low, high)``) includes the chance rate (1 / the number of options): the instrument
    then never left chance, and no difference between the finetunes is evidence about the claim."""
    return bool(accuracies) and all(includes(lo, hi, chance) for lo, hi in accuracies)


# The conditions whose accuracy each Study B reading compares, beside the base model's: what must leave chance
# for a multiple-choice reading to say anything (B3 and B3-swap are judged by the same accuracies).
COMPARED = {"R0": ("whole",), "B1": ("known", "unknown"), "B2": ("known", "whole"), "B3": ("known", "unknown"),
            "B3-swap": ("known", "unknown")}


def mark_chance(claims: pd.DataFrame, accuracy: pd.DataFrame, track: str, chance: float) -> pd.DataFrame:
    """``claims`` with every main-design Study B row of ``track`` whose base model and compared finetunes all have
    accuracy intervals that include ``chance`` (:func:`at_chance`) judged ``unmeasurable (chance)``.
    ``accuracy``: Study B's accuracy table (``study_b_accuracy.csv``: zero-shot exact match on all test facts,
    the base model at epoch 0 and the finetunes at their last checkpoint are read)."""
    a = accuracy[(accuracy.track == track) & (accuracy.metric == "em") & (accuracy.prompt == "zero-shot")
                 & (accuracy.bucket == "all")]
    last = a[a.condition != "base"].epoch.max()
    ci = {r.condition: (r.ci_low, r.ci_high) for r in a[(a.condition == "base") | (a.epoch == last)].itertuples()}
    out = claims.copy()
    design = out.design if "design" in out else pd.Series("main", index=out.index)
    for i, r in out[(out.track == track) & (design == "main") & out.claim.isin(list(COMPARED))].iterrows():
        conds = ("base", *COMPARED[r.claim])
        if all(c in ci for c in conds) and at_chance([ci[c] for c in conds], chance):
            out.loc[i, ["verdict", "reason"]] = ["unmeasurable", "chance"]
    return out


def directional(lo: float, hi: float) -> str:
    if _nan(lo, hi):
        return "undecided"
    if lo > 0:
        return "reproduced"
    return "not reproduced" if hi <= 0 else "undecided"


def non_inferior(lo: float, hi: float, margin: float) -> str:
    if _nan(lo, hi):
        return "undecided"
    if lo > -margin:
        return "reproduced"
    return "not reproduced" if hi <= -margin else "undecided"


def equivalent(lo: float, hi: float, margin: float) -> str:
    if _nan(lo, hi):
        return "undecided"
    if -margin < lo and hi < margin:
        return "reproduced"
    return "not reproduced" if lo >= margin or hi <= -margin else "undecided"


def consistent(parts: list, names: list[str] | None = None) -> Verdict:
    """A verdict over several parts (A4's levels, B3's two measures), each a :class:`Verdict` or a
    verdict string; ``names`` label the parts in the reason. An unmeasurable part counts as
    undecided; the whole is unmeasurable only when every part is."""
    parts = [p if isinstance(p, Verdict) else Verdict(p) for p in parts]
    names = names or [f"part {i + 1}" for i in range(len(parts))]
    lost = [(n, p.reason) for n, p in zip(names, parts) if p.verdict == "unmeasurable"]
    reason = "; ".join(f"{n}: {r}" for n, r in lost)
    if parts and len(lost) == len(parts):
        return Verdict("unmeasurable", reason)
    verdicts = ["undecided" if p.verdict == "unmeasurable" else p.verdict for p in parts]
    if verdicts and all(v == "reproduced" for v in verdicts):
        return Verdict("reproduced")
    if verdicts and all(v == "not reproduced" for v in verdicts):
        return Verdict("not reproduced")
    if "reproduced" in verdicts and "not reproduced" in verdicts:
        return Verdict("mixed", reason)
    return Verdict("undecided", reason)


def both(first, second, names: tuple[str, str] = ("attention", "generic answers")) -> Verdict:
    return consistent([first, second], list(names))


def row(claim: str, track: str, metric: str, effect: Effect, verdict: Verdict | str, design: str = "main",
        n_bases: int | None = None) -> dict:
    """One claim's row. A row whose own effect the design could not measure never carries reproduced
    or not reproduced (:func:`judge` and :func:`consistent` see to that; this guards it).

    ``n_bases``: the pretrained base models the runs finetuned, and whose draw the interval includes: the
    effect's own count where it resampled bases (the tiny track's K bases), else 1 (one pretrained model,
    SmolLM2's), unless given (the one-layer model pretrains a new world with every seed). ``base_share``:
    the share of the effect's variance that came from the bases (NaN where they were not resampled)."""
    verdict, reason = verdict if isinstance(verdict, Verdict) else (verdict, "")
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; claims: {', '.join(CLAIMS)}")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    if verdict in ("reproduced", "not reproduced", *REGIME.values()) and unmeasurable(effect):
        raise ValueError(f"{claim} {track}: verdict {verdict!r} on an effect the design could not measure "
                         f"({unmeasurable(effect)}); judge it with findings.judge")
    e = effect
    return {"claim": claim, "track": track, "design": design, "statement": CLAIMS[claim], "metric": metric,
            "effect": e.effect, "ci_low": e.ci_low, "ci_high": e.ci_high, "item_ci_low": e.item_ci_low,
            "item_ci_high": e.item_ci_high, "n_items": int(e.n_items), "n_seeds": int(e.n_seeds),
            "n_bases": int(n_bases if n_bases is not None else max(e.n_bases, 1)), "base_share": e.base_share,
            "mde": e.mde,
            "verdict": verdict, "reason": reason, "mean_a": e.mean_a, "mean_b": e.mean_b}


def combine(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and track: the main design's columns, and the replication's effect,
    interval, size and verdict beside them (NaN where a claim was not replicated)."""
    # Claims tables written before a verdict could be unmeasurable have no reason and no condition means,
    # and those written before the tiny track sampled its bases no base count: their rows are read as
    # they were judged then (no reason, means not recorded, one base).
    claims = claims.assign(**{c: claims[c] if c in claims else v for c, v in
                              (("reason", ""), ("mean_a", math.nan), ("mean_b", math.nan), ("n_bases", 1),
                               ("base_share", math.nan))})
    main = claims[claims.design == "main"].drop(columns="design")
    rep = claims[claims.design == "replication"][["claim", "track", "effect", "ci_low", "ci_high", "n_items",
                                                  "n_seeds", "n_bases", "verdict", "reason", "mean_a", "mean_b"]]
    rep = rep.rename(columns={c: f"replication_{c}" for c in rep.columns if c not in ("claim", "track")})
    out = main.merge(rep, on=["claim", "track"], how="left")
    paper = [PAPER.get(c, ("", math.nan, math.nan)) for c in out.claim]
    out = out.assign(**{name: [p[i] for p in paper] for i, name in enumerate(PAPER_COLUMNS)})
    # A claim measured without a replication (Study B in multiple choice) leaves its counts empty: kept as
    # integers, not turned into floats for every row.
    counts = ["replication_n_items", "replication_n_seeds", "replication_n_bases"]
    return out.astype({c: "Int64" for c in counts})


def _ci(effect, lo, hi) -> str:
    return "n/a" if _nan(effect) else f"{effect:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _means(a, b) -> str:
    if _nan(a):
        return "n/a"
    return f"{a:.3f}" if _nan(b) else f"{a:.3f} vs {b:.3f}"


def _verdict(verdict, reason, bold: bool = False) -> str:
    """A verdict with its reason in parentheses where it has one (CSV round trips turn "" into NaN)."""
    if not isinstance(verdict, str):
        return "not run"
    v = f"**{verdict}**" if bold else verdict
    return f"{v} ({reason})" if isinstance(reason, str) and reason else v


def _bases(n, share) -> str:
    """How many pretrained bases an interval resampled, and the share of its variance they carry."""
    return str(int(n)) if _nan(share) else f"{int(n)} ({share:.0%} of variance)"


def markdown(table: pd.DataFrame) -> str:
    """The claims table as Markdown (effects in points of accuracy or attention share; condition means
    a vs b in the order of the metric's "a minus b")."""
    lines = ["| claim | track | effect [95% CI, seeds and items] | condition means | item-only CI | MDE | verdict | "
             "replication [95% CI] | replication verdict | items | seeds | bases | metric |", "|" + "---|" * 13]
    for r in table.itertuples():
        item = "n/a" if _nan(r.item_ci_low) else f"[{r.item_ci_low:+.3f}, {r.item_ci_high:+.3f}]"
        mde = "n/a" if _nan(r.mde) else f"{r.mde:.3f}"
        rep = _ci(r.replication_effect, r.replication_ci_low, r.replication_ci_high)
        lines.append(f"| {r.claim} | {r.track} | {_ci(r.effect, r.ci_low, r.ci_high)} | {_means(r.mean_a, r.mean_b)} | "
                     f"{item} | {mde} | {_verdict(r.verdict, r.reason, bold=True)} | {rep} | "
                     f"{_verdict(r.replication_verdict, r.replication_reason)} | {r.n_items} | {r.n_seeds} | "
                     f"{_bases(r.n_bases, r.base_share)} | {r.metric} |")
    return "\n".join(lines) + "\n"


def compact(table: pd.DataFrame) -> str:
    """The front page's claims table, one line a row: claim, track, effect [95% CI], verdict (the replication's
    beside it), the paper's effect. Every other column stays in ``findings.csv`` / ``findings.md``."""
    lines = ["| claim | track | effect [95% CI] | verdict | replication | paper |", "|" + "---|" * 6]
    for r in table.itertuples():
        rep = "-" if not isinstance(r.replication_verdict, str) else (
            f"{_ci(r.replication_effect, r.replication_ci_low, r.replication_ci_high)} "
            f"{_verdict(r.replication_verdict, r.replication_reason)}")
        paper = r.paper_effect if isinstance(r.paper_effect, str) and r.paper_effect else "direction"
        lines.append(f"| {r.claim} | {r.track} | {_ci(r.effect, r.ci_low, r.ci_high)} | "
                     f"{_verdict(r.verdict, r.reason, bold=True)} | {rep} | {paper} |")
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, profile: str, model_slug: str | None = None, facts_slug: str | None = None) -> pd.DataFrame:
    """``findings.csv`` and ``findings.md`` in the profile's (and model's, by its slug; and a fact set's of one's
    own, by its slug) results folder, rows in claim order."""
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ValueError(f"findings table lacks columns {missing}")
    order = {t: f"{i}" for i, t in enumerate(TRACK_ORDER)}
    claim_order = {c: f"{i:02d}" for i, c in enumerate(CLAIMS)}  # R0, the instrument's regime, before B1
    table = table[COLUMNS].sort_values(["claim", "track"], key=lambda s: s.map(lambda v: order.get(v, f"9{v}")
                                       if s.name == "track" else claim_order.get(v, str(v)))).reset_index(drop=True)
    out = paths.results_dir(profile, model_slug, facts_slug)
    save_table(table, out / "findings.csv", profile=profile,
               made_from=["study_b_claims.csv"] if facts_slug else ["study_a_claims.csv", "study_b_claims.csv"],
               **({"model": model_slug} if model_slug else {}), **({"facts": facts_slug} if facts_slug else {}))
    (out / "findings.md").write_text(markdown(table))
    return table


def readme_section(table: pd.DataFrame, start: str, end: str, readme_text: str) -> str:
    """``readme_text`` with the part between the ``start`` and ``end`` marker lines replaced by the compact table."""
    return replace_section(readme_text, start, end, compact(table))


def replace_section(text: str, start: str, end: str, body: str) -> str:
    """``text`` with the part between the ``start`` and ``end`` marker lines replaced by ``body``."""
    if start not in text or end not in text:
        raise ValueError(f"README lacks the markers {start!r} / {end!r} around the table notebook 06 writes there")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def report(table: pd.DataFrame) -> str:
    """For each claim and track: the paper's statement, our effect with both intervals, the minimum
    detectable effect, the verdict, and the replication (when the table has one)."""
    lines = []
    for claim, g in table.groupby("claim", sort=True):
        lines.append(f"{claim}. Paper: {CLAIMS[claim]}.")
        for r in g.itertuples():
            design = f" [{r.design}]" if "design" in table and r.design != "main" else ""
            if _nan(r.effect):
                effect = "no items"
            else:
                effect = (f"{r.effect:+.3f} [95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}; item-only {r.item_ci_low:+.3f}, "
                          f"{r.item_ci_high:+.3f}; MDE {r.mde:.3f}]")
            why = f" ({r.reason})" if "reason" in table and isinstance(r.reason, str) and r.reason else ""
            means = f"; means {_means(r.mean_a, r.mean_b)}" if "mean_a" in table and not _nan(r.mean_a) else ""
            bases = (f", {_bases(r.n_bases, r.base_share)} bases" if "n_bases" in table and int(r.n_bases) > 1
                     else "")
            lines.append(f"    {r.track:9s}{design} {r.verdict.upper():15s} {effect}{means}; {r.metric} "
                         f"(n={r.n_items} items, {r.n_seeds} seeds{bases}){why}")
            if "replication_verdict" in table and isinstance(r.replication_verdict, str):
                lines.append(f"    {'':9s} replication {r.replication_verdict.upper():15s} "
                             f"{_ci(r.replication_effect, r.replication_ci_low, r.replication_ci_high)} "
                             f"(n={int(r.replication_n_items)} items, {int(r.replication_n_seeds)} seeds)")
    return "\n".join(lines)


# --- every claim by model ---------------------------------------------------------------------------------

BY_MODEL_COLUMNS = ["claim", "track", "model", "n_params", "architecture", "facts", "finetuning", "effect", "ci_low",
                    "ci_high", "verdict", "reason", "replication_effect", "replication_ci_low", "replication_ci_high",
                    "replication_verdict", "n_items", "n_seeds", "mde"]
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def n_params(identity: dict) -> float:
    """A model's parameter count from what a table's provenance records of it (its safetensors bytes over its
    dtype's width; tied embeddings are stored once); NaN where it was not recorded."""
    config = identity.get("config") or {}
    width = _BYTES.get(config.get("dtype") or config.get("torch_dtype") or "float32")
    size = identity.get("weights_bytes")
    return float(size) / width if size else math.nan


def track_models(provenance_models: dict) -> dict[str, dict]:
    """``{track: identity}`` from a claims table's provenance ``models`` (labels such as ``tiny pretrain-seed 1``
    or ``smollm2 replication`` reduced to their track; the main design's first base speaks for the track)."""
    out: dict[str, dict] = {}
    for label, identity in provenance_models.items():
        out.setdefault(label.split(" ")[0], identity)
    return out


def by_model(findings_table: pd.DataFrame, identities: dict[str, dict], finetuning: dict[str, str],
             facts: dict[str, str]) -> pd.DataFrame:
    """Every claim for every track that ran it on a model a table's provenance names (``identities``:
    ``{track: identity}``, :func:`track_models`; the one-layer theory model has none and stays out), ordered by
    parameter count, with what else differs between the models beside it: architecture, ``facts`` and
    ``finetuning`` (``{track: text}``). Read as a comparison of instruments, not as a scaling law."""
    t = findings_table[findings_table.track.isin(list(identities))].copy()
    t["model"] = [k if k == "tiny" else identities[k].get("slug") or k for k in t.track]
    t["n_params"] = [n_params(identities[k]) for k in t.track]
    t["architecture"] = [identities[k].get("architecture") or "" for k in t.track]
    t["facts"] = [facts.get(k, "") for k in t.track]
    t["finetuning"] = [finetuning.get(k, "") for k in t.track]
    order = {c: i for i, c in enumerate(CLAIMS)}
    t = t.sort_values(["claim", "n_params", "track"], key=lambda s: s.map(order) if s.name == "claim" else s)
    return t[BY_MODEL_COLUMNS].reset_index(drop=True)
