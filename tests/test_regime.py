"""R0 (does finetuning lift factuality?), the verdict of a multiple-choice instrument at chance, the claims read
by model, and how the second real model is run (profile ``second_models``, its own finetuning settings)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from knowinject.core import config
from knowinject.core.config import ConfigError

from knowinject.train import tracks

from knowinject.studies import findings
from knowinject.studies.study_b import analysis

from knowinject import forest, pipeline, stats


def _preds(p_base: float, p_whole: float, n_items: int = 80, seeds=(0, 1, 2), last: int = 6, seed: int = 0):
    """Zero-shot answers of a base model (one run, epoch 0) and of whole-pool finetunes (``seeds``, epoch ``last``),
    each item right with the given probability; a few-shot row and an earlier checkpoint that R0 must ignore."""
    rng = np.random.default_rng(seed)
    rows = [{"condition": "base", "seed": 0, "epoch": 0, "prompt": "zero-shot", "fact_id": i,
             "em": float(rng.random() < p_base)} for i in range(n_items)]
    for s in seeds:
        rows += [{"condition": "whole", "seed": s, "epoch": last, "prompt": "zero-shot", "fact_id": i,
                  "em": float(rng.random() < p_whole)} for i in range(n_items)]
        rows += [{"condition": "whole", "seed": s, "epoch": 1, "prompt": "zero-shot", "fact_id": i, "em": 0.0}
                 for i in range(n_items)]
        rows += [{"condition": "whole", "seed": s, "epoch": last, "prompt": "few-shot", "fact_id": i, "em": 0.0}
                 for i in range(n_items)]
    return pd.DataFrame(rows)


def test_r0_reads_whether_finetuning_lifts_factuality():
    lifted = analysis.lift(_preds(0.15, 0.65), 6)
    assert 0.4 < lifted.effect < 0.6 and lifted.ci_low > 0  # the last checkpoint, zero-shot, against the base
    assert findings.regime(lifted) == ("lifts", "")
    lowered = analysis.lift(_preds(0.55, 0.35), 6)
    assert lowered.ci_high <= 0 and findings.regime(lowered).verdict == "lowers"
    flat = analysis.lift(_preds(0.4, 0.4, seed=3), 6)
    assert findings.regime(flat).verdict == "undecided"
    floor = analysis.lift(_preds(0.0, 0.0), 6)
    assert findings.regime(floor) == ("unmeasurable", "floor")
    # A regime row never carries reproduced / not reproduced, and cannot read an unmeasurable effect.
    row = findings.row("R0", "smollm2", "m", lifted, findings.regime(lifted))
    assert row["verdict"] == "lifts" and "lifts" in findings.VERDICTS
    with pytest.raises(ValueError, match="could not measure"):
        findings.row("R0", "smollm2", "m", floor, "lowers")
    # Mutation: R0 read off the first checkpoint (whose answers are all wrong) would say "lowers".
    assert findings.regime(analysis.lift(_preds(0.15, 0.65), 1)).verdict == "lowers"



def test_r0_on_several_pretrained_bases_counts_each_base_model_as_its_own_run():
    # The tiny track: a base model per pretrained base, each labelled seed 0, and finetunes seed s on base s mod 3.
    parts = []
    for b in range(3):
        d = _preds(0.55, 0.35, seeds=(b, b + 3), seed=b)
        parts.append(d.assign(pretrain_seed=b))
    preds = pd.concat(parts, ignore_index=True)
    with pytest.raises(ValueError, match="several bases"):  # the contrast itself refuses one label on three bases
        analysis.contrast(preds[(preds.prompt == "zero-shot") & preds.epoch.isin([0, 6])], "whole", "base")
    lowered = analysis.lift(preds, 6)
    assert lowered.ci_high <= 0 and findings.regime(lowered).verdict == "lowers"
    assert preds.seed[preds.condition == "base"].eq(0).all()  # the caller's table is left as it was


def _accuracy(track: str, cis: dict[str, tuple[float, float]], last: int = 6) -> pd.DataFrame:
    rows = [{"track": track, "condition": c, "epoch": 0 if c == "base" else last, "prompt": "zero-shot", "bucket": "all",
             "metric": "em", "mean": (lo + hi) / 2, "ci_low": lo, "ci_high": hi} for c, (lo, hi) in cis.items()]
    # Rows the rule must not read: few-shot, another bucket, an earlier checkpoint, another track.
    rows += [{"track": track, "condition": "known", "epoch": 1, "prompt": "zero-shot", "bucket": "all", "metric": "em",
              "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95},
             {"track": track, "condition": "known", "epoch": last, "prompt": "few-shot", "bucket": "all", "metric": "em",
              "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95},
             {"track": "other", "condition": "base", "epoch": 0, "prompt": "zero-shot", "bucket": "all", "metric": "em",
              "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95}]
    return pd.DataFrame(rows)


def _claims(track: str) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c, "track": track, "design": "main", "verdict": "reproduced", "reason": ""}
                         for c in ("R0", "B1", "B2", "B3", "B3-swap")])


AT_CHANCE = {"base": (0.17, 0.30), "known": (0.15, 0.29), "unknown": (0.20, 0.33), "whole": (0.22, 0.36),
             "random": (0.60, 0.70)}


def test_a_multiple_choice_reading_at_chance_is_unmeasurable():
    out = findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", AT_CHANCE), "m-mc", 0.25)
    assert (out.verdict == "unmeasurable").all() and (out.reason == "chance").all()
    # The random half above chance does not matter: no reading compares it.
    # One compared finetune above chance: the readings that compare it keep their verdicts, the rest do not.
    above = {**AT_CHANCE, "whole": (0.40, 0.55)}
    out = findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", above), "m-mc", 0.25).set_index("claim")
    assert out.loc[["R0", "B2"]].verdict.eq("reproduced").all()
    assert out.loc[["B1", "B3", "B3-swap"]].verdict.eq("unmeasurable").all()
    # The base model above chance: nothing is at chance.
    base_up = {**AT_CHANCE, "base": (0.35, 0.50)}
    assert findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", base_up), "m-mc", 0.25).verdict.eq("reproduced").all()
    # Another track's rows, and the replication's, are left alone.
    other = pd.concat([_claims("m"), _claims("m-mc").assign(design="replication")], ignore_index=True)
    assert findings.mark_chance(other, _accuracy("m-mc", AT_CHANCE), "m-mc", 0.25).verdict.eq("reproduced").all()
    # The chance rate is the guess among the options: for two-way questions (chance 0.5) these intervals are below.
    assert findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", AT_CHANCE), "m-mc", 0.5).verdict.eq("reproduced").all()


@pytest.mark.parametrize("mutant", ["any", "no base", "ignore"])
def test_the_chance_rule_fails_under_mutation(monkeypatch, mutant):
    """Each mutation of the rule changes a verdict a test above pins."""
    if mutant == "any":  # chance in one interval is enough
        monkeypatch.setattr(findings, "at_chance", lambda acc, chance: any(lo <= chance <= hi for lo, hi in acc))
        above = {**AT_CHANCE, "whole": (0.40, 0.55)}
        out = findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", above), "m-mc", 0.25).set_index("claim")
        assert out.loc["R0"].verdict != "reproduced"
    elif mutant == "no base":  # the base model's accuracy left out of the rule
        monkeypatch.setattr(findings, "COMPARED", {k: v for k, v in findings.COMPARED.items()})
        base_up = {**AT_CHANCE, "base": (0.35, 0.50)}
        original = findings.at_chance
        monkeypatch.setattr(findings, "at_chance", lambda acc, chance: original(acc[1:], chance))
        assert findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", base_up), "m-mc", 0.25).verdict.eq(
            "unmeasurable").all()
    else:  # no rule: the at-chance instrument keeps its verdicts
        monkeypatch.setattr(findings, "at_chance", lambda acc, chance: False)
        assert findings.mark_chance(_claims("m-mc"), _accuracy("m-mc", AT_CHANCE), "m-mc", 0.25).verdict.eq(
            "reproduced").all()


def test_at_chance_needs_every_interval_to_include_the_rate():
    assert findings.at_chance([(0.2, 0.3), (0.1, 0.25)], 0.25)
    assert not findings.at_chance([(0.2, 0.3), (0.26, 0.4)], 0.25)
    assert not findings.at_chance([], 0.25) and not findings.at_chance([(math.nan, math.nan)], 0.25)
    assert analysis.chance_rate(pd.DataFrame({"options": [["a", "b", "c", "d"], ["a", "b"]]})) == pytest.approx(0.375)
    assert math.isnan(analysis.chance_rate(pd.DataFrame({"question": ["q"]})))


def _identity(slug, n, dtype="float32", arch="LlamaForCausalLM"):
    return {"slug": slug, "architecture": arch, "config": {"dtype": dtype}, "weights_bytes": n * (4 if dtype == "float32" else 2)}


def test_claims_by_model_are_ordered_by_parameter_count_and_say_what_differs():
    e = stats.Effect(0.1, 0.05, 0.2, 0.06, 0.19, 0.03, 10, 2)
    rows = [findings.row(c, t, "m", e, "reproduced") for c in ("B1", "R0") for t in ("gemma3", "smollm2", "tiny",
                                                                                      "one-layer")]
    table = findings.combine(pd.DataFrame(rows))
    ids = {"gemma3": _identity("gemma3", 268_098_176, arch="Gemma3ForCausalLM"), "smollm2": _identity("smollm2", 134_515_008),
           "tiny": _identity("tiny-abc", 5_246_214)}
    out = findings.by_model(table, ids, {"tiny": "full", "smollm2": "LoRA", "gemma3": "LoRA"},
                            {"tiny": "world", "smollm2": "GeoNames", "gemma3": "GeoNames"})
    assert list(out.columns) == findings.BY_MODEL_COLUMNS
    assert list(zip(out.claim, out.track)) == [("R0", "tiny"), ("R0", "smollm2"), ("R0", "gemma3"),
                                               ("B1", "tiny"), ("B1", "smollm2"), ("B1", "gemma3")]
    assert "one-layer" not in set(out.track)  # no model identity: the theory model is not a model of this table
    assert out.set_index("track").n_params.drop_duplicates().to_dict() == {"tiny": 5_246_214, "smollm2": 134_515_008,
                                                                          "gemma3": 268_098_176}
    assert set(out.model) == {"tiny", "smollm2", "gemma3"} and set(out.architecture) >= {"Gemma3ForCausalLM"}
    bf16 = findings.n_params(_identity("x", 1000, dtype="bfloat16"))
    assert bf16 == 1000 and math.isnan(findings.n_params({"slug": "x"}))
    assert findings.track_models({"tiny pretrain-seed 0": {"slug": "a"}, "tiny pretrain-seed 1": {"slug": "b"},
                                  "smollm2 replication": {"slug": "c"}}) == {"tiny": {"slug": "a"}, "smollm2": {"slug": "c"}}
    fig = forest.by_model(out)
    assert [a.get_title() for a in fig.axes if a.get_visible()] == ["R0", "B1"]
    assert "not a scaling law" in " ".join(t.get_text() for t in fig.texts)


def test_the_second_model_runs_after_smollm2_with_its_own_settings(monkeypatch, tmp_path):
    nbs = {nb.stem: nb for nb in pipeline.notebooks()}
    second = config.second_models("default")
    assert list(second) == ["gemma3"] and config.second_models("smoke") == {}
    runs = {stem: pipeline.runs_of(nb, "default", {}) for stem, nb in nbs.items()}
    assert runs["03_knownness"] == [{}, {"model_name": "gemma3"}]
    assert runs["05_study_b"][1]["model_name"] == "gemma3" and runs["05_study_b"][1]["one_layer"] is False
    assert runs["04_study_a"] == [{}] and runs["06_figures"] == [{}]  # Study A on Gemma: the full profile
    # A model or a fact table of one's own is that run alone.
    assert pipeline.runs_of(nbs["05_study_b"], "default", {"model_name": "/x"}) == [{"model_name": "/x"}]
    assert pipeline.runs_of(nbs["05_study_b"], "default", {"facts_path": "f.csv"}) == [{"facts_path": "f.csv"}]
    # Gemma's finetuning settings are its own stage; a model of one's own starts from SmolLM2's.
    assert tracks.settings("default", "smollm2", "gemma3")["lr"] == config.stage_params("default", "track_gemma3")["lr"]
    assert tracks.settings("default", "smollm2", "/my/model") == config.stage_params("default", "track_smollm2")
    assert tracks.settings("default", "tiny")["method"] == "full"
    # A malformed second_models section is refused with what it should look like.
    (tmp_path / "default.yaml").write_text("stages: {}\nsecond_models: [gemma3]\n")
    monkeypatch.setattr(config.paths, "PARAMS", tmp_path)
    with pytest.raises(ConfigError, match="second_models must map a model"):
        config.second_models("default")
