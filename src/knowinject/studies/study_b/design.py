"""Study B's design: the conditions, the candidate facts with the base model's knownness, the
finetuning pool and the test set.

Study B (Ghosal et al. 2024) compares QA-finetuning on well-known and on lesser-known facts, with one
code path for both tracks. Candidate facts carry a knownness score measured on the base model
(greedy hit rate, ties broken by the gold answer's probability) and a popularity (population for
real-world facts, pretraining exposure for the tiny world). Subjects are split once into a
finetuning pool and a test set, so no test subject is ever trained on. From the pool come the
conditions: the best-known half, the least-known half, a random half (balanced over relations, the
same size) and the whole pool; and, split by popularity, the popular and the unpopular half.

Usage: ``pool, test = design.split(design.candidates(track, world, cfg.relations, known_cfg), cfg)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from knowinject.core import paths, stages
from knowinject.core.config import require
from knowinject.core.runs import cached_table
from knowinject.core.seeding import numpy_rng

from knowinject.data.templates import RELATIONS
from knowinject.data.world import exposure_buckets

from knowinject.train import models

from knowinject.eval import curate, evaluate, knownness
from knowinject.eval.scoring import normalize_answer
from knowinject.eval.storage import stored_knowledge_run

from knowinject.studies.study_b.factset import FactSet

SPLITS = {"knownness": ("known", "unknown"), "popularity": ("popular", "unpopular")}
CONDITIONS = ("known", "unknown", "random", "whole", "popular", "unpopular")


@dataclass(frozen=True)
class StudyBConfig:
    relations: tuple[str, ...] = ("capital", "city_country", "continent", "currency")
    half_size: int = 64               # facts per half (pool = 2 halves), balanced over relations
    n_test: int = 160                 # test facts, balanced over relations, subjects disjoint from the pool
    epochs: int = 8
    checkpoints: tuple[int, ...] = (1, 3, 8)  # epochs at which every test question is asked
    seeds: tuple[int, ...] = (0, 1, 2)
    splits: tuple[str, ...] = ("knownness", "popularity")
    k_shot: int = 3                   # few-shot exemplars (pool facts of the same relation)
    n_attention: int = 60             # test questions whose attention is read (base and last checkpoint)
    data_seed: int = 0                # the pool/test split: fixed across training seeds so items pair up
    # Split subjects within each popularity level and draw the same number of test facts per
    # (relation, level), so accuracy can be read level by level (the tiny track's exposure buckets).
    stratify: bool = False
    # Relations named by a fact table of one's own (:meth:`.factset.FactSet.design`), not the world's
    # templates: they are whatever the file calls them, so they are not checked against RELATIONS.
    fact_table: bool = False

    def __post_init__(self):
        bad = [r for r in self.relations if r not in RELATIONS]
        require(self.fact_table or not bad, f"StudyBConfig.relations: unknown {bad}; valid: {', '.join(RELATIONS)}")
        require(self.half_size >= len(self.relations), "StudyBConfig.half_size must be >= the number of relations")
        require(self.n_test >= len(self.relations), "StudyBConfig.n_test must be >= the number of relations")
        require(self.checkpoints and max(self.checkpoints) == self.epochs and min(self.checkpoints) >= 1,
                f"StudyBConfig.checkpoints must lie in 1..epochs and end at epochs ({self.epochs}); got {self.checkpoints}")
        require(len(self.seeds) >= 1, "StudyBConfig.seeds must list at least one seed")
        bad = [s for s in self.splits if s not in SPLITS]
        require(not bad, f"StudyBConfig.splits: unknown {bad}; valid: {', '.join(SPLITS)}")
        require(0 <= self.n_attention <= self.n_test,
                f"StudyBConfig.n_attention must be in 0..n_test ({self.n_test}), got {self.n_attention}")

    @property
    def conditions(self) -> tuple[str, ...]:
        out = []
        for s in self.splits:
            out += list(SPLITS[s]) + (["random", "whole"] if s == "knownness" else [])
        return tuple(out)

    def run_key(self) -> dict:
        """What a single run depends on (not the list of seeds or conditions)."""
        d = asdict(self)
        for k in ("seeds", "splits", "n_attention", "fact_table"):  # a fact table's runs are keyed by its file
            d.pop(k)
        return d


# --- candidates ---------------------------------------------------------------------------------------

def knownness_score(hit_rate, gold_prob):
    """Greedy hit rate first; the gold answer's probability breaks ties (it is < 1, scaled below a step)."""
    return np.asarray(hit_rate, dtype=float) + 0.1 * np.asarray(gold_prob, dtype=float)


