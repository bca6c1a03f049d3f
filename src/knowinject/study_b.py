"""Study B (Ghosal et al. 2024): QA-finetuning on well-known vs lesser-known facts.

One code path for both tracks. Candidate facts carry a knownness score measured on the base model
(greedy hit rate, ties broken by the gold answer's probability) and a popularity (population for
real-world facts, pretraining exposure for the tiny world). Subjects are split once into a
finetuning pool and a test set, so no test subject is ever trained on. From the pool come the
conditions: the best-known half, the least-known half, a random half (balanced over relations, the
same size) and the whole pool; and, split by popularity, the popular and the unpopular half.

Each (condition, seed) is one cached run: finetune, and at each checkpoint epoch answer every test
question zero-shot (few-shot and attention at the last checkpoint), so training length is an axis.

Usage: ``pool, test = study_b.split(candidates, cfg)``; ``folder = study_b.run(track, world, pool, test, "known", 0, cfg)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate, grouped, mechanism, paths, render, runs, scoring, stats
from .config import require
from .runs import read_jsonl, write_jsonl
from .seeding import numpy_rng
from .templates import RELATIONS
from .world import exposure_buckets

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

    def __post_init__(self):
        bad = [r for r in self.relations if r not in RELATIONS]
        require(not bad, f"StudyBConfig.relations: unknown {bad}")
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
        for k in ("seeds", "splits", "n_attention"):
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


def popularity_quintiles(t: pd.DataFrame) -> pd.Series:
    """Population quintile of each real-world fact's subject within its relation (Q1 = least popular)."""
    from .knownness import popularity_buckets
    return popularity_buckets(t, 5) if len(t) >= 5 * t.relation.nunique() else pd.Series("all", index=t.index)


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


def candidates(track, world, profile: str, relations) -> pd.DataFrame:
    """Candidate facts of a track with knownness measured on its base model (cached runs).

    SmolLM2 (or a swapped-in model): notebook 03's knownness table of the real-world facts, with the
    profile's notebook-03 settings, so the measurement is shared. Tiny: notebook 02's stored-knowledge
    table plus the gold answer's probability under the pretrained model.
    """
    from . import knownness, models
    from .config import build, notebook_params, stage_params
    from .pretrain import stored_knowledge_run
    from .runs import cached_table
    from .world import WorldConfig

    if track.name == "smollm2":
        wcfg = build(WorldConfig, stage_params(profile, "world"), "world")
        p = notebook_params(profile, "03_knownness")
        kcfg = knownness.KnownnessConfig(k_shot=p.get("k_shot", 3), n_sets=p.get("n_sets", 2),
                                         n_samples=p.get("n_samples", 2), seed=wcfg.seed)
        table = knownness.measure_run(track.model, "realworld", world, kcfg, profile, subset=p.get("subset") or None)
        return smollm2_candidates(table, relations)
    folder = Path(track.model).parent
    wcfg = world.config()["world"]  # this world's own settings (a replication's world has another seed)
    stored = stored_knowledge_run(folder, world, wcfg["qa_fraction"], wcfg["seed"], profile)

    def make() -> pd.DataFrame:
        model, tok = models.load(track.model)
        return tiny_candidates(model, tok, world.table("facts"), world.table("qa"), stored, relations)

    key = {"model": folder.name, "world": world.folder.name, "relations": list(relations), "v": 2}
    return cached_table(paths.RUNS, "study-b-tiny-candidates", key, make, "candidates.jsonl", profile=profile)


# --- pool, test and conditions ----------------------------------------------------------------------------

def _per_relation(n: int, relations) -> int:
    return max(1, n // len(relations))


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
                     "question": r.question, "prompt": r.prompt, "answer": f.value, "aliases": list(f.aliases)})
    return pd.DataFrame(rows)


# --- runs ---------------------------------------------------------------------------------------------------

