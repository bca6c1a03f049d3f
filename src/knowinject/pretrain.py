"""Pretrain the tiny GPT on the world's corpus, and measure what it stored.

The pretrained model is a cached run under ``data/models/tiny-<hash>/`` (the world's hash is part of
the config, so a new world means a new model). :func:`stored_knowledge` asks it every held-out
question about known people, so knownness can be read against exposure: the curve Study B rests on.

Usage: ``folder = pretrain.pretrain_base(world_files, PretrainConfig(), profile)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import corpus, evaluate, models, paths
from .config import require
from .finetune import FinetuneConfig, finetune
from .runs import cached_run, cached_table
from .worldfiles import WorldFiles


@dataclass(frozen=True)
class PretrainConfig:
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256
    epochs: float = 8.0       # passes over the corpus (each person is seen exposure x epochs times)
    lr: float = 1e-3          # AdamW peak, cosine decay; small models from scratch like a high rate
    batch_size: int = 32
    warmup_ratio: float = 0.02
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        require(self.epochs > 0, f"PretrainConfig.epochs must be > 0, got {self.epochs}")
        models.TinyModelConfig(self.n_layer, self.n_embd, self.n_head, self.n_positions, self.seed)  # validates

    def model_config(self) -> models.TinyModelConfig:
        return models.TinyModelConfig(self.n_layer, self.n_embd, self.n_head, self.n_positions, self.seed)

    def train_config(self) -> FinetuneConfig:
        return FinetuneConfig(method="full", epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                              max_length=self.n_positions, warmup_ratio=self.warmup_ratio,
                              weight_decay=self.weight_decay, seed=self.seed, log_every=20)


def pretrain_base(world: WorldFiles, cfg: PretrainConfig, profile: str | None = None) -> Path:
    """The folder of the pretrained tiny model (``model/`` loads with :func:`models.load`)."""
    key = {"world": world.folder.name, "pretrain": asdict(cfg)}

    def compute(tmp: Path) -> None:
        tok = world.tokenizer()
        tok.padding_side = "left"
        model = models.tiny_model(cfg.model_config(), tok)
        texts = world.table("corpus").text
        _, result = finetune(model, tok, [{"text": t} for t in texts], cfg.train_config(), out_dir=tmp)

    folder = cached_run(paths.MODELS, "tiny", key, compute, seed=cfg.seed, profile=profile)
    return folder


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
    key = {"model": model_folder.name, "world": world.folder.name, "eval": "stored_knowledge-all-templates-v2"}

    def make() -> pd.DataFrame:
        model, tok = models.load(model_folder / "model")
        return stored_knowledge(model, tok, world, qa_fraction, seed)

    return cached_table(paths.RUNS, "stored-knowledge", key, make, "stored_knowledge.jsonl", seed=seed,
                        profile=profile)