def smollm2_candidates(known_table: pd.DataFrame, relations) -> pd.DataFrame:
    """Real-world facts with the base model's knownness (notebook 03's table) and population."""
    t = known_table[known_table.relation.isin(relations)].copy()
    n_sets = int(t.greedy_hits.max()) if len(t) and t.greedy_hits.max() > 0 else 1
    t["known_score"] = knownness_score(t.greedy_hits / max(n_sets, 1), t.gold_prob)
    t["base_known"] = t.few_shot_em.astype(bool)
    t["level"] = popularity_quintiles(t)
    return t[COLUMNS]


COLUMNS = ["fact_id", "subject", "relation", "kind", "value", "aliases", "popularity", "level", "known_score",
           "base_known"]


def fact_candidates(scored: pd.DataFrame, relations, mc_form: str = "lettered") -> pd.DataFrame:
    """A fact table's facts with the base model's knownness (the curation tool's scores, notebook 03's
    measure; multiple choice in ``mc_form``: whether the base model's choice is the correct option, its share of
    the options' likelihood breaking ties) and, where the table has one, its popularity; levels are popularity
    quintiles within each relation when every fact has a popularity, else one level ("all")."""
    t = scored[scored.relation.isin(relations)].copy()
    if "options" in t:  # multiple choice: the target is the letter or the option's text; known when the base picks it
        target = [curate.mc_answer(r, mc_form) for r in t.itertuples()]
        t["kind"], t["value"], t["aliases"] = "fact", target, [[a] for a in target]
        t["known_score"] = knownness_score(t.known.astype(float), t.gold_prob)
        t["base_known"] = t.known.astype(bool)
    else:
        n_sets = int(t.greedy_hits.max()) if len(t) and t.greedy_hits.max() > 0 else 1
        t["kind"], t["value"] = "fact", t.answer
        t["aliases"] = [[a, *al] for a, al in zip(t.answer, t.aliases)]
        t["known_score"] = knownness_score(t.greedy_hits / n_sets, t.gold_prob)
        t["base_known"] = t.few_shot_em.astype(bool)
    t["popularity"] = t.popularity.astype(float)
    t["level"] = popularity_quintiles(t)
    return t[COLUMNS].reset_index(drop=True)


def popularity_quintiles(t: pd.DataFrame) -> pd.Series:
    """Population quintile of each real-world fact's subject within its relation (Q1 = least popular); one
    level ("all") where a relation has fewer than five facts or a fact has no popularity."""
    usable = len(t) and t.popularity.notna().all() and t.groupby("relation").size().min() >= 5
    return knownness.popularity_buckets(t, 5) if usable else pd.Series("all", index=t.index)


def tiny_candidates(model, tokenizer, facts: pd.DataFrame, qa: pd.DataFrame, stored: pd.DataFrame,
                    relations) -> pd.DataFrame:
    """Known people's facts whose QA never was in the pretraining corpus, with the pretrained tiny
    model's knownness (training-template hit rate from ``stored``, gold probability) and exposure."""
    items = stored[~stored.qa_in_pretraining & (stored.template_split == "train") & stored.relation.isin(relations)]
    hit = items.groupby("fact_id").em.mean()
    t = facts[facts.fact_id.isin(hit.index)].copy()
    first = qa[(qa.template_split == "train")].drop_duplicates("fact_id").set_index("fact_id")
    lp = evaluate.continuation_logprobs(model, tokenizer, list(first.prompt[t.fact_id]),
                                        [f" {v}" for v in t.value], batch_size=64)
    t["known_score"] = knownness_score(hit[t.fact_id].values, np.exp(lp))
    t["base_known"] = hit[t.fact_id].values >= 0.5
    t["popularity"] = t.exposure.astype(float)
    t["level"] = exposure_buckets(t.exposure).astype(str)
    return t[COLUMNS]


