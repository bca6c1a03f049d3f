"""Study B on any fact table: yours, or a paper's benchmark in its published layout (:mod:`knowinject.data.facts`).

A :class:`FactSet` stands where the design otherwise takes the synthetic world: it names the runs (the file's
slug and hash, so an edited file is another fact set) and gives the QA table the design trains and tests on.
A fact table has one question per fact, so that question is both the training phrasing of a pool fact and
the test phrasing of a test fact; pool and test subjects are disjoint (:func:`.design.split`), so no test
question is ever trained on. The known / unknown halves come from the base model's knownness of the
table, measured by the curation tool's cached scoring (:func:`knowinject.eval.curate.score`: notebook 03's
measure, few-shot exemplars of the same relation in the table's own wording).

Multiple-choice tables (MMLU's layout) are scored by the curation tool; Study B's finetuning on them (the
answer letter as the target) is not built yet, and :func:`FactSet.require_qa` says so.

Usage: ``fs = FactSet("popQA.tsv")``; ``compute.run_tracks([(track, fs, cfg)], ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import pandas as pd

from knowinject.data import facts as factfiles

from knowinject.eval import curate


@dataclass(frozen=True)
class FactSet:
    """A fact file (any layout :func:`knowinject.data.facts.load` reads) as Study B's data."""
    path: Path
    format: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.format == "":
            object.__setattr__(self, "format", None)

    @cached_property
    def facts(self) -> pd.DataFrame:
        return factfiles.load(self.path, self.format)  # validated: a bad file fails here, before any run

    @property
    def slug(self) -> str:
        """The folder name of this fact set's results (``data/results/<profile>/<model>/<slug>/``)."""
        return factfiles.slug(self.path)

    @cached_property
    def folder(self) -> Path:
        """What keys its runs, as a world's folder does: the slug and the file's content hash."""
        return Path(f"facts-{self.slug}-{curate.file_hash(self.path)[:10]}")

    @property
    def multiple_choice(self) -> bool:
        return "options" in self.facts

    def require_qa(self) -> None:
        if self.multiple_choice:
            raise ValueError(f"{self.path}: a multiple-choice table (MMLU's layout). The curation tool scores it "
                             "(python -m knowinject.eval.curate --facts ...), but Study B's finetuning on answer "
                             "letters is not built yet; pass a QA table (JSON Lines, CSV, PopQA, EntityQuestions)")

    def identity(self) -> dict:
        """What a results table's provenance records of the fact set."""
        return {"path": str(self.path), "format": self.format or factfiles.detect_format(self.path),
                "sha256": curate.file_hash(self.path), "n_facts": len(self.facts), "slug": self.slug}

    def design(self, cfg):
        """A profile's Study B settings for this fact set: its relations, the popularity split only where
        every fact has a popularity, and no stratification (levels are popularity quintiles, or one)."""
        splits = tuple(s for s in cfg.splits if s != "popularity" or self.facts.popularity.notna().all())
        relations = self.relations()
        if not relations:
            raise ValueError(f"{self.path}: no relation has 4 or more facts; Study B needs a pool and a test half "
                             "of each relation's subjects")
        return replace(cfg, relations=relations, splits=splits or ("knownness",), stratify=False, fact_table=True)

    def relations(self, min_facts: int = 4) -> tuple[str, ...]:
        """The relations with at least ``min_facts`` facts (fewer cannot be split into pool and test halves)."""
        counts = self.facts.relation.value_counts()
        return tuple(sorted(counts[counts >= min_facts].index))

    def table(self, name: str = "qa") -> pd.DataFrame:
        """The QA table (whatever name the design asks for: the fact set has one): each fact's question as
        its one training and one held-out phrasing."""
        self.require_qa()
        _, qa = curate.world_tables(self.facts)
        return qa.assign(item_id=qa.fact_id + "-" + qa.template_split, aliases=self._aliases(qa))

    def _aliases(self, qa: pd.DataFrame) -> list[list[str]]:
        answers = dict(zip(self.facts.fact_id, ([a, *al] for a, al in zip(self.facts.answer, self.facts.aliases))))
        return [answers[f] for f in qa.fact_id]
