"""What the pretrained tiny model stored: every question about every known person, asked in both
template splits, read against how often the person was mentioned in the corpus (the curve Study B's
tiny track rests on), and the checks notebook 02 prints on that curve.

Usage: ``scored = storage.stored_knowledge_run(folder, world, qa_fraction, seed, profile)``;
``by_bucket, checks = storage.storage_curve(scored)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from knowinject.core import paths, stages
from knowinject.core.runs import cached_table

from knowinject.data import corpus
from knowinject.data.world import EXPOSURE_LABELS, exposure_buckets
from knowinject.data.worldfiles import WorldFiles

from knowinject.train import models

from knowinject.eval import evaluate


def stored_knowledge(model, tokenizer, world: WorldFiles, qa_fraction: float, seed: int) -> pd.DataFrame:
    """Every question about every known person, in both template splits, with exposure and whether the
    person's QA pairs were in the corpus. One row per question (``em`` is the score).

    Training templates asked about people whose QA was *not* in the corpus measure extractable
    knowledge (the format was learned on other people: the Physics-of-LMs test); held-out templates,
    never in the corpus at all, add a change of phrasing on top.
    """
    facts = world.table("facts")
    known = facts[facts.group == "known"]
    qa = world.table("qa")
    items = qa[qa.fact_id.isin(known.fact_id)].copy()
    items = items.merge(known[["fact_id", "exposure"]], on="fact_id")
    items["qa_in_pretraining"] = items.subject.isin(corpus.qa_people(facts, seed, qa_fraction))
    return evaluate.score_qa(model, tokenizer, items, batch_size=64)


def stored_knowledge_run(model_folder: Path, world: WorldFiles, qa_fraction: float, seed: int,
                         profile: str | None = None) -> pd.DataFrame:
    """:func:`stored_knowledge` of a pretrained model, cached next to it as ``stored_knowledge.jsonl``."""
    key = {"model": models.content_key(model_folder / "model"), "world": world.folder.name,
           "eval": "stored_knowledge-all-templates-v2"}

    def make() -> pd.DataFrame:
        with stages.stage("storage questions"):
            model, tok = models.load(model_folder / "model")
            return stored_knowledge(model, tok, world, qa_fraction, seed)

    return cached_table(paths.RUNS, "stored-knowledge", key, make, "stored_knowledge.jsonl", seed=seed,
                        profile=profile)


def storage_curve(scored: pd.DataFrame) -> tuple[pd.Series, dict]:
    """Knownness by exposure bucket (training templates, people whose QA was never in pretraining)
    and the checks notebook 02 prints: monotone over the buckets, at most 20% at one mention, at
    least 85% in every bucket above 30 mentions."""
    bios_only = scored[~scored.qa_in_pretraining & (scored.template_split == "train")]
    by_bucket = bios_only.groupby(exposure_buckets(bios_only.exposure).astype(str)).em.mean()
    by_bucket = by_bucket.reindex(EXPOSURE_LABELS).dropna()
    above_30 = by_bucket[[b for b in ("31-100", ">100") if b in by_bucket.index]]
    checks = {
        "monotone over the exposure buckets": bool(by_bucket.is_monotonic_increasing),
        "buckets": int(len(by_bucket)),
        "at most 20% at 1 mention": bool(by_bucket.get("1", 0) <= 0.20),
        "at least 85% in every bucket above 30 mentions": bool(len(above_30) and (above_30 >= 0.85).all()),
    }
    return by_bucket, checks


# Held-out storage at 31-100 mentions may move this much either way between pretraining draws (seeds, or
# bf16 against fp32 arithmetic): the instrument's tolerance (issue #25). Two CPUs' models once differed
# by 23 points there, and the tiny claims' effects are 5-10 points.
TOLERANCE = 0.05
TOLERANCE_BUCKET = "31-100"
MEASURES = {"heldout": "held-out templates", "train": "training templates"}


def curves_by_bucket(scored: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by exposure bucket about people whose QA was never in pretraining, one row per measure
    (held-out templates, the measure on which two CPUs' models differed most; training templates,
    the knownness Study B splits by) and bucket: ``measure, bucket, mean, n``."""
    people = scored[~scored.qa_in_pretraining]
    people = people.assign(bucket=exposure_buckets(people.exposure).astype(str))
    rows = []
    for split, name in MEASURES.items():
        by = people[people.template_split == split].groupby("bucket").em.agg(["mean", "count"])
        for bucket in [b for b in EXPOSURE_LABELS if b in by.index]:
            rows.append({"measure": name, "bucket": bucket, "mean": float(by.loc[bucket, "mean"]),
                         "n": int(by.loc[bucket, "count"])})
    return pd.DataFrame(rows)


def draw_curves(folder: Path, scored: pd.DataFrame, seed: int) -> pd.DataFrame:
    """:func:`curves_by_bucket` of one pretrained model (its ``folder`` and its ``scored`` questions), each row
    labelled with the model's pretraining seed, precision, folder and final loss, and whether the model
    passes notebook 02's checks (:func:`storage_curve`)."""
    summary = json.loads((folder / "train_summary.json").read_text())
    _, checks = storage_curve(scored)
    return curves_by_bucket(scored).assign(seed=seed, precision=summary["precision"], model=folder.name,
                                           final_loss=summary["final_loss"],
                                           checks_pass=all(v for k, v in checks.items() if k != "buckets"))


def spread(table: pd.DataFrame, bucket: str = TOLERANCE_BUCKET) -> dict:
    """Held-out storage at ``bucket`` for every model of ``table`` (rows of :func:`curves_by_bucket` with
    ``seed`` and ``precision``), its largest distance from the first seed's bf16 (or only) model, the range
    over the seeds, and whether every model lies within :data:`TOLERANCE`. A world too small to reach
    ``bucket`` (the smoke profile) is read at its top bucket."""
    held = table[table.measure == MEASURES["heldout"]]
    if bucket not in set(held.bucket):
        bucket = [b for b in EXPOSURE_LABELS if b in set(held.bucket)][-1]
    held = held[held.bucket == bucket]
    at = {f"seed {r.seed} {r.precision}": float(r.mean) for r in held.itertuples()}
    first = held[(held.seed == held.seed.min()) & (held.precision != "fp32")]["mean"]
    ref = float(first.iloc[0]) if len(first) else float(held["mean"].iloc[0])
    worst = float((held["mean"] - ref).abs().max())
    seeds = held[held.precision != "fp32"]["mean"]
    return {"bucket": bucket, "storage": at, "largest move": worst, "within tolerance": bool(worst <= TOLERANCE + 1e-12),
            "range over seeds": float(seeds.max() - seeds.min()) if len(seeds) else float("nan")}
