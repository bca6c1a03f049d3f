"""The two model tracks every study runs on, behind one interface.

``smollm2`` is the real pretrained model (or any Hugging Face id / local folder a user swaps in);
``tiny`` is the GPT pretrained here on the synthetic world (notebook 02), whose exposure to every
fact is known. A track says which base model to load and how to finetune it; the studies stay the
same code for both.

Usage: ``track = tracks.make("tiny", stage_params(profile, "track_tiny"), world, pretrain_cfg)``;
``model, tok = tracks.load_base(track)``. The tiny track's design samples its pretraining too:
``tracks.tiny_bases(settings, world, pretrain_cfg, bases_cfg.seeds)`` gives one track per pretrained base, and
``tracks.seeds_by_base(cfg.seeds, bases_cfg.seeds)`` which finetuning seeds run on each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from knowinject.core.config import build, require, stage_params, track_stage

from knowinject.data.worldfiles import WorldFiles

from knowinject.train import kernels, models
from knowinject.train.finetune import FinetuneConfig, fused_optimizer, resolve_precision, uses_kernels
from knowinject.train.pretrain import PretrainConfig, pretrain_base

TRACKS = ("smollm2", "tiny")


@dataclass(frozen=True)
class Track:
    name: Literal["smollm2", "tiny"]
    model: str                       # smollm2 track: "smollm2", a local folder or a hub id; tiny: its model folder
    method: Literal["lora", "full"]
    lr: float
    batch_size: int
    precision: Literal["auto", "bf16", "fp32"]
    lora_r: int = 16
    # Where "a phrasing the finetuning never used" comes from. SmolLM2 has read the web: held-out
    # templates. The tiny model has only ever seen the training templates (held-out phrasings are
    # 0-5% even for facts it stores), so its unseen phrasing is a training template that this
    # finetune did not use for the fact.
    unseen_phrasing: Literal["heldout", "unused-train"] = "heldout"

    def __post_init__(self):
        require(self.name in TRACKS, f"track must be one of {', '.join(TRACKS)}, got {self.name!r}")

    def finetune_config(self, epochs: float, seed: int, **overrides) -> FinetuneConfig:
        return FinetuneConfig(method=self.method, epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                              precision=self.precision, lora_r=self.lora_r, lora_alpha=2 * self.lora_r, seed=seed,
                              **overrides)

    @property
    def key(self) -> dict:
        """What identifies the base model in a run's hash: its content (:func:`models.content_key`: the
        sha256 of its weights, a hub id's commit), never a folder's name, so that two models in folders of the
        same name, or a model saved again over its folder, never share runs; the tiny model is keyed by the
        weights its pretraining produced (the same recipe gives other weights on another CPU). Runs trained
        through the kernels carry their version, runs stepped by the fused AdamW say so (the rules
        ``finetune`` applies)."""
        cfg = self.finetune_config(1, 0)
        return {"track": self.name, "model": models.content_key(self.model), "method": self.method,
                "lr": self.lr, "batch_size": self.batch_size, "precision": self.precision, "lora_r": self.lora_r,
                "unseen_phrasing": self.unseen_phrasing,
                **({"kernels": kernels.VERSION} if uses_kernels(cfg) else {}),
                **({"optimizer": "adamw-fused"} if fused_optimizer(cfg) else {})}


def settings(profile: str, name: str, model_name: str = models.SMOLLM2) -> dict:
    """A track's finetuning settings in ``profile`` (:func:`knowinject.core.config.track_stage`): the tiny model's,
    a built-in model's own (``track_gemma3``, chosen for Gemma by the fit criterion of docs/design.md, not copied
    from SmolLM2's), else SmolLM2's, which a model of one's own starts from."""
    return stage_params(profile, track_stage(profile, name, model_name if model_name in models.BUILTIN else models.SMOLLM2))