def candidates(track, world, relations, known_cfg: knownness.KnownnessConfig, subset: int | None = None,
               profile: str | None = None) -> pd.DataFrame:
    """Candidate facts of a track with knownness measured on its base model (cached runs).

    SmolLM2 (or a swapped-in model): the knownness table of the real-world facts measured with
    ``known_cfg`` on ``subset`` of them; given notebook 03's settings (:func:`knownness.notebook_settings`)
    it is notebook 03's cached measurement. Tiny: notebook 02's stored-knowledge table plus the gold
    answer's probability under the pretrained model.
    """
    if isinstance(world, FactSet):  # a fact table of the user's or a benchmark's (notebook 05's facts_path)
        world.require_study_b()
        scored = curate.score(track.model, world.path, known_cfg, world.format, progress=False, mc_form=world.mc_form)
        return fact_candidates(world.study_rows(scored), relations, world.mc_form)
    if track.name == "smollm2":
        table = knownness.measure_run(track.model, "realworld", world, known_cfg, profile, subset=subset)
        return smollm2_candidates(table, relations)
    folder = Path(track.model).parent
    wcfg = world.config()["world"]  # this world's own settings (a replication's world has another seed)
    stored = stored_knowledge_run(folder, world, wcfg["qa_fraction"], wcfg["seed"], profile)

    def make() -> pd.DataFrame:
        with stages.stage("candidate questions (tiny bases)"):
            model, tok = models.load(track.model)
            return tiny_candidates(model, tok, world.table("facts"), world.table("qa"), stored, relations)

    key = {"model": models.content_key(track.model), "world": world.folder.name, "relations": list(relations), "v": 2}
    return cached_table(paths.RUNS, "study-b-tiny-candidates", key, make, "candidates.jsonl", profile=profile)


# --- pool, test and conditions ----------------------------------------------------------------------------

