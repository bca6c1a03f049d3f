"""What each ingredient of the tiny model's pretraining recipe does: the default profile's recipe
and variants one change away from it, each pretrained and asked every question about its known
people, by exposure bucket (``make recipe``; not part of ``make reproduce``).

Every variant is the same cached pretraining and stored-knowledge run notebook 02 makes, so the
default variant is notebook 02's own model. Writes ``data/results/tiny_recipe.csv``.
Usage: ``python -m knowinject.bench.recipe``.
"""

from __future__ import annotations

import json
import sys

import pandas as pd

from knowinject.core import paths
from knowinject.core.config import build, stage_params
from knowinject.core.provenance import save_table

from knowinject.data import geo, world, worldfiles

from knowinject.train import pretrain

from knowinject.eval import storage

from knowinject import stats

PROFILE = "default"
# name: (changes to the world stage, changes to the pretrain stage, what the change tests)
VARIANTS = {
    "recipe": ({}, {}, "the default profile's recipe"),
    "QA for 10% of people": ({"qa_fraction": 0.1}, {}, "mixed training with few QA people (the first default)"),
    "4x larger steps": ({}, {"batch_size": 32}, "the same tokens in a quarter of the optimizer steps"),
    "3x the epochs": ({}, {"epochs": 6}, "every bio seen three times as often"),
}


def measure(name: str, world_changes: dict, pretrain_changes: dict) -> pd.DataFrame:
    wcfg = build(world.WorldConfig, {**stage_params(PROFILE, "world"), **world_changes}, "world")
    rcfg = build(geo.RealWorldConfig, stage_params(PROFILE, "realworld"), "realworld")
    pcfg = build(pretrain.PretrainConfig, {**stage_params(PROFILE, "pretrain"), **pretrain_changes}, "pretrain")
    w = worldfiles.build(wcfg, rcfg, PROFILE)
    folder = pretrain.pretrain_base(w, pcfg, PROFILE)
    summary = json.loads((folder / "train_summary.json").read_text())
    steps = int(pd.read_csv(folder / "loss_log.csv").step.max())
    scored = storage.stored_knowledge_run(folder, w, wcfg.qa_fraction, wcfg.seed, PROFILE)
    scored = scored[~scored.qa_in_pretraining & (scored.template_split == "train")]
    scored = scored.assign(bucket=world.exposure_buckets(scored.exposure).astype(str))
    table = stats.by_group(scored, "bucket", "em")
    return table.assign(variant=name, tokens=summary["tokens"], steps=steps, seconds=summary["seconds"],
                        final_loss=summary["final_loss"])


def main() -> int:
    parts = []
    for name, (w, p, why) in VARIANTS.items():
        print(f"== {name}: {why}", flush=True)
        parts.append(measure(name, w, p).assign(change=why))
    table = pd.concat(parts, ignore_index=True)
    print(table.pivot_table(index="variant", columns="bucket", values="mean", sort=False).round(3).to_string())
    print(save_table(table, paths.results_dir(PROFILE) / "tiny_recipe.csv", profile=PROFILE,
                     variants={k: {"world": w, "pretrain": p} for k, (w, p, _) in VARIANTS.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
