"""Each real model's base accuracy on the GeoNames four-way questions in both multiple-choice forms, against
chance (``make mc-forms``; not part of ``make reproduce``).

- **Lettered** (MMLU's form, today's `smollm2-mc` track): the question, its options as ``A. ...`` to ``D. ...``
  and ``Answer:``; the model's choice is the letter it gives the highest probability.
- **Cloze** (OLMES's form for small base models, lm-evaluation-harness's ``acc`` / ``acc_norm``): the question as
  the compendium's QA prompt, each option's text scored as its continuation; ``acc`` takes the highest summed
  log-likelihood, ``acc_norm`` that sum divided by the option's length in bytes.

Zero-shot and with 3 solved questions of the same relation before it (in the same form). The base models are
loaded as Study B evaluates them (bf16 where the CPU has it). Accuracy is over every question, with a 95%
bootstrap interval; a form is *above chance* when its interval lies above 1 / 4. Beside them, a blind guess
that knows only how often each answer occurs (:func:`frequency_baseline`). This measures which form and model an
instrument can use; it trains nothing. Writes ``data/results/mc_forms.csv``.
Usage: ``python -m knowinject.bench.mc_forms``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from knowinject.core import paths
from knowinject.core.config import build, stage_params
from knowinject.core.provenance import save_table
from knowinject.core.seeding import numpy_rng

from knowinject.data import geo, world, worldfiles

from knowinject.train import models, tracks

from knowinject.eval import curate, evaluate

from knowinject.studies import study_b

from knowinject import stats

PROFILE = "default"
K_SHOT = 3


def prompts(table: pd.DataFrame, form: str, k_shot: int, seed: int = 0) -> list[str]:
    """Each question's prompt in ``form`` (``lettered`` or ``cloze``), after ``k_shot`` solved questions of its
    relation (others than it, drawn with ``seed``)."""
    rng = numpy_rng(seed, "mc-forms-shots")
    by_relation = dict(tuple(table.groupby("relation")))

    def one(r) -> str:
        return curate.mc_question(r.question, r.options, form)

    def solved(r) -> str:
        return f"{one(r)} {curate.mc_answer(r, form)}\n\n"

    out = []
    for r in table.itertuples():
        pool = by_relation[r.relation]
        pool = pool[pool.fact_id != r.fact_id]
        shots = pool.iloc[rng.choice(len(pool), min(k_shot, len(pool)), replace=False)] if k_shot else pool[:0]
        out.append("".join(solved(s) for s in shots.itertuples()) + one(r))
    return out


def accuracy(model, tok, table: pd.DataFrame, form: str, k_shot: int) -> dict[str, np.ndarray]:
    """Per question, whether the model's choice is right: ``{"acc": ...}`` (lettered), or ``acc`` and ``acc_norm``
    (cloze)."""
    ps = prompts(table, form, k_shot)
    gold = np.array([list(o).index(a) for o, a in zip(table.options, table.answer)])
    targets = [curate.mc_targets(o, form) for o in table.options]
    lp = evaluate.option_logprobs(model, tok, ps, targets, batch_size=32)
    acc = np.array([int(np.argmax(s)) for s in lp]) == gold
    if form == "lettered":
        return {"acc": acc}
    return {"acc": acc, "acc_norm": np.array([curate.norm_choice(s, t) for s, t in zip(lp, targets)]) == gold}


def frequency_baseline(table: pd.DataFrame) -> np.ndarray:
    """A blind guess that knows the answers' frequencies and nothing of the question: of a question's options, the
    one that is most often the answer among the other questions of its relation (a cloze score's prior can lean
    the same way). Per question, whether it is right."""
    right = []
    for r in table.itertuples():
        others = table[(table.relation == r.relation) & (table.fact_id != r.fact_id)].answer.value_counts()
        counts = [others.get(o, 0) for o in r.options]
        right.append(list(r.options)[int(np.argmax(counts))] == r.answer)
    return np.array(right)


def measure() -> pd.DataFrame:
    wcfg = build(world.WorldConfig, stage_params(PROFILE, "world"), "world")
    w = worldfiles.build(wcfg, build(geo.RealWorldConfig, stage_params(PROFILE, "realworld"), "realworld"), PROFILE)
    cfg = build(study_b.design.StudyBConfig, stage_params(PROFILE, "study_b_mc"), "study_b_mc")
    table = study_b.factset.geonames_multiple_choice(w, cfg.relations, wcfg.seed, PROFILE).facts
    chance = float(np.mean([1 / len(o) for o in table.options]))
    rows = []

    def add(name, form, k, metric, right):
        m, lo, hi = stats.bootstrap_ci(pd.Series(right.astype(float)))
        rows.append({"model": name, "form": form, "k_shot": k, "metric": metric, "accuracy": m, "ci_low": lo,
                     "ci_high": hi, "chance": chance, "above_chance": bool(lo > chance), "n_questions": len(right)})
        print(rows[-1], flush=True)

    add("none", "the most frequent answer among the options", 0, "acc", frequency_baseline(table))
    for name in (models.SMOLLM2, models.GEMMA3):
        model, tok = tracks.load_base(tracks.make("smollm2", tracks.settings(PROFILE, "smollm2", name), w,
                                                  model_name=name))
        for form in ("lettered", "cloze"):
            for k in (0, K_SHOT):
                for metric, right in accuracy(model, tok, table, form, k).items():
                    add(name, form, k, metric, right)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    table = measure()
    print(save_table(table, paths.RESULTS / "mc_forms.csv", profile=PROFILE, k_shot=K_SHOT,
                     models={m: models.identity(m) for m in (models.SMOLLM2, models.GEMMA3)}))
    print(table.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
