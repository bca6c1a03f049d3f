"""What a base model knows about each fact, before any finetuning.

Three measures per fact, all on held-out question templates with few-shot exemplars about *other*
subjects of the same relation: greedy correctness, the probability of the gold answer, and the
SliCK category of Gekhman et al. (2024) from several exemplar sets: HighlyKnown (greedy right with
every set), MaybeKnown (with some), WeaklyKnown (greedy never, sampling at T=0.5 sometimes) and Unknown.

Usage: ``table = knownness.measure(model, tok, facts, qa, KnownnessConfig())``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from knowinject.core import paths, stages
from knowinject.core.config import require
from knowinject.core.runs import cached_table
from knowinject.core.seeding import numpy_rng

from knowinject.data import render

from knowinject.train import models
from knowinject.train.finetune import resolve_precision

from knowinject.eval import evaluate, scoring


@dataclass(frozen=True)
class KnownnessConfig:
    k_shot: int = 3            # exemplars per prompt
    n_sets: int = 2            # exemplar sets (SliCK uses 10; greedy agreement across them separates Highly/Maybe)
    n_samples: int = 2         # samples at temperature 0.5 per set (only for facts greedy never gets)
    temperature: float = 0.5
    seed: int = 0
    batch_size: int = 32
    # auto: bf16 where the CPU/GPU supports it, the dtype SmolLM2's LoRA runs train and evaluate their base in
    # (tracks.load_base), so "known before finetuning" is measured as Study B's base model answers. On the
    # 2-core CPU it is also 3x faster than fp32 (notebook 03: 594 s in fp32).
    precision: str = "auto"

    def __post_init__(self):
        require(self.k_shot >= 0, f"KnownnessConfig.k_shot must be >= 0, got {self.k_shot}")
        require(self.n_sets >= 1, f"KnownnessConfig.n_sets must be >= 1, got {self.n_sets}")
        require(self.n_samples >= 0, f"KnownnessConfig.n_samples must be >= 0, got {self.n_samples}")
        require(self.precision in ("auto", "bf16", "fp32"),
                f"KnownnessConfig.precision must be auto, bf16 or fp32, got {self.precision!r}")


def few_shot_prompts(facts: pd.DataFrame, qa: pd.DataFrame, k: int, set_index: int, seed: int) -> list[str]:
    """One prompt per fact: k solved train-template questions about other subjects of the same
    relation, then the fact's first held-out question."""
    held = qa[qa.template_split == "heldout"].drop_duplicates("fact_id").set_index("fact_id")
    items = facts[["subject", "relation"]].assign(prompt=list(held.prompt[facts.fact_id]))
    return render.few_shot_prompts(items, qa[qa.template_split == "train"], k,
                                   numpy_rng(seed, f"knownness-shots-{set_index}"))


def slick_category(greedy_hits: int, n_sets: int, sample_hits: int) -> str:
    if greedy_hits == n_sets:
        return "HighlyKnown"
    if greedy_hits > 0:
        return "MaybeKnown"
    return "WeaklyKnown" if sample_hits > 0 else "Unknown"


