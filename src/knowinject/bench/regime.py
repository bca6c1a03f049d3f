"""The tiny track's finetuning setting searched for the lifting regime (``make regime``; not part of ``make reproduce``).

Study B's claims are about finetuning that *lifts* factuality (R0: the whole-pool finetune minus the base model,
zero-shot exact match on the held-out test facts). With today's setting every finetune of the tiny model lowers
it: its base already answers the QA format, so the conditions measure forgetting. This searches the
finetuning setting only (never the pretraining recipe) for one whose R0 interval lies above 0.

Per setting: the base models and the whole-pool finetune of every seed of the default design, on the main
world's pretrained bases (seed s finetunes base s mod K, as notebook 05 runs them); R0 at every checkpoint with
its two-stage interval (bases, then runs, then test facts). Selection is on R0 at the setting's last epoch
alone, before any other reading: the first setting, in the order of ``SETTINGS``, whose interval lies above 0.
The chosen one (else the best) is run again on the replication's world. A second round of settings, chosen from
the first round's R0 at early checkpoints, follows the first (``ROUND_TWO``; the table's ``round``). The runs are
cached like notebook 05's, so today's setting costs nothing when notebook 05 has run, and a second call recomputes
nothing (about 8 minutes the first time on the 2-core AMD EPYC). Writes ``data/results/regime_tiny.csv``.
Usage: ``python -m knowinject.bench.regime``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from knowinject.core import paths
from knowinject.core.config import build, notebook_params, stage_params
from knowinject.core.provenance import save_table

from knowinject.data import geo, world, worldfiles

from knowinject.train import grouped, pretrain, tracks

from knowinject.eval import knownness

from knowinject.studies import findings, replication, study_b

PROFILE = "default"
# (name, the track's settings changed, the design's changed): gentler finetunes first, then a phrasing family
# that pretraining never used (a format for finetuning to teach, as a real model's QA format is).
SETTINGS = (
    ("today's: full, lr 3e-4, 10 epochs", {}, {}),
    ("full, lr 1e-4", {"lr": 1e-4}, {}),
    ("full, lr 3e-5", {"lr": 3e-5}, {}),
    ("full, lr 3e-4, 3 epochs", {}, {"epochs": 3, "checkpoints": (1, 3)}),
    ("LoRA r 16, lr 1e-3", {"method": "lora", "lr": 1e-3}, {}),
    ("held-out phrasing family", {"unseen_phrasing": "heldout"}, {}),
    ("held-out phrasing family, full, lr 1e-4", {"unseen_phrasing": "heldout", "lr": 1e-4}, {}),
    # A second round, from the first's early checkpoints (R0 only): at lr 3e-5 it was highest at epochs 1-3, and
    # LoRA's lifted at epoch 1 (+0.015 [+0.000, +0.029]). A shorter schedule is not the same as an early checkpoint
    # of a longer one (the rate decays over the whole schedule), so each is run as its own setting.
    ("full, lr 3e-5, 3 epochs", {"lr": 3e-5}, {"epochs": 3, "checkpoints": (1, 3)}),
    ("LoRA r 16, lr 1e-3, 1 epoch", {"method": "lora", "lr": 1e-3}, {"epochs": 1, "checkpoints": (1,)}),
    ("LoRA r 16, lr 3e-4", {"method": "lora", "lr": 3e-4}, {}),
)
ROUND_TWO = 7  # the settings from here on were chosen after the first round's readings


def whole_and_base(cfg: study_b.design.StudyBConfig) -> list[tuple[str, int]]:
    return [("base", 0)] + [("whole", s) for s in cfg.seeds]


def r0(track, w, cfg, known_cfg, subset, grouping) -> pd.DataFrame:
    """R0 at each checkpoint of one setting on one world: effect, interval, verdict, runs."""
    res = study_b.compute.run_tracks([(track, w, cfg)], grouping, known_cfg, subset, PROFILE, jobs=whole_and_base)[0]
    rows = []
    for epoch in cfg.checkpoints:
        e = study_b.analysis.lift(res.preds, epoch)
        base = res.preds[(res.preds.condition == "base") & (res.preds.prompt == "zero-shot")].em.mean()
        whole = res.preds[(res.preds.condition == "whole") & (res.preds.prompt == "zero-shot")
                          & (res.preds.epoch == epoch)].em.mean()
        rows.append({"epoch": epoch, "last_epoch": epoch == cfg.epochs, "base_em": base, "whole_em": whole,
                     "effect": e.effect, "ci_low": e.ci_low, "ci_high": e.ci_high,
                     "verdict": findings.regime(e).verdict, "n_seeds": len(cfg.seeds),
                     "n_test": res.test.fact_id.nunique()})
    return pd.DataFrame(rows)


def search() -> pd.DataFrame:
    wcfg = build(world.WorldConfig, stage_params(PROFILE, "world"), "world")
    real = build(geo.RealWorldConfig, stage_params(PROFILE, "realworld"), "realworld")
    pre = build(pretrain.PretrainConfig, stage_params(PROFILE, "pretrain"), "pretrain")
    bases = build(pretrain.BasesConfig, stage_params(PROFILE, "tiny_bases"), "tiny_bases")
    grouping = build(grouped.GroupConfig, stage_params(PROFILE, "grouping"), "grouping")
    rep = build(replication.ReplicationConfig, stage_params(PROFILE, "replication"), "replication")
    cfg0 = build(study_b.design.StudyBConfig, stage_params(PROFILE, "study_b_tiny"), "study_b_tiny")
    known_cfg, subset = knownness.notebook_settings(notebook_params(PROFILE, "03_knownness"), wcfg.seed)
    w = worldfiles.build(wcfg, real, PROFILE)
    settings0 = stage_params(PROFILE, "track_tiny")
    tables, chosen = [], None
    for i, (name, track_change, design_change) in enumerate(SETTINGS):
        track = tracks.tiny_bases({**settings0, **track_change}, w, pre, bases.seeds, PROFILE)
        cfg = replace(cfg0, **design_change)
        t = r0(track, w, cfg, known_cfg, subset, grouping).assign(setting=name, world="main",
                                                                  round=1 + (i >= ROUND_TWO))
        print(t.round(3).to_string(), flush=True)
        tables.append(t)
        last = t[t.last_epoch].iloc[0]
        if chosen is None and last.ci_low > 0:
            chosen = (name, track_change, design_change)
    # The chosen setting (else the best R0 at its last epoch) on the replication's world, one pretrained base.
    table = pd.concat(tables, ignore_index=True)
    if chosen is None:
        best = table[table.last_epoch].sort_values("effect", ascending=False).iloc[0].setting
        chosen = next(s for s in SETTINGS if s[0] == best)
    name, track_change, design_change = chosen
    w2 = replication.tiny_world(wcfg, real, rep, PROFILE)
    track = tracks.make("tiny", {**settings0, **track_change}, w2, pre, profile=PROFILE)
    t = r0(track, w2, replace(cfg0, **design_change), known_cfg, subset, grouping).assign(
        setting=name, world="replication", round=1 + ([s[0] for s in SETTINGS].index(name) >= ROUND_TWO))
    table = pd.concat([table, t], ignore_index=True)
    lifted = table[(table.world == "main") & table.last_epoch & (table.ci_low > 0)]
    return table.assign(chosen=(table.setting == name) & (len(lifted) > 0))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    table = search()
    cols = ["setting", "round", "world", "epoch", "last_epoch", "base_em", "whole_em", "effect", "ci_low", "ci_high", "verdict",
            "chosen", "n_seeds", "n_test"]
    print(save_table(table[cols], paths.RESULTS / "regime_tiny.csv", profile=PROFILE,
                     settings=[{"setting": n, "track": t, "design": d} for n, t, d in SETTINGS]))
    print(table[cols].round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
