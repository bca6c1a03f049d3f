"""Study B on any fact table: yours, or a paper's benchmark in its published layout (:mod:`knowinject.data.facts`).

A :class:`FactSet` stands where the design otherwise takes the synthetic world: it names the runs (the file's
slug and hash, so an edited file is another fact set) and gives the QA table the design trains and tests on.
A fact table has one question per fact, so that question is both the training phrasing of a pool fact and
the test phrasing of a test fact; pool and test subjects are disjoint (:func:`.design.split`), so no test
question is ever trained on. The known / unknown halves come from the base model's knownness of the
table, measured by the curation tool's cached scoring (:func:`knowinject.eval.curate.score`: notebook 03's
measure, few-shot exemplars of the same relation in the table's own wording).

Multiple choice: a table with ``options`` runs in one of two forms (``mc_form``). *Lettered* (MMLU's form) trains
on the answer letter after the question and its lettered options (the curation tool's prompt, ``Answer:``).
*Cloze* (OLMES's form for small base models) trains on the correct option's text after the question's QA prompt.
Either is scored by which option has the highest log-likelihood per byte (``acc_norm``; for letters, the most
probable letter; :func:`.compute.answer_questions`), and a fact is known when the base model already picks the
correct option so (:func:`knowinject.eval.curate.measure_mc`). :func:`geonames_multiple_choice` writes the
compendium's own such set: the GeoNames facts of Study B's relations as four-way questions, distractors
drawn from the same relation's other answers. MMLU's own files run Study B with each question as its own
subject: their rows name an MMLU subject area, not an entity the question asks about
(:meth:`FactSet.study_rows`).

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
    mc_form: str = "lettered"  # a multiple-choice table's form: lettered or cloze (curate.MC_FORMS)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.format == "":
            object.__setattr__(self, "format", None)
        if self.mc_form not in curate.MC_FORMS:
            raise factfiles.FactTableError(f"mc_form must be one of {', '.join(curate.MC_FORMS)}, got {self.mc_form!r}")

    @cached_property
    def facts(self) -> pd.DataFrame:
        return factfiles.load(self.path, self.format)  # validated: a bad file fails here, before any run

    @property
    def slug(self) -> str:
        """The folder name of this fact set's results (``data/results/<profile>/<model>/<slug>/``)."""
        return factfiles.slug(self.path)

    @cached_property
    def folder(self) -> Path:
        """What keys its runs, as a world's folder does: the slug and the file's content hash (and the form, for a
        multiple-choice table in the cloze form: another target, other runs)."""
        cloze = "-cloze" if self.multiple_choice and self.mc_form == "cloze" else ""
        return Path(f"facts-{self.slug}-{curate.file_hash(self.path)[:10]}{cloze}")

    @property
    def multiple_choice(self) -> bool:
        return "options" in self.facts

    @property
    def measure(self) -> str:
        """What a right answer is, as the claims table names it."""
        if not self.multiple_choice:
            return "exact match"
        return "multiple-choice accuracy" + (" (cloze, acc_norm)" if self.mc_form == "cloze" else "")

    @property
    def question_is_subject(self) -> bool:
        """MMLU's rows name their subject area (astronomy), not an entity the question asks about: for Study B
        each question is its own subject (:meth:`study_rows`)."""
        return (self.format or factfiles.detect_format(self.path)) == "mmlu"

    def study_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """Rows of this fact set as Study B reads them. MMLU: the question is the subject, so pool and test
        split by question, attention is read onto the question's tokens (against its options'), and the
        subject swap asks another question of the same subject area over these options."""
        return table.assign(subject=table.question) if self.question_is_subject else table

    def require_study_b(self) -> None:
        """Refuse, before anything runs, a table Study B cannot split: no relation with 4 or more facts."""
        if not self.relations():
            counts = self.facts.relation.value_counts().to_dict()
            raise factfiles.FactTableError(f"{self.path}: no relation has 4 or more facts ({counts}); Study B needs a "
                                           "pool and a test half of each relation's subjects")

    def identity(self) -> dict:
        """What a results table's provenance records of the fact set."""
        return {"path": str(self.path), "format": self.format or factfiles.detect_format(self.path),
                "sha256": curate.file_hash(self.path), "n_facts": len(self.facts), "slug": self.slug,
                **({"mc_form": self.mc_form} if self.multiple_choice else {})}

    def design(self, cfg):
        """A profile's Study B settings for this fact set: its relations, the popularity split only where
        every fact has a popularity, and no stratification (levels are popularity quintiles, or one)."""
        splits = tuple(s for s in cfg.splits if s != "popularity" or self.facts.popularity.notna().all())
        self.require_study_b()
        relations = self.relations()
        return replace(cfg, relations=relations, splits=splits or ("knownness",), stratify=False, fact_table=True)

    def relations(self, min_facts: int = 4) -> tuple[str, ...]:
        """The relations with at least ``min_facts`` facts (fewer cannot be split into pool and test halves)."""
        counts = self.facts.relation.value_counts()
        return tuple(sorted(counts[counts >= min_facts].index))

    def table(self, name: str = "qa") -> pd.DataFrame:
        """The QA table (whatever name the design asks for: the fact set has one): each fact's question as
        its one training and one held-out phrasing. Multiple choice: the question in the fact set's form, the
        answer as the model writes it (the letter, or the option's text) and ``choices`` what a prediction is
        chosen from (the letters, or the options' texts)."""
        if self.multiple_choice:
            f = self.study_rows(self.facts)
            answers = [curate.mc_answer(r, self.mc_form) for r in f.itertuples()]
            one = pd.DataFrame({"fact_id": f.fact_id, "subject": f.subject, "relation": f.relation,
                                "question": f.question, "answer": answers,
                                "prompt": [curate.mc_question(q, o, self.mc_form) for q, o in zip(f.question, f.options)],
                                "aliases": [[a] for a in answers],
                                "choices": [curate.mc_targets(o, self.mc_form) for o in f.options]})
            qa = pd.concat([one.assign(template_split=s) for s in ("heldout", "train")], ignore_index=True)
            return qa.assign(item_id=qa.fact_id + "-" + qa.template_split)
        _, qa = curate.world_tables(self.facts)
        return qa.assign(item_id=qa.fact_id + "-" + qa.template_split, aliases=self._aliases(qa))

    def _aliases(self, qa: pd.DataFrame) -> list[list[str]]:
        answers = dict(zip(self.facts.fact_id, ([a, *al] for a, al in zip(self.facts.answer, self.facts.aliases))))
        return [answers[f] for f in qa.fact_id]


