"""Study B's theory model, as a third instrument: a one-layer, single-head, attention-only
transformer with fixed token embeddings, trained on token-level (subject, relation, answer) facts.

Ghosal et al. (2024) prove their mechanism for this model. A fact is the two-token input
``[subject, relation]``; the relation token's position attends to both tokens and the answer is
read off the attended value vectors through the (fixed) answer embeddings:

    logit(a) = phi(a)^T W_V (att_s phi(s) + att_r phi(r)),   att = softmax(phi(r)^T W_KQ [phi(s), phi(r)])

Only ``W_V`` and ``W_KQ`` train. Pretraining draws subjects from a Zipf law and relations uniformly,
so frequent subjects are stored and rare ones are not. The **factual salience** of a fact is the
paper's S(s, r, a) = phi(a)^T W_V phi(s): how strongly the value matrix maps the subject onto its
answer. Each relation's answers follow a Zipf prior too, so a relation has a generic answer that
the relation token alone can predict. Finetuning on the pool's top half by salience ("known") vs
its bottom half ("unknown") then tests B1-B3 where every quantity is exact: accuracy on test facts
of other subjects (stored in pretraining, never finetuned on), attention on the subject token, the
rate of wrong answers equal to the relation's generic answer, and salience itself.

A whole seed (embeddings, facts, pretraining, every finetune) takes well under a second.
Usage: ``rows = theory.run_all(TheoryConfig(), profile)``; ``theory.summarize(rows)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from knowinject.core import paths, stages
from knowinject.core.config import require
from knowinject.core.runs import cached_table
from knowinject.core.seeding import numpy_rng

from knowinject.studies import findings

from knowinject import stats

CONDITIONS = ("base", "known", "unknown", "random", "whole")


@dataclass(frozen=True)
class TheoryConfig:
    n_subjects: int = 1000        # subject tokens
    n_relations: int = 4          # relation tokens
    n_answers: int = 16           # answer tokens per relation (each relation has its own)
    subject_zipf: float = 1.0     # pretraining draws subject s with probability ~ rank(s)**-subject_zipf
    answer_zipf: float = 0.5      # a relation's answers have prior ~ rank**-answer_zipf: a generic answer exists
    dim: int = 128                # embedding width; fixed random embeddings, so storage is capacity-limited
    pretrain_steps: int = 3000
    pretrain_batch: int = 256
    pretrain_lr: float = 0.01     # Adam
    half_size: int = 128          # finetuning facts per half, balanced over relations
    n_test: int = 512             # test facts (other subjects, stored in pretraining, never finetuned on)
    finetune_epochs: int = 100    # full-batch Adam steps over the condition's facts
    finetune_lr: float = 0.003    # at 0.01 every finetune overwrites stored facts (see notebook 05's sensitivity)
    seeds: tuple[int, ...] = tuple(range(10))  # each seed: new embeddings, facts, pretraining and finetunes

    def __post_init__(self):
        for name in ("n_subjects", "n_relations", "n_answers", "dim", "pretrain_steps", "pretrain_batch",
                     "half_size", "n_test", "finetune_epochs"):
            require(getattr(self, name) >= 1, f"TheoryConfig.{name} must be >= 1, got {getattr(self, name)}")
        require(self.n_answers >= 2, "TheoryConfig.n_answers must be >= 2 (a generic answer and others)")
        require(self.half_size >= self.n_relations and self.n_test >= self.n_relations,
                "TheoryConfig.half_size and n_test must be >= n_relations (balanced over relations)")
        require(2 * self.half_size + self.n_test <= self.n_subjects * self.n_relations,
                "TheoryConfig: 2 * half_size + n_test facts must fit in n_subjects * n_relations")
        require(len(self.seeds) >= 1, "TheoryConfig.seeds must list at least one seed")


class OneLayerAttention(torch.nn.Module):
    """The theory model: fixed embeddings, trainable value and key-query matrices, one head."""

    def __init__(self, embeddings: torch.Tensor, answer_ids: torch.Tensor, generator: torch.Generator):
        super().__init__()
        d = embeddings.shape[1]
        self.register_buffer("emb", embeddings)
        self.register_buffer("answer_ids", answer_ids)
        self.W_V = torch.nn.Parameter(torch.randn(d, d, generator=generator) * 0.01)
        self.W_KQ = torch.nn.Parameter(torch.randn(d, d, generator=generator) * 0.01)

    def attention(self, s, r):
        """[B, 2] attention of the relation position on (subject, relation)."""
        q, ks, kr = self.emb[r], self.emb[s], self.emb[r]
        scores = torch.stack([((q @ self.W_KQ) * ks).sum(-1), ((q @ self.W_KQ) * kr).sum(-1)], -1)
        return scores.softmax(-1)

    def forward(self, s, r):
        # make bench's rule: 2 FLOPs a multiply-add, x3 in training; the value and key-query products and
        # the answer logits (the embeddings are fixed, their lookups are not matmuls).
        d, n = self.W_V.shape[0], len(self.answer_ids)
        stages.count(2.0 * len(s) * (3 * d * d + d * n) * (3 if torch.is_grad_enabled() else 1), "fp32")
        att = self.attention(s, r)
        h = att[:, :1] * (self.emb[s] @ self.W_V.T) + att[:, 1:] * (self.emb[r] @ self.W_V.T)
        return h @ self.emb[self.answer_ids].T, att  # logits over every relation's answers

    def salience(self, s, a):
        """S(s, r, a) = phi(a)^T W_V phi(s) for answer token ids ``a``."""
        return ((self.emb[s] @ self.W_V.T) * self.emb[a]).sum(-1)


@dataclass
class World:
    """One seed's facts: ``answer[s, r]`` (a token id), subject popularity, and the token layout."""
    answer: np.ndarray
    popularity: np.ndarray
    relation_ids: np.ndarray
    answer_ids: np.ndarray
    generic: np.ndarray           # per relation, the token id of its most probable (generic) answer


