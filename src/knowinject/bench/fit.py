"""How a built-in real model's finetuning rate is chosen (``make fit MODEL=gemma3``; not part of ``make reproduce``).

The criterion is the one SmolLM2's settings meet (docs/design.md): Study B's finetunes must fit what they
train on, every condition's training loss on its answer tokens below ``FIT_LOSS`` at the last of the design's
epochs, since B1's harm is expected only once the unknown half is memorised (Gekhman et al. 2024). The chosen
rate is the lowest of ``RATES`` that fits the hardest condition (the unknown half) and every other condition of
the default design, seed 0: a gentler finetune changes the base model less for the same fit. LoRA rank, targets
and batch size stay SmolLM2's (peft's own choice of the query and value projections for both architectures).
Each row is one finetune on the default profile's Study B pool, on the knownness notebook 03 measured for the
model. Writes ``data/results/fit_<model>.csv``.
Usage: ``python -m knowinject.bench.fit --model gemma3``.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from knowinject.core import paths
from knowinject.core.config import build, notebook_params, stage_params
from knowinject.core.provenance import save_table

from knowinject.data import geo, world, worldfiles

from knowinject.train import models, tracks
from knowinject.train.finetune import finetune

from knowinject.eval import knownness

from knowinject.studies.study_b import design

PROFILE = "default"
RATES = (3e-4, 1e-3, 3e-3)
FIT_LOSS = 0.05
CONDITIONS = ("unknown", "known", "whole", "popular", "unpopular", "random")


def search(model_name: str, rates=RATES) -> pd.DataFrame:
    """The unknown half finetuned at each rate in turn; a rate that fits it is tried on every other condition,
    and the first that fits them all is chosen."""
    wcfg = build(world.WorldConfig, stage_params(PROFILE, "world"), "world")
    w = worldfiles.build(wcfg, build(geo.RealWorldConfig, stage_params(PROFILE, "realworld"), "realworld"), PROFILE)
    cfg = build(design.StudyBConfig, stage_params(PROFILE, "study_b_smollm2"), "study_b_smollm2")
    known_cfg, subset = knownness.notebook_settings(notebook_params(PROFILE, "03_knownness"), wcfg.seed)
    qa = w.table("qa_realworld")
    rows = []

    def run(lr: float, condition: str) -> float:
        t = tracks.make("smollm2", {**stage_params(PROFILE, "track_smollm2"), "lr": lr}, w, None, model_name, PROFILE)
        pool, _ = design.split(design.candidates(t, w, cfg.relations, known_cfg, subset, PROFILE), cfg)
        examples = design.qa_examples(design.condition_facts(pool, condition, 0, cfg.data_seed), qa, 0)
        model, tok = tracks.load_base(t)
        start = time.perf_counter()
        _, res = finetune(model, tok, examples, t.finetune_config(cfg.epochs, 0), progress=False)
        rows.append({"model": models.slug(model_name), "lr": lr, "condition": condition, "n_examples": len(examples),
                     **{f"loss_epoch_{i + 1}": v for i, v in enumerate(res.epoch_loss)},
                     "fits": res.epoch_loss[-1] < FIT_LOSS, "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
        return res.epoch_loss[-1]

    chosen = None
    for lr in rates:  # the lowest rate whose finetunes fit every condition
        if run(lr, "unknown") < FIT_LOSS and all([run(lr, c) < FIT_LOSS for c in CONDITIONS[1:]]):
            chosen = lr
            break
    table = pd.DataFrame(rows)
    return table.assign(chosen=table.lr == chosen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=models.GEMMA3, help="a built-in model (gemma3, smollm2) or a model folder")
    args = ap.parse_args(argv)
    table = search(args.model)
    print(save_table(table, paths.RESULTS / f"fit_{models.slug(args.model)}.csv", profile=PROFILE, rates=list(RATES),
                     fit_loss=FIT_LOSS, models={models.slug(args.model): models.identity(args.model)}))
    print(table.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