def tiny_model_dir(world: WorldFiles, pretrain_cfg: PretrainConfig, profile: str | None = None) -> Path:
    """The pretrained tiny model of this world (notebook 02's cached run; trained here if missing)."""
    return pretrain_base(world, pretrain_cfg, profile) / "model"


def make(name: str, settings: dict, world: WorldFiles, pretrain_cfg: PretrainConfig | None = None,
         model_name: str = "smollm2", profile: str | None = None) -> Track:
    """A track from its settings (a profile's ``track_<name>`` stage) with its base model resolved: the tiny
    model pretrained on ``world`` with ``pretrain_cfg``, or ``model_name`` for the pretrained track."""
    require(name != "tiny" or pretrain_cfg is not None, "the tiny track needs the pretraining config of its base model")
    model = str(tiny_model_dir(world, pretrain_cfg, profile)) if name == "tiny" else model_name
    return build(Track, {"name": name, "model": model, **settings}, f"track_{name}")


def tiny_bases(settings: dict, world: WorldFiles, pretrain_cfg: PretrainConfig, base_seeds,
               profile: str | None = None) -> dict[int, Track]:
    """One tiny track per pretraining seed in ``base_seeds`` (the profile's ``tiny_bases`` stage): the recipe
    ``pretrain_cfg`` pretrained from that seed on ``world`` (notebook 02's cached runs; trained here if missing)."""
    return {s: make("tiny", settings, world, replace(pretrain_cfg, seed=s), profile=profile) for s in base_seeds}


def seeds_by_base(seeds, base_seeds) -> dict[int, list[int]]:
    """Which finetuning seeds run on which base: seed s finetunes base ``base_seeds[s mod K]``, so spreading
    a design over K bases costs no extra finetunes. Bases that no seed reaches are left out."""
    base_seeds = list(base_seeds)
    if not base_seeds:
        raise ValueError("seeds_by_base: no pretraining seeds (the tiny_bases stage lists none)")
    out: dict[int, list[int]] = {}
    for s in seeds:
        out.setdefault(base_seeds[s % len(base_seeds)], []).append(s)
    return {b: out[b] for b in base_seeds if b in out}


def identities(label: str, track) -> dict:
    """What a results table's provenance records of a track's model(s): ``{label: identity}``, and for a
    track of several pretrained bases one entry per base (``tiny pretrain-seed 1``)."""
    if isinstance(track, dict):
        return {f"{label} pretrain-seed {b}": models.identity(t.model) for b, t in track.items()}
    return {label: models.identity(track.model)}


def add_replication_identities(model_ids: dict, replications: dict) -> dict:
    """``model_ids`` with the replication designs' own models (``{label: track}``) added as ``<label> replication``
    where a replication reads a model the table does not already record (the tiny track's second world
    pretrains its own); a table's runs may then come from it (:func:`knowinject.core.runs.check_models`)."""
    known = {i.get("content_key") for i in model_ids.values()}
    for label_, track in replications.items():
        for k, v in identities(f"{label_} replication", track).items():
            if v.get("content_key") not in known:
                model_ids[k] = v
                known.add(v.get("content_key"))
    return model_ids


def label(name: str, model_name: str = models.SMOLLM2) -> str:
    """The name a track's rows carry in result tables: ``tiny``; the pretrained track as ``smollm2`` or,
    for another model, that model's slug (so a table never files a Llama under SmolLM2)."""
    return name if name == "tiny" or model_name == models.SMOLLM2 else models.slug(model_name)


def load_base(track: Track):
    """(model, tokenizer) in the dtype its finetuning trains against.

    LoRA in bf16 stores the frozen base in bf16, so the base model is evaluated in bf16 too:
    "before" and "after" then differ only by the finetuning, not by rounding.
    """
    model, tok = models.load(track.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if track.method == "lora" and resolve_precision(track.precision, device) == "bf16":
        model = model.to(torch.bfloat16)
    if device == "cuda":
        model = model.to(device)
    return model, tok