def make_world(cfg: TheoryConfig, seed: int) -> tuple[World, torch.Tensor]:
    rng = numpy_rng(seed, "theory-world")
    n_s, n_r, n_a = cfg.n_subjects, cfg.n_relations, cfg.n_answers
    relation_ids = n_s + np.arange(n_r)
    answer_ids = n_s + n_r + np.arange(n_r * n_a)
    prior = np.arange(1, n_a + 1, dtype=float) ** -cfg.answer_zipf
    prior /= prior.sum()
    answer = np.stack([answer_ids[r * n_a + rng.choice(n_a, n_s, p=prior)] for r in range(n_r)], 1)
    popularity = np.arange(1, n_s + 1, dtype=float) ** -cfg.subject_zipf
    popularity = popularity[rng.permutation(n_s)] / popularity.sum()
    emb = torch.tensor(rng.standard_normal((n_s + n_r + n_r * n_a, cfg.dim)) / np.sqrt(cfg.dim), dtype=torch.float32)
    generic = answer_ids[np.arange(n_r) * n_a]
    return World(answer, popularity, relation_ids, answer_ids, generic), emb


def _target(world: World, a: np.ndarray) -> torch.Tensor:
    """Answer token ids -> their index among the model's answer logits."""
    return torch.as_tensor(a - world.answer_ids[0], dtype=torch.long)