def _score(model, tok, items: pd.DataFrame, prompts: list[str], routes=None) -> pd.DataFrame:
    preds = evaluate.generate(model, tok, prompts, batch_size=64, routes=routes)
    return pd.DataFrame({"fact_id": items.fact_id.values, "prediction": preds,
                         "em": [scoring.exact_match(p, a) for p, a in zip(preds, items.aliases)],
                         "contains": [scoring.contains_match(p, a) for p, a in zip(preds, items.aliases)]})


def evaluate_models(model, tok, items: pd.DataFrame, few_shot: list[str], n_attention: int,
                    members: list[tuple[int | None, int, bool]]) -> list[tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Zero-shot answers of every member; few-shot answers and attention of the ``final`` ones. Members are
    (adapter slot or None, epoch, final): all of them in one pass over the model (slots route each
    member's rows through its adapter, :mod:`knowinject.grouped`; ``None``: the model as it is)."""
    n = len(items)
    routed = any(slot is not None for slot, _, _ in members)

    def routes(ms):
        return [slot for slot, _, _ in ms for _ in range(n)] if routed else None

    def tiled(ms):
        return pd.concat([items] * len(ms), ignore_index=True)

    final = [m for m in members if m[2]]
    zero = _score(model, tok, tiled(members), list(items.prompt) * len(members), routes(members))
    few = _score(model, tok, tiled(final), few_shot * len(final), routes(final)) if final else None
    att = (mechanism.attention_to_subject(model, tok, pd.concat([items.iloc[:n_attention]] * len(final), ignore_index=True),
                                          [slot for slot, _, _ in final for _ in range(min(n, n_attention))] if routed else None)
           if final else None)
    out, f = [], 0
    for k, (_, epoch, is_final) in enumerate(members):
        parts = [zero.iloc[k * n:(k + 1) * n].assign(prompt="zero-shot")]
        a = None
        if is_final:
            parts.append(few.iloc[f * n:(f + 1) * n].assign(prompt="few-shot"))
            m = min(n, n_attention)
            a = att.iloc[f * m:(f + 1) * m].drop(columns="subject_attention_by_layer").reset_index(drop=True)
            a["fact_id"] = items.fact_id.values[:n_attention]
            a["epoch"] = epoch
            f += 1
        out.append((pd.concat(parts, ignore_index=True).assign(epoch=epoch), a))
    return out


def evaluate_model(model, tok, items: pd.DataFrame, few_shot: list[str], n_attention: int, epoch: int,
                   final: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Zero-shot answers at every checkpoint; few-shot answers and attention at the final one."""
    return evaluate_models(model, tok, items, few_shot, n_attention, [(None, epoch, final)])[0]


def run_key(track, world_name: str, items: pd.DataFrame, train: pd.DataFrame, condition: str, seed: int,
            cfg: StudyBConfig) -> dict:
    """What a run's folder is hashed from (how runs were grouped for training is not part of it)."""
    return {"study": "B", "track": track.key, "world": world_name, "cfg": cfg.run_key(), "condition": condition,
            "seed": seed if condition != "base" else None, "train": sorted(train.fact_id),
            "test": sorted(items.item_id), "n_attention": cfg.n_attention}


@dataclass(frozen=True)
class Design:
    """Everything a track's runs share: the finetuning pool, the test questions and their few-shot
    prompts, the QA table training examples come from."""
    world_name: str
    pool: pd.DataFrame
    items: pd.DataFrame
    few_shot: tuple[str, ...]
    qa: pd.DataFrame
    cfg: StudyBConfig

    def train_facts(self, condition: str, seed: int) -> pd.DataFrame:
        return (condition_facts(self.pool, condition, seed, self.cfg.data_seed) if condition != "base"
                else self.pool.iloc[:0])

    def spec(self, track, condition: str, seed: int) -> runs.Spec:
        key = run_key(track, self.world_name, self.items, self.train_facts(condition, seed), condition, seed, self.cfg)
        slug = f"study-b-{track.name}-{condition}" + (f"-s{seed}" if condition != "base" else "")
        return runs.Spec(slug, key, seed)


def run(track, world_name: str, pool: pd.DataFrame, items: pd.DataFrame, few_shot: list[str], qa: pd.DataFrame,
        condition: str, seed: int, cfg: StudyBConfig, profile: str | None = None) -> Path:
    """One cached run: finetune ``track``'s base on the condition's facts, evaluate at each checkpoint.
    ``condition='base'`` evaluates the base model once (epoch 0)."""
    design = Design(world_name, pool, items, tuple(few_shot), qa, cfg)
    return run_jobs(track, design, [(condition, seed)], profile, progress=False)[0]


def run_jobs(track, design: Design, jobs: list[tuple[str, int]], profile: str | None = None, progress: bool = True,
             grouping: grouped.GroupConfig | None = None) -> list[Path]:
    """The cached run of every (condition, seed), in order; the missing ones are computed in batches by the
    executor's workers (LoRA runs of a batch train side by side over one base)."""
    from . import executor

    folders, tasks = plan_jobs(track, design, jobs, profile, grouping)
    executor.run_tasks(tasks, desc=f"study B {track.name}", progress=progress, gpu=executor.needs_gpu(track))
    return folders


def plan_jobs(track, design: Design, jobs: list[tuple[str, int]], profile: str | None = None,
              grouping: grouped.GroupConfig | None = None) -> tuple[list[Path], list[tuple]]:
    """(the run folder of every (condition, seed), the tasks that compute the missing ones: (callable,
    cost) pairs). The base is a task of its own (its batch holds nothing else)."""
    import functools

    grouping = grouping or grouped.config(profile)
    folders = [design.spec(track, c, s).folder(paths.RUNS) for c, s in jobs]
    todo = list(dict.fromkeys(j for j, f in zip(jobs, folders) if not runs.is_done(f)))
    # Rough seconds on one core (to start the longest tasks first): per fact and epoch, at a rate measured
    # for each track, checkpoint evaluations included.
    rate = 0.1 if track.method == "lora" else 0.0125
    batches = grouped.batches(todo, lambda j: "base" if j[0] == "base" else "trained",
                              lambda j: 5 + len(design.train_facts(*j)) * design.cfg.epochs * rate, grouping.slots)
    return folders, [(functools.partial(_compute_batch, track, design, profile, grouping, b), weight)
                     for b, weight in batches]


def _compute_batch(track, design: Design, profile: str | None, grouping: grouped.GroupConfig,
                   jobs: list[tuple[str, int]]) -> None:  # a task of :func:`plan_jobs`, run in a worker
    """Compute a batch of runs in this worker: LoRA runs side by side, their checkpoints evaluated together
    (:func:`grouped.train`); full finetunes one after another; the base evaluated once."""
    from .finetune import finetune
    from .tracks import load_base

    cfg, items, few_shot = design.cfg, design.items, list(design.few_shot)
    with runs.Batch(paths.RUNS, [design.spec(track, c, s) for c, s in jobs], profile) as batch:
        if not batch.todo:
            return
        model, tok = load_base(track)
        todo = batch.todo
        if jobs[todo[0]][0] == "base":  # the base alone (run_jobs puts it in a batch of its own)
            (p, a), = evaluate_models(model, tok, items, few_shot, cfg.n_attention, [(None, 0, True)])
            _write_run(batch.tmp(todo[0]), jobs[todo[0]], [p], [a], None, 0)
            batch.finish(todo[0])
            todo = todo[1:]
        train = {i: design.train_facts(*jobs[i]) for i in todo}
        data = {i: qa_examples(train[i], design.qa, jobs[i][1]) for i in todo}
        settings = {i: track.finetune_config(cfg.epochs, jobs[i][1]) for i in todo}
        if todo and grouped.concurrent(track.method, grouping):
            preds: dict[int, list] = {i: [] for i in todo}
            atts: dict[int, list] = {i: [] for i in todo}
            group = [grouped.Job(data[i], settings[i], tuple(cfg.checkpoints)) for i in todo]

            def evaluate_checkpoints(m, checkpoints):
                members = [(c.slot, c.epoch, c.epoch == cfg.epochs) for c in checkpoints]
                for c, (p, a) in zip(checkpoints, evaluate_models(m, tok, items, few_shot, cfg.n_attention, members)):
                    i = todo[c.job]
                    preds[i].append(p)
                    if a is not None:
                        atts[i].append(a)
                    if c.final:
                        _write_run(batch.tmp(i), jobs[i], preds[i], atts[i], c.result, len(train[i]))
                        batch.finish(i)

            grouped.train(model, tok, group, evaluate_checkpoints, grouping)
            return
        for i in todo:
            model, tok = load_base(track)  # a full finetune changes the model: a fresh base for every run
            preds, atts = [], []

            def checkpoint(epoch, m, preds=preds, atts=atts, tok=tok):
                if epoch in cfg.checkpoints:
                    p, a = evaluate_model(m, tok, items, few_shot, cfg.n_attention, epoch, final=epoch == cfg.epochs)
                    preds.append(p)
                    if a is not None:
                        atts.append(a)

            _, result = finetune(model, tok, data[i], settings[i], progress=False, on_epoch_end=checkpoint)
            _write_run(batch.tmp(i), jobs[i], preds, atts, result, len(train[i]))
            batch.finish(i)


def _write_run(tmp: Path, job: tuple[str, int], preds: list, atts: list, result, n_train: int) -> None:
    condition, seed = job
    if result is not None:
        result.log.to_csv(tmp / "loss_log.csv", index=False)
        (tmp / "train_summary.json").write_text(json.dumps({"n_train": n_train, **result.summary()}, indent=2))
    write_jsonl(pd.concat(preds, ignore_index=True).assign(condition=condition, seed=seed), tmp / "predictions.jsonl")
    write_jsonl(pd.concat(atts, ignore_index=True).assign(condition=condition, seed=seed), tmp / "attention.jsonl")


def design(track, world, pool, test, qa, cfg: StudyBConfig) -> Design:
    """The test questions (on phrasings the track never trains on), their few-shot prompts, and the pool."""
    items = test_items(test, qa, track.unseen_phrasing, cfg.data_seed)
    pool_qa = qa[qa.fact_id.isin(pool.fact_id) & (qa.template_split == "train")]
    few_shot = render.few_shot_prompts(items, pool_qa, cfg.k_shot, numpy_rng(cfg.data_seed, "study-b-shots"))
    # Training examples come from the pool's training templates only: the workers need no more of the table.
    return Design(world.folder.name, pool, items, tuple(few_shot), pool_qa, cfg)


def all_jobs(cfg: StudyBConfig) -> list[tuple[str, int]]:
    return [("base", 0)] + [(c, s) for s in cfg.seeds for c in cfg.conditions]


def run_all(track, world, pool, test, qa, cfg: StudyBConfig, profile: str | None = None,
            progress: bool = True) -> list[Path]:
    """The base evaluation and every (condition, seed) run of one track; finished runs are reused."""
    return run_jobs(track, design(track, world, pool, test, qa, cfg), all_jobs(cfg), profile, progress)


@dataclass
class TrackResult:
    """Everything one track's Study B design produced (notebook 05 runs one per track and design)."""
    pool: pd.DataFrame
    test: pd.DataFrame
    folders: list[Path]
    preds: pd.DataFrame
    attention: pd.DataFrame
    fit: pd.DataFrame
    seconds: float


def run_track(track, world, cfg: StudyBConfig, profile: str | None = None, progress: bool = True) -> TrackResult:
    """Candidates, the pool/test split, every run (cached) and their collected tables, for one track."""
    return run_tracks([(track, world, cfg)], profile, progress)[0]


def run_tracks(setups: list[tuple], profile: str | None = None, progress: bool = True,
               also: list[tuple] = ()) -> list[TrackResult]:
    """:func:`run_track` for several ``(track, world, cfg)`` designs, their runs computed by one pool of
    workers (no worker waits at the end of one design while the next could start); ``also``: other
    executor tasks to share the pool with (the theory model's settings, :func:`theory.task`)."""
    import time

    from . import executor

    start = time.perf_counter()
    prepared = []
    for track, world, cfg in setups:
        pool, test = split(candidates(track, world, profile, cfg.relations), cfg)
        qa = world.table("qa_realworld" if track.name == "smollm2" else "qa")
        folders, tasks = plan_jobs(track, design(track, world, pool, test, qa, cfg), all_jobs(cfg), profile)
        prepared.append((pool, test, folders, tasks))
    executor.run_tasks([t for *_, tasks in prepared for t in tasks] + list(also), desc="study B", progress=progress,
                       gpu=any(executor.needs_gpu(s[0]) for s in setups))
    seconds = round(time.perf_counter() - start, 1)
    out = []
    for pool, test, folders, _ in prepared:
        preds, att, fit = collect(folders, test)
        out.append(TrackResult(pool, test, folders, preds, att, fit, seconds))
    return out


def collect(folders: list[Path], test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(predictions, attention, training summaries) of many runs, with the test facts' buckets joined."""
    meta = test[["fact_id", "relation", "known_bucket", "popularity_bucket", "level", "base_known"]]
    preds = pd.concat([read_jsonl(f / "predictions.jsonl") for f in folders], ignore_index=True).merge(meta, on="fact_id")
    preds["generic"] = generic_flags(preds)
    att = pd.concat([read_jsonl(f / "attention.jsonl") for f in folders], ignore_index=True)
    fits = []
    for f in folders:
        if (f / "train_summary.json").exists():
            s = json.loads((f / "train_summary.json").read_text())
            cfg = json.loads((f / "config.json").read_text())
            fits.append({"condition": cfg["condition"], "seed": cfg["seed"], "n_train": s["n_train"],
                         **{f"loss_epoch_{i + 1}": v for i, v in enumerate(s["epoch_loss"])},
                         "seconds": s["seconds"], "tokens_per_s": s["tokens_per_s"],
                         "group_runs": s.get("group_runs", 1.0)})  # runs that shared its steps (and seconds)
    return preds, att, pd.DataFrame(fits)


def generic_flags(preds: pd.DataFrame) -> pd.Series:
    """Per answer: wrong, and equal to the most frequent answer its run gave for that relation at
    that checkpoint and prompt (the "generic plausible answer" of Study B's mechanism)."""
    norm = preds.prediction.map(lambda p: scoring.normalize_answer(scoring.first_line(p)))
    keys = [preds[c] for c in ("condition", "seed", "epoch", "prompt", "relation")]
    mode = norm.groupby(keys).transform(lambda s: s.value_counts().index[0] if len(s) else "")
    return (norm == mode) & ~preds.em.astype(bool) & (norm != "")


# --- summaries and claims -----------------------------------------------------------------------------------

def summarize(preds: pd.DataFrame, value: str = "em") -> pd.DataFrame:
    """Accuracy by condition x epoch x prompt x test bucket: mean over items of the seed-averaged
    score, 95% bootstrap interval over items."""
    rows = []
    buckets = {"all": None, "known": ("known_bucket", "known"), "unknown": ("known_bucket", "unknown"),
               "popular": ("popularity_bucket", "popular"), "unpopular": ("popularity_bucket", "unpopular")}
    for (cond, epoch, prompt), g in preds.groupby(["condition", "epoch", "prompt"]):
        for bucket, sel in buckets.items():
            b = g if sel is None else g[g[sel[0]] == sel[1]]
            per_item = b.groupby("fact_id")[value].mean()
            mean, lo, hi = stats.bootstrap_ci(per_item)
            rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "bucket": bucket, "metric": value,
                         "mean": mean, "ci_low": lo, "ci_high": hi, "n_items": len(per_item),
                         "n_seeds": b.seed.nunique()})
    return pd.DataFrame(rows)


def summarize_by_level(preds: pd.DataFrame, value: str = "em") -> pd.DataFrame:
    """Accuracy by condition x epoch x prompt x the test fact's popularity level (tiny: exposure
    bucket; SmolLM2: population quintile): mean of seed-averaged scores, bootstrap over items."""
    rows = []
    for (cond, epoch, prompt, level), g in preds.groupby(["condition", "epoch", "prompt", "level"]):
        per_item = g.groupby("fact_id")[value].mean()
        mean, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "level": level, "metric": value,
                     "mean": mean, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


def contrast(preds: pd.DataFrame, a: str, b: str, value: str = "em", **where) -> stats.Effect:
    """Condition a minus condition b on the same test facts, with the two-stage interval (each
    condition's runs resampled, then the shared test facts); ``where`` filters rows (e.g.
    ``epoch=8, prompt="zero-shot"``)."""
    d = preds
    for k, v in where.items():
        d = d[d[k] == v]
    ya = stats.runs_by_items(d[d.condition == a], value, "seed", "fact_id")
    yb = stats.runs_by_items(d[d.condition == b], value, "seed", "fact_id")
    if ya.empty or yb.empty:
        return stats.Effect.empty()
    return stats.two_stage(ya, yb, paired_items=True)


def mechanism_summary(preds: pd.DataFrame, att: pd.DataFrame) -> pd.DataFrame:
    """Attention share on the subject and the generic-answer rate, per condition and epoch."""
    rows = []
    for (cond, epoch), g in att.groupby(["condition", "epoch"]):
        per_item = g.groupby("fact_id").subject_share.mean()
        m, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": "zero-shot", "metric": "subject_attention_share",
                     "mean": m, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    for (cond, epoch, prompt), g in preds.groupby(["condition", "epoch", "prompt"]):
        per_item = g.groupby("fact_id").generic.mean()
        m, lo, hi = stats.bootstrap_ci(per_item)
        rows.append({"condition": cond, "epoch": epoch, "prompt": prompt, "metric": "generic_answer_rate",
                     "mean": m, "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


def claims(preds: pd.DataFrame, att: pd.DataFrame, cfg: StudyBConfig, track: str, design: str = "main") -> pd.DataFrame:
    """The B1-B3 rows of the findings table for one track (zero-shot, last checkpoint, all test facts)."""
    from . import findings

    last = cfg.epochs
    rows = []
    e = contrast(preds, "known", "unknown", epoch=last, prompt="zero-shot")
    rows.append(findings.row("B1", track, "exact match, known-half minus unknown-half finetune (zero-shot, held-out "
                             "test facts)", e, findings.directional(e.ci_low, e.ci_high), design))
    e = contrast(preds, "known", "whole", epoch=last, prompt="zero-shot")
    rows.append(findings.row("B2", track, "exact match, known-half minus whole-pool finetune (zero-shot)", e,
                             findings.non_inferior(e.ci_low, e.ci_high, findings.B2_MARGIN), design))
    ea = contrast(att, "known", "unknown", value="subject_share", epoch=last)
    eg = contrast(preds, "unknown", "known", value="generic", epoch=last, prompt="zero-shot")
    verdict = findings.both(findings.directional(ea.ci_low, ea.ci_high), findings.directional(eg.ci_low, eg.ci_high))
    rows.append(findings.row("B3", track, "subject share of attention from the answer position, known-half minus "
                             f"unknown-half finetune (generic-answer rate, unknown minus known: {eg.effect:+.3f} "
                             f"[{eg.ci_low:+.3f}, {eg.ci_high:+.3f}])", ea, verdict, design))
    return pd.DataFrame(rows)