def _per_relation(n: int, relations) -> int:
    return max(1, n // len(relations))


def preflight(facts: FactSet, cfg: StudyBConfig) -> None:
    """Everything Study B needs of a fact table that the table alone tells (the pipeline's pre-flight, before
    any model is loaded): a relation of 4 or more facts, and subjects enough that the design's pool and test
    halves are not empty: :func:`split` run on the facts as they are (knownness does not decide it)."""
    from knowinject.data.facts import FactTableError

    facts.require_study_b()
    design = facts.design(cfg)
    rows = facts.study_rows(facts.facts)
    try:
        split(rows.assign(level=1, known_score=0.0, popularity=rows.popularity.fillna(0.0)), design)
    except ValueError as e:
        raise FactTableError(f"{facts.path}: Study B cannot split this table into a pool and a test half of "
                             f"disjoint subjects ({e}); it needs more facts and subjects per relation") from None


def split(candidates: pd.DataFrame, cfg: StudyBConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test): subjects split in half at random (within each popularity level when
    ``cfg.stratify``), then facts drawn per relation (per relation and level for the test set when
    stratified) from each side."""
    rng = numpy_rng(cfg.data_seed, "study-b-split")
    subject_level = candidates.groupby("subject", sort=True)["level"].first()
    pool_subjects = set()
    for _, subjects in (subject_level.groupby(subject_level) if cfg.stratify else [(None, subject_level)]):
        names = np.array(subjects.index)[rng.permutation(len(subjects))]
        pool_subjects |= set(names[: len(names) // 2])
    levels = sorted(candidates["level"].unique()) if cfg.stratify else [None]
    pool_parts, test_parts = [], []
    for rel in cfg.relations:
        c = candidates[candidates.relation == rel]
        p, t = c[c.subject.isin(pool_subjects)], c[~c.subject.isin(pool_subjects)]
        n_pool = 2 * _per_relation(cfg.half_size, cfg.relations)
        pool_parts.append(p.iloc[np.sort(rng.permutation(len(p))[:n_pool])])
        n_test = _per_relation(cfg.n_test, cfg.relations)
        for level in levels:
            tl = t if level is None else t[t["level"] == level]
            take = n_test if level is None else max(1, n_test // len(levels))
            test_parts.append(tl.iloc[np.sort(rng.permutation(len(tl))[:take])])
    pool, test = pd.concat(pool_parts, ignore_index=True), pd.concat(test_parts, ignore_index=True)
    if len(pool) < 2 * len(cfg.relations) or len(test) < len(cfg.relations):
        raise ValueError(f"too few candidate facts for Study B: pool {len(pool)}, test {len(test)}; lower half_size / "
                         "n_test, or measure knownness on more facts (notebook 03's subset=0)")
    assert not set(pool.subject) & set(test.subject), "pool and test subjects must be disjoint"
    test = test.assign(known_bucket=halves(test, "known_score", cfg.data_seed, ("known", "unknown")),
                       popularity_bucket=halves(test, "popularity", cfg.data_seed, ("popular", "unpopular")))
    return pool, test


def halves(df: pd.DataFrame, score: str, seed: int, labels=("top", "bottom")) -> pd.Series:
    """Per relation, the top half by ``score`` (ties in random order) and the bottom half."""
    rng = numpy_rng(seed, f"halves-{score}")
    out = pd.Series(labels[1], index=df.index, dtype=object)
    for _, g in df.groupby("relation"):
        jitter = rng.random(len(g)) * 1e-9  # ties broken at random, not by table order
        order = np.argsort(-(g[score].to_numpy(dtype=float) + jitter), kind="stable")
        out.loc[g.index[order[: len(g) // 2]]] = labels[0]
    return out


def condition_facts(pool: pd.DataFrame, condition: str, seed: int, data_seed: int = 0) -> pd.DataFrame:
    """The pool facts one condition trains on (halves are balanced over relations)."""
    if condition == "whole":
        return pool
    if condition in ("known", "unknown"):
        half = halves(pool, "known_score", data_seed, ("known", "unknown"))
        return pool[half == condition]
    if condition in ("popular", "unpopular"):
        half = halves(pool, "popularity", data_seed, ("popular", "unpopular"))
        return pool[half == condition]
    if condition == "random":
        rng = numpy_rng(seed, "random-half")
        idx = [g.index[rng.permutation(len(g))[: len(g) // 2]] for _, g in pool.groupby("relation")]
        return pool.loc[np.sort(np.concatenate(idx))]
    raise ValueError(f"unknown condition {condition!r}; conditions: {', '.join(CONDITIONS)}")


def qa_examples(facts: pd.DataFrame, qa: pd.DataFrame, seed: int) -> list[dict]:
    """One QA pair per fact, on a training template drawn per fact."""
    rng = numpy_rng(seed, "study-b-templates")
    train = qa[qa.template_split == "train"].set_index("fact_id")
    out = []
    for f in facts.itertuples():
        rows = train.loc[[f.fact_id]]
        r = rows.iloc[int(rng.integers(len(rows)))]
        out.append({"prompt": r.prompt, "completion": f" {f.value}\n"})
    return out


def test_items(test: pd.DataFrame, qa: pd.DataFrame, phrasing: str, seed: int) -> pd.DataFrame:
    """One question per test fact, on a phrasing the track's finetuning never uses for that fact:
    a held-out template (SmolLM2) or a training template (tiny: test facts are never finetuned on and
    their QA was never in pretraining)."""
    split_name = "heldout" if phrasing == "heldout" else "train"
    rng = numpy_rng(seed, f"study-b-test-{split_name}")
    cands = qa[qa.template_split == split_name].set_index("fact_id")
    rows = []
    for f in test.itertuples():
        options = cands.loc[[f.fact_id]]
        r = options.iloc[int(rng.integers(len(options)))]
        rows.append({"item_id": r.item_id, "fact_id": f.fact_id, "subject": f.subject, "relation": f.relation,
                     "question": r.question, "prompt": r.prompt, "answer": f.value, "aliases": list(f.aliases),
                     **({"choices": list(r.choices)} if "choices" in cands else {})})  # multiple choice: its letters
    return pd.DataFrame(rows)


def subject_swaps(items: pd.DataFrame, seed: int) -> pd.DataFrame:
    """B3's causal reading: every test question asked again about another test subject of the same
    relation (``swap_subject``, ``swap_prompt``). B3 says a model finetuned on lesser-known facts ignores
    the subject's name, so its answer should change less when the name does. The partner is the next
    subject in a random cycle of the relation's test questions whose gold answer differs from this one's
    (an unchanged answer is then not a shared fact); no partner, or a prompt that does not spell the
    subject out, leaves the question without a swap (NaN)."""
    rng = numpy_rng(seed, "study-b-subject-swap")
    partner = pd.Series(np.nan, index=items.index, dtype=object)
    gold = {i: {normalize_answer(a) for a in aliases} for i, aliases in items.aliases.items()}
    for _, g in items.groupby("relation", sort=True):
        order = list(g.index[rng.permutation(len(g))])
        for k, i in enumerate(order):
            if items.subject[i] not in items.prompt[i]:
                continue
            for step in range(1, len(order)):
                j = order[(k + step) % len(order)]
                if items.subject[j] != items.subject[i] and normalize_answer(items.answer[j]) not in gold[i]:
                    partner[i] = items.subject[j]
                    break
    prompts = [p.replace(s, o) if isinstance(o, str) else np.nan for p, s, o in zip(items.prompt, items.subject, partner)]
    return items.assign(swap_subject=partner, swap_prompt=prompts)


def all_jobs(cfg: StudyBConfig) -> list[tuple[str, int]]:
    return [("base", 0)] + [(c, s) for s in cfg.seeds for c in cfg.conditions]