def geonames_multiple_choice(world, relations, seed: int = 0, profile: str | None = None,
                             mc_form: str = "lettered") -> FactSet:
    """The GeoNames facts of ``relations`` as four-way questions (a cached run's ``geonames_mc.jsonl``): each
    fact's first training-template question, its answer and three distractors drawn from the other answers of
    its relation (none of them one of its aliases), in a random order. A question asked of two facts (two
    subjects of one name) is left out: it has no one answer. ``mc_form``: the form Study B asks them in."""
    from knowinject.core import paths, runs
    from knowinject.core.seeding import numpy_rng

    from knowinject.eval.scoring import normalize_answer

    def make(tmp: Path) -> None:
        rng = numpy_rng(seed, "geonames-multiple-choice")
        facts = world.table("realworld")
        qa = world.table("qa_realworld")
        first = qa[qa.template_split == "train"].drop_duplicates("fact_id").set_index("fact_id").question
        rows = []
        for rel in relations:
            g = facts[facts.relation == rel].sort_values("fact_id")
            values = sorted(set(g.value))
            for f in g.itertuples():
                gold = {normalize_answer(a) for a in [f.value, *f.aliases]}
                others = [v for v in values if normalize_answer(v) not in gold]
                if len(others) < factfiles.GEONAMES_OPTIONS - 1 or f.fact_id not in first.index:
                    continue
                drawn = rng.choice(len(others), factfiles.GEONAMES_OPTIONS - 1, replace=False)
                options = [f.value, *(others[i] for i in drawn)]
                options = [options[i] for i in rng.permutation(factfiles.GEONAMES_OPTIONS)]
                rows.append({"subject": f.subject, "relation": rel, "question": first[f.fact_id], "answer": f.value,
                             "options": options, "popularity": f.popularity, "source_fact_id": f.fact_id})
        table = pd.DataFrame(rows)
        table = table[~table.question.duplicated(keep=False)]
        runs.write_jsonl(table, tmp / "geonames_mc.jsonl")

    key = {"world": world.folder.name, "relations": list(relations), "seed": seed, "v": 1}
    folder = runs.cached_run(paths.RUNS, "geonames-multiple-choice", key, make, profile=profile, verbose=False)
    return FactSet(folder / "geonames_mc.jsonl", mc_form=mc_form)