def pretrain(model: OneLayerAttention, world: World, cfg: TheoryConfig, seed: int) -> None:
    rng = numpy_rng(seed, "theory-pretrain")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pretrain_lr)
    n_r = len(world.relation_ids)
    for _ in range(cfg.pretrain_steps):
        s = rng.choice(len(world.popularity), cfg.pretrain_batch, p=world.popularity)
        r = rng.integers(n_r, size=cfg.pretrain_batch)
        logits, _ = model(torch.as_tensor(s), torch.as_tensor(world.relation_ids[r]))
        loss = F.cross_entropy(logits, _target(world, world.answer[s, r]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def finetune(model: OneLayerAttention, world: World, facts: pd.DataFrame, cfg: TheoryConfig) -> list[float]:
    """Full-batch Adam on the condition's facts; returns the loss per epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.finetune_lr)
    s, r = torch.tensor(facts.subject.to_numpy()), torch.tensor(world.relation_ids[facts.relation.to_numpy()])
    y = _target(world, facts.answer.to_numpy())
    losses = []
    for _ in range(cfg.finetune_epochs):
        logits, _ = model(s, r)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def measure(model: OneLayerAttention, world: World, facts: pd.DataFrame) -> pd.DataFrame:
    """Per fact: correct (argmax over every answer), attention on the subject and on the relation token
    (they sum to 1: the relation position attends to these two), generic wrong answer, salience; where
    ``facts`` has a ``swap_subject``, the subject swap: whether the answer stays the same when the
    subject token is another subject's, and how far that answer's log-probability moves."""
    s = torch.tensor(facts.subject.to_numpy())
    rel = facts.relation.to_numpy()
    r = torch.as_tensor(world.relation_ids[rel])
    logits, att = model(s, r)
    top = logits.argmax(-1)
    pred = world.answer_ids[top.numpy()]
    correct = pred == facts.answer.to_numpy()
    out = facts.assign(correct=correct, subject_attention=att[:, 0].numpy(), relation_attention=att[:, 1].numpy(),
                       generic=(pred == world.generic[rel]) & ~correct,
                       salience=model.salience(s, torch.tensor(facts.answer.to_numpy())).numpy())
    if "swap_subject" in facts:
        swapped, _ = model(torch.tensor(facts.swap_subject.to_numpy()), r)
        rows = torch.arange(len(top))
        change = swapped.log_softmax(-1)[rows, top] - logits.log_softmax(-1)[rows, top]
        out = out.assign(swap_unchanged=(swapped.argmax(-1) == top).numpy(), swap_logp_change=change.numpy())
    return out


def swap_partners(test: pd.DataFrame, seed: int) -> np.ndarray:
    """Each test fact's swap partner: the next subject in a random cycle of its relation's test facts whose
    answer differs (so an unchanged answer is the model ignoring the subject, not a shared fact)."""
    rng = numpy_rng(seed, "theory-subject-swap")
    partner = test.subject.to_numpy().copy()
    for _, g in test.groupby("relation", sort=True):
        order = g.index[rng.permutation(len(g))]
        for k, i in enumerate(order):
            for step in range(1, len(order)):
                j = order[(k + step) % len(order)]
                if test.answer[j] != test.answer[i] and test.subject[j] != test.subject[i]:
                    partner[test.index.get_loc(i)] = test.subject[j]
                    break
    return partner


def split(world: World, cfg: TheoryConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test) facts, subjects disjoint, balanced over relations."""
    rng = numpy_rng(seed, "theory-split")
    n_s, n_r = world.answer.shape
    subjects = rng.permutation(n_s)
    pool_s, test_s = subjects[: n_s // 2], subjects[n_s // 2:]

    def facts(subs, n):
        per = max(1, n // n_r)
        rows = [(s, r) for r in range(n_r) for s in rng.permutation(subs)[:per]]
        return pd.DataFrame({"subject": [s for s, _ in rows], "relation": [r for _, r in rows],
                             "answer": [world.answer[s, r] for s, r in rows],
                             "popularity": [world.popularity[s] for s, _ in rows]})

    return facts(pool_s, 2 * cfg.half_size), facts(test_s, cfg.n_test)


def condition_facts(pool: pd.DataFrame, condition: str, seed: int) -> pd.DataFrame:
    """The pool facts a condition finetunes on: halves by the pretrained model's salience, per relation."""
    if condition == "whole":
        return pool
    if condition == "random":
        rng = numpy_rng(seed, "theory-random-half")
        picked = [g.index[rng.permutation(len(g))[: len(g) // 2]] for _, g in pool.groupby("relation")]
        return pool.loc[np.sort(np.concatenate(picked))]
    if condition not in ("known", "unknown"):
        raise ValueError(f"unknown condition {condition!r}; conditions: {', '.join(CONDITIONS)}")
    top = [g.sort_values("base_salience", ascending=False, kind="stable").index[: len(g) // 2]
           for _, g in pool.groupby("relation")]
    top = pool.loc[np.sort(np.concatenate(top))]
    return top if condition == "known" else pool.drop(top.index)


def run_seed(cfg: TheoryConfig, seed: int) -> pd.DataFrame:
    """One seed: every condition's test-fact measurements (``condition='base'`` is the pretrained model)."""
    torch.manual_seed(seed)
    world, emb = make_world(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    model = OneLayerAttention(emb, torch.as_tensor(world.answer_ids), gen)
    pretrain(model, world, cfg, seed)
    pool, test = split(world, cfg, seed)
    pool = pool.assign(base_salience=measure(model, world, pool).salience.to_numpy())
    base = measure(model, world, test)
    # The test facts' own knownness: the pretrained model's salience, split at the median per relation.
    median = base.groupby("relation").salience.transform("median")
    test = test.assign(item=np.arange(len(test)), base_salience=base.salience.to_numpy(),
                       test_bucket=np.where(base.salience.to_numpy() >= median, "known", "unknown"),
                       base_correct=base.correct.to_numpy(), swap_subject=swap_partners(test, seed))
    parts = [measure(model, world, test).assign(condition="base", final_loss=np.nan, n_train=0)]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for condition in CONDITIONS[1:]:
        model.load_state_dict(start)
        train = condition_facts(pool, condition, seed)
        losses = finetune(model, world, train, cfg)
        parts.append(measure(model, world, test).assign(condition=condition, final_loss=losses[-1],
                                                        n_train=len(train)))
    return pd.concat(parts, ignore_index=True).assign(seed=seed)


def run_all(cfg: TheoryConfig, profile: str | None = None) -> pd.DataFrame:
    """Every seed, as one cached table (one row per seed x condition x test fact)."""
    def make() -> pd.DataFrame:
        with stages.stage("one-layer model"):
            return pd.concat([run_seed(cfg, s) for s in cfg.seeds], ignore_index=True)

    # v3: the subject swap (B3's causal reading) measured on every test fact
    return cached_table(paths.RUNS, "theory", {"theory": asdict(cfg), "v": 3}, make, "theory.jsonl",
                        profile=profile)


def task(cfg: TheoryConfig, profile: str | None = None) -> tuple:
    """:func:`run_all` as an executor task ``(callable, rough seconds on one core)``, to share the workers
    with other grids."""
    import functools
    return functools.partial(_compute, cfg, profile), 0.002 * len(cfg.seeds) * (cfg.pretrain_steps + cfg.finetune_epochs)


def _compute(cfg: TheoryConfig, profile: str | None) -> None:
    run_all(cfg, profile)


# --- summaries and claims ---------------------------------------------------------------------------------------

METRICS = {"correct": "accuracy on test facts", "subject_attention": "attention on the subject token",
           "relation_attention": "attention on the relation token",
           "generic": "wrong answers equal to the relation's generic answer", "salience": "factual salience",
           "swap_unchanged": "answer unchanged when the subject is swapped",
           "swap_logp_change": "change in the answer's log-probability when the subject is swapped"}


def _bounds(metric: str) -> tuple[float, float] | None:
    """Every metric but salience (a dot product) and the swap's log-probability change is a rate or an
    attention weight, in [0, 1]."""
    return None if metric in ("salience", "swap_logp_change") else (0, 1)


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    return stats.runs_by_items(rows, metric, "seed", "item")


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per condition, metric and test bucket: the mean over seeds and test facts with the two-stage
    interval (seeds, then facts; each seed draws its own world and facts)."""
    out = []
    groups = [((c, "all"), g) for c, g in rows.groupby("condition")] + list(rows.groupby(["condition", "test_bucket"]))
    for (cond, bucket), g in groups:
        for metric in METRICS:
            e = stats.two_stage(_by_seed(g, metric), bounds=_bounds(metric))
            out.append({"condition": cond, "test_bucket": bucket, "metric": metric, "mean": e.effect,
                        "ci_low": e.ci_low, "ci_high": e.ci_high, "n_items": int(g.groupby("seed").size().mean()),
                        "n_seeds": g.seed.nunique()})
    return pd.DataFrame(out)


def contrast(rows: pd.DataFrame, a: str, b: str, metric: str) -> stats.Effect:
    """Condition a minus condition b on the same test facts of the same pretrained model (paired over
    seeds and facts), with the two-stage interval."""
    return stats.two_stage(_by_seed(rows[rows.condition == a], metric), _by_seed(rows[rows.condition == b], metric),
                           paired_items=True, shared_runs=True, bounds=_bounds(metric))


def claims(rows: pd.DataFrame, track: str = "one-layer", design: str = "main") -> pd.DataFrame:
    """B1-B3 rows of the findings table for the theory model (same rules as the other tracks). Every seed
    pretrains its own world and model and finetunes it in each condition (runs paired by seed), so the
    seeds resampled are the pretrained bases: ``n_bases`` is the number of seeds."""

    out = []
    # R0: the regime. The theory's finetuning teaches the answer format of facts the model has stored, so its
    # claims presume that finetuning on the whole pool lifts accuracy above the pretrained model's.
    e = contrast(rows, "whole", "base", "correct")
    out.append(findings.row("R0", track, "accuracy on test facts, whole-pool finetune minus the pretrained model", e,
                            findings.regime(e), design, n_bases=e.n_seeds))
    e = contrast(rows, "known", "unknown", "correct")
    out.append(findings.row("B1", track, "accuracy on test facts, known-half minus unknown-half finetune (halves by "
                            "factual salience)", e, findings.judge(e, findings.directional), design,
                            n_bases=e.n_seeds))
    e = contrast(rows, "known", "whole", "correct")
    out.append(findings.row("B2", track, "accuracy on test facts, known-half minus whole-pool finetune", e,
                            findings.judge(e, findings.non_inferior, findings.B2_MARGIN), design,
                            n_bases=e.n_seeds))
    ea = contrast(rows, "known", "unknown", "subject_attention")
    eg = contrast(rows, "unknown", "known", "generic")
    verdict = findings.both(findings.judge(ea, findings.directional), findings.judge(eg, findings.directional))
    out.append(findings.row("B3", track, "attention on the subject token, known-half minus unknown-half finetune "
                            f"(generic-answer rate, unknown minus known: {eg.effect:+.3f} [{eg.ci_low:+.3f}, "
                            f"{eg.ci_high:+.3f}])", ea, verdict, design, n_bases=ea.n_seeds))
    es = contrast(rows, "unknown", "known", "swap_unchanged")
    el = contrast(rows, "unknown", "known", "swap_logp_change")
    out.append(findings.row("B3-swap", track, "answer unchanged when the subject token is swapped for another "
                            "subject of the relation, unknown-half minus known-half finetune (change in the answer's "
                            f"log-probability, unknown minus known: {el.effect:+.3f} [{el.ci_low:+.3f}, "
                            f"{el.ci_high:+.3f}] nats)", es, findings.judge(es, findings.directional), design,
                            n_bases=es.n_seeds))
    return pd.DataFrame(out)