def measure(model, tokenizer, facts: pd.DataFrame, qa: pd.DataFrame, cfg: KnownnessConfig) -> pd.DataFrame:
    """One row per fact: zero-shot and few-shot greedy correctness, gold probability, SliCK category."""
    out = facts[["fact_id", "subject", "relation", "kind", "value", "aliases", "popularity", "exposure"]].copy()
    held = qa[qa.template_split == "heldout"].drop_duplicates("fact_id").set_index("fact_id")
    zero = evaluate.generate(model, tokenizer, list(held.prompt[out.fact_id]), batch_size=cfg.batch_size)
    out["zero_shot_prediction"] = zero
    out["zero_shot_em"] = [scoring.exact_match(p, a) for p, a in zip(zero, out.aliases)]
    greedy_hits = np.zeros(len(out), dtype=int)
    gold_lp = np.zeros((cfg.n_sets, len(out)))
    for s in range(cfg.n_sets):
        prompts = few_shot_prompts(out, qa, cfg.k_shot, s, cfg.seed)
        preds = evaluate.generate(model, tokenizer, prompts, batch_size=cfg.batch_size)
        hits = np.array([scoring.exact_match(p, a) for p, a in zip(preds, out.aliases)])
        greedy_hits += hits
        if s == 0:
            out["few_shot_prediction"], out["few_shot_em"] = preds, hits
            out["few_shot_contains"] = [scoring.contains_match(p, a) for p, a in zip(preds, out.aliases)]
        gold_lp[s] = evaluate.continuation_logprobs(model, tokenizer, prompts, [f" {v}" for v in out.value],
                                                    batch_size=cfg.batch_size)
    out["gold_prob"] = np.exp(gold_lp).mean(axis=0)
    sample_hits = np.zeros(len(out), dtype=int)
    never = np.flatnonzero(greedy_hits == 0)  # sampling only matters where greedy never answers right
    if cfg.n_samples and len(never):
        for s in range(cfg.n_sets):
            prompts = few_shot_prompts(out.iloc[never], qa, cfg.k_shot, s, cfg.seed)
            for j in range(cfg.n_samples):
                preds = evaluate.generate(model, tokenizer, prompts, batch_size=cfg.batch_size,
                                          temperature=cfg.temperature, seed=cfg.seed * 1000 + s * 100 + j)
                sample_hits[never] += [scoring.exact_match(p, a) for p, a in zip(preds, out.aliases.iloc[never])]
    out["greedy_hits"], out["sample_hits"] = greedy_hits, sample_hits
    out["slick"] = [slick_category(g, cfg.n_sets, h) for g, h in zip(greedy_hits, sample_hits)]
    return out


def popularity_buckets(df: pd.DataFrame, n: int = 5, by: str = "relation") -> pd.Series:
    """Popularity quantile (Q1 = least popular) within each relation, since populations of countries
    and cities are not comparable."""
    labels = [f"Q{i + 1}" for i in range(n)]
    return df.groupby(by, group_keys=False).popularity.apply(
        lambda p: pd.qcut(p.rank(method="first"), n, labels=labels)).astype(str)


def notebook_settings(params: dict, seed: int) -> tuple[KnownnessConfig, int | None]:
    """(config, subset) of the measurement notebook 03 makes with its papermill ``params`` (``k_shot``,
    ``n_sets``, ``n_samples``, ``subset``; absent ones at the defaults its parameters cell declares), so
    Study B ranks its candidate facts by that same cached table."""
    cfg = KnownnessConfig(k_shot=params.get("k_shot", 3), n_sets=params.get("n_sets", 2),
                          n_samples=params.get("n_samples", 2), seed=seed)
    return cfg, params.get("subset") or None


def measure_run(model_name: str, facts_table: str, world, cfg: KnownnessConfig, profile: str | None = None,
                subset: int | None = None) -> pd.DataFrame:
    """:func:`measure` for a model (``smollm2``, a folder, a hub id) on one of the world's fact tables
    (``realworld`` or ``facts``), cached as a run keyed by all of them."""
    qa_table = "qa_realworld" if facts_table == "realworld" else "qa"
    precision = resolve_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    key = {"model": models.content_key(model_name),  # the weights, never a folder's name
           "world": world.folder.name, "facts": facts_table, "subset": subset,
           "knownness": {**asdict(cfg), "precision": precision}}
    if precision == "fp32":  # the key of every measurement made before the precision was a setting
        key["knownness"].pop("precision")

    def make() -> pd.DataFrame:
        with stages.stage("knownness"):
            model, tok = models.load(model_name, dtype=torch.bfloat16 if precision == "bf16" else None)
            facts = world.table(facts_table)
            if subset is not None:
                facts = facts.iloc[numpy_rng(cfg.seed, "knownness-subset").permutation(len(facts))[:subset]]
            return measure(model, tok, facts, world.table(qa_table), cfg)

    return cached_table(paths.RUNS, f"knownness-{facts_table}", key, make, "knownness.jsonl", seed=cfg.seed,
                        profile=profile)

