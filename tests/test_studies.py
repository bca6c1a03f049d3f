"""The two studies' data logic (no leakage between training and test, matched information, balanced
halves), the verdict rules of the claims table, and a whole cached Study A / Study B run on a tiny
model saved to a temporary folder (resumable, evaluated at its checkpoints)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from knowinject.core import paths, runs
from knowinject.core.config import ConfigError

from knowinject.data import world
from knowinject.data.render import qa_prompt

from knowinject.train import models, tracks
from knowinject.train.finetune import FinetuneConfig, finetune
from knowinject.train.grouped import GroupConfig

from knowinject.eval import curate, evaluate, mechanism

from knowinject.studies import findings, study_a, study_b, theory

from knowinject import stats

# --- Study B ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def candidates(small_world):
    """The small world's known people as Study B candidates, with made-up knownness and popularity."""
    facts = small_world.table("facts")
    c = facts[(facts.group == "known") & facts.relation.isin(["birth_city", "employer", "university", "profession"])]
    rng = np.random.default_rng(0)
    return c.assign(known_score=rng.random(len(c)), popularity=c.exposure.astype(float), base_known=False,
                    level=world.exposure_buckets(c.exposure).astype(str))


CFG_B = study_b.design.StudyBConfig(relations=("birth_city", "employer", "university", "profession"), half_size=24,
                             n_test=40, epochs=2, checkpoints=(1, 2), seeds=(0, 1), k_shot=2, n_attention=4)


def test_study_b_pool_and_test_subjects_are_disjoint_and_balanced(candidates):
    pool, test = study_b.design.split(candidates, CFG_B)
    assert not set(pool.subject) & set(test.subject)
    assert pool.groupby("relation").size().tolist() == [12] * 4 and len(test) == 40
    for cond in CFG_B.conditions:
        facts = study_b.design.condition_facts(pool, cond, seed=0)
        assert not set(facts.subject) & set(test.subject), cond
        assert len(facts) == (len(pool) if cond == "whole" else len(pool) // 2), cond
        if cond != "whole":
            assert facts.groupby("relation").size().tolist() == [6] * 4, cond  # balanced over relations


def test_study_b_stratified_test_set_has_the_same_facts_per_relation_and_level(candidates):
    cfg = study_b.design.StudyBConfig(relations=CFG_B.relations, half_size=16, n_test=48, epochs=2, checkpoints=(1, 2),
                               stratify=True, n_attention=4)
    subjects = sorted(candidates.subject.unique())
    level = {s: f"L{i % 3}" for i, s in enumerate(subjects)}  # three equally filled popularity levels
    candidates = candidates.assign(level=candidates.subject.map(level))
    pool, test = study_b.design.split(candidates, cfg)
    assert not set(pool.subject) & set(test.subject)
    levels = sorted(candidates["level"].unique())
    counts = test.groupby(["relation", "level"]).size()
    assert len(counts) == len(levels) * 4 and counts.nunique() == 1 and counts.iloc[0] == 48 // 4 // len(levels)
    # Pool and test subjects split within each level: both sides span every level.
    assert set(pool["level"]) == set(test["level"]) == set(levels)


def test_study_b_halves_split_by_the_score_within_each_relation(candidates):
    pool, _ = study_b.design.split(candidates, CFG_B)
    known, unknown = (study_b.design.condition_facts(pool, c, 0) for c in ("known", "unknown"))
    for rel in CFG_B.relations:
        assert known[known.relation == rel].known_score.min() >= unknown[unknown.relation == rel].known_score.max()
    pop, unpop = (study_b.design.condition_facts(pool, c, 0) for c in ("popular", "unpopular"))
    assert pop.popularity.mean() >= unpop.popularity.mean()
    a, b = (set(study_b.design.condition_facts(pool, "random", s).fact_id) for s in (0, 1))
    assert a != b  # the random half is drawn per training seed
    assert set(study_b.design.condition_facts(pool, "known", 0).fact_id) == set(known.fact_id)  # deterministic
    with pytest.raises(ValueError, match="unknown condition 'famous'"):
        study_b.design.condition_facts(pool, "famous", 0)


def test_study_b_trains_on_training_templates_and_tests_on_other_phrasings(candidates, small_world):
    qa = small_world.table("qa")
    pool, test = study_b.design.split(candidates, CFG_B)
    train_prompts = {e["prompt"] for e in study_b.design.qa_examples(pool, qa, 0)}
    assert train_prompts <= set(qa[qa.template_split == "train"].prompt)
    held = study_b.design.test_items(test, qa, "heldout", 0)
    assert set(held.item_id) <= set(qa[qa.template_split == "heldout"].item_id)
    assert not set(held.prompt) & train_prompts and set(held.fact_id) == set(test.fact_id)
    # The tiny track asks training templates, but only about test facts no condition trains on.
    unused = study_b.design.test_items(test, qa, "unused-train", 0)
    assert not set(unused.prompt) & train_prompts


def test_study_b_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="checkpoints must lie in 1..epochs and end at epochs"):
        study_b.design.StudyBConfig(epochs=5, checkpoints=(1, 3))
    with pytest.raises(ConfigError, match="splits: unknown"):
        study_b.design.StudyBConfig(splits=("fame",))


def test_generic_flags_mark_wrong_answers_equal_to_the_runs_modal_answer():
    preds = pd.DataFrame({"condition": "known", "seed": 0, "epoch": 1, "prompt": "zero-shot", "relation": "capital",
                          "prediction": [" Paris", " Paris", " Paris", " Rome"], "em": [True, False, False, False]})
    assert study_b.compute.generic_flags(preds).tolist() == [False, True, True, False]


# --- Study A ---------------------------------------------------------------------------------------------

CFG_A = study_a.design.StudyAConfig(seeds=(0,), epochs=1, quantities=(2, 4), quantity=2, augmentations=(1, 2),
                             augmentation=2, n_events=2, n_personas=1, n_helpers=2, n_anchor=3,
                             styles=("pirate",), n_style_examples=4, max_style_tokens=8)


@pytest.mark.parametrize("phrasing", ["heldout", "unused-train"])
def test_study_a_never_evaluates_a_phrasing_it_trained_on(small_world, phrasing):
    inp = study_a.design.Inputs(small_world)
    for cell in study_a.design.grid(CFG_A):
        if cell.subject == "style":
            continue
        trained = set()
        for e in study_a.design.training_examples(cell, inp, CFG_A):
            trained.add(e.get("prompt") or e.get("text") or e["messages"][0]["content"])
        facts = study_a.design.subjects_for(inp.facts, cell, CFG_A)
        items = study_a.design.qa_eval_items(inp.qa, facts.fact_id, phrasing, max(CFG_A.augmentations))
        assert len(items) and not set(items.prompt) & trained, cell
        questions = set(items.question)
        assert not any(q in t for q in questions for t in trained if len(t) > 40), cell
        two_hop = study_a.design.multistep_eval_items(inp.multistep, facts, phrasing)
        assert not set(two_hop.prompt) & trained, cell


def test_study_a_formats_state_every_fact_the_same_number_of_times(small_world):
    inp = study_a.design.Inputs(small_world)
    facts = study_a.design.subjects_for(inp.facts, study_a.design.Cell("people", "qa", 2, 2), CFG_A)
    for a in (1, 2):
        qa = study_a.design.examples(facts, "qa", a, seed=0)
        docs = study_a.design.examples(facts, "doc", a, seed=0)
        conv = study_a.design.examples(facts, "conv", a, seed=0)
        assert len(qa) == len(conv) == len(facts) * a and len(docs) == facts.subject.nunique() * a
        for f in facts.itertuples():
            assert sum(str(f.value) in d["text"] for d in docs if f.subject in d["text"]) == a
            assert sum(e["completion"] == f" {f.value}\n" and f.subject in e["prompt"] for e in qa) == a
    with pytest.raises(ValueError, match="unknown format 'poem'"):
        study_a.design.examples(facts, "poem", 1, seed=0)


def test_study_a_quantities_are_nested_and_helpers_are_outside(small_world):
    inp = study_a.design.Inputs(small_world)
    small, large = (set(study_a.design.subjects_for(inp.facts, study_a.design.Cell("people", "qa", q, 2), CFG_A).subject)
                    for q in (2, 4))
    assert len(small) == 2 and len(large) == 4 and small < large
    assert not set(study_a.design.helpers_for(inp.facts, CFG_A).subject) & large


def test_claim_seeds_add_only_the_cells_the_claims_read():
    more = study_a.design.StudyAConfig(**{**CFG_A.__dict__, "claim_seeds": (1,), "multistep_quantity": 4})
    base = set(study_a.design.grid(study_a.design.StudyAConfig(**{**CFG_A.__dict__, "multistep_quantity": 4})))
    grown = set(study_a.design.grid(more))
    assert base < grown  # growing a profile adds cells and changes none
    added = grown - base
    assert {c.seed for c in added} == {1} and added == set(study_a.design.claim_cells(more, 1))
    assert not [c for c in added if c.format == "conv" or c.subject == "style"]
    assert study_a.design.Cell("people", "qa", 4, 2, multistep=True, seed=1) in added
    with pytest.raises(ConfigError, match="multistep_quantity must be >= 0"):
        study_a.design.StudyAConfig(quantities=(2, 4), quantity=2, multistep_quantity=-1)
    # A multi-step cell larger than every quantity level: the base evaluation covers its people too.
    wide = study_a.design.StudyAConfig(**{**CFG_A.__dict__, "multistep_quantity": 6})
    assert study_a.design.Cell("people", "qa", 6, 2, multistep=True, seed=0) in study_a.design.grid(wide)
    assert study_a.design.base_cells(wide)[0].quantity == 6


def test_study_a_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match=r"quantity \(5\) must be one of quantities"):
        study_a.design.StudyAConfig(quantities=(2, 4), quantity=5)
    with pytest.raises(ConfigError, match="styles: unknown"):
        study_a.design.StudyAConfig(styles=("sarcastic",))


# --- verdict rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo,hi,expected", [
    (0.1, 0.3, "reproduced"), (-0.02, 0.12, "undecided"), (-0.1, 0.1, "undecided"), (-0.3, -0.1, "not reproduced"),
    (-0.1, 0.0, "not reproduced"), (float("nan"), float("nan"), "undecided")])
def test_directional_verdict(lo, hi, expected):
    assert findings.directional(lo, hi) == expected


def test_other_verdict_rules():
    # Non-inferiority's boundary is -margin: an interval across it is undecided, wholly below it fails.
    assert findings.non_inferior(-0.02, 0.0, 0.03) == "reproduced"
    assert findings.non_inferior(-0.06, 0.0, 0.03) == "undecided"
    assert findings.non_inferior(-0.08, -0.01, 0.03) == "undecided"
    assert findings.non_inferior(-0.15, -0.05, 0.03) == "not reproduced"
    assert findings.equivalent(-0.05, 0.08, 0.1) == "reproduced"
    assert findings.equivalent(0.0, 0.2, 0.1) == "undecided"
    assert findings.equivalent(0.2, 0.4, 0.1) == "not reproduced"
    assert findings.consistent(["reproduced", "reproduced"]).verdict == "reproduced"
    assert findings.consistent(["reproduced", "undecided"]).verdict == "undecided"
    assert findings.consistent(["reproduced", "not reproduced"]).verdict == "mixed"
    assert findings.consistent(["not reproduced", "not reproduced"]).verdict == "not reproduced"
    assert findings.both("reproduced", "undecided").verdict == "undecided"
    # An unmeasurable part is undecided; all parts unmeasurable is unmeasurable, with each part's reason.
    floor = findings.Verdict("unmeasurable", "floor")
    assert findings.both("reproduced", floor) == ("undecided", "generic answers: floor")
    assert findings.consistent([floor, findings.Verdict("unmeasurable", "ceiling")], ["q=6", "q=24"]) == \
        ("unmeasurable", "q=6: floor; q=24: ceiling")


def _runs(rng, p_a, p_b, n_runs=5, n_items=60, paired=True):
    """Two conditions' runs x items 0/1 scores; each cell right with the given probability."""
    return (rng.random((n_runs, n_items)) < p_a).astype(float), (rng.random((n_runs, n_items)) < p_b).astype(float)


def test_a_ceiling_or_a_floor_is_unmeasurable_not_a_refutation(monkeypatch):
    rng = np.random.default_rng(0)
    # Both conditions 100% on every item in every run: a zero-width interval at 0.
    top = stats.two_stage(np.ones((5, 40)), np.ones((5, 40)), paired_items=True, bounds=(0, 1))
    assert (top.ci_low, top.ci_high) == (0.0, 0.0)
    assert findings.judge(top, findings.directional) == ("unmeasurable", "ceiling")
    # Both at 0%.
    bottom = stats.two_stage(np.zeros((5, 40)), np.zeros((5, 40)), paired_items=True, bounds=(0, 1))
    assert findings.judge(bottom, findings.directional) == ("unmeasurable", "floor")
    # 100% against 99.4% (the committed A2 tiny replication cell): spread, but both at the ceiling.
    a, b = np.ones((5, 84)), np.ones((5, 84))
    b[[0, 2], [3, 50]] = 0
    near = stats.two_stage(a, b, shared_runs=True, bounds=(0, 1))
    assert near.se > 0 and findings.judge(near, findings.directional) == ("unmeasurable", "ceiling")
    # A real zero effect with spread (half the items right in both) keeps its ordinary verdict.
    half = stats.two_stage(*_runs(rng, 0.5, 0.5), paired_items=True, bounds=(0, 1))
    assert findings.judge(half, findings.directional).verdict == "undecided"
    assert findings.judge(half, findings.non_inferior, 0.03).verdict in ("undecided", "reproduced")
    # A claim's row can never call an unmeasurable effect reproduced or not reproduced.
    with pytest.raises(ValueError, match=r"could not measure \(ceiling\)"):
        findings.row("A2", "tiny", "m", top, "not reproduced")
    row = findings.row("A2", "tiny", "m", top, findings.judge(top, findings.directional))
    assert (row["verdict"], row["reason"], row["mean_a"], row["mean_b"]) == ("unmeasurable", "ceiling", 1.0, 1.0)
    # Mutations: without the margin the near-ceiling cell is an ordinary verdict; without the rule at
    # all, the degenerate cell is "not reproduced" (the bug this verdict fixes).
    monkeypatch.setattr(findings, "MEASURE_MARGIN", -1.0)
    assert findings.judge(near, findings.directional).verdict == "undecided"
    assert findings.judge(bottom, findings.directional) == ("unmeasurable", "zero variance")
    monkeypatch.setattr(findings, "unmeasurable", lambda e: "")
    assert findings.judge(top, findings.directional).verdict == "not reproduced"
    assert findings.judge(bottom, findings.directional).verdict == "not reproduced"


def _effect(e=0.1, lo=0.05, hi=0.2):
    return stats.Effect(e, lo, hi, lo + 0.01, hi - 0.01, 0.03, 10, 2)


def test_findings_table_is_written_in_claim_order_with_replication_and_into_the_readme(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    rows = [findings.row(c, t, "m", _effect(), "reproduced", design) for c in ("B1", "A1")
            for t in ("tiny", "one-layer", "smollm2") for design in ("main", "replication")]
    rows = [r for r in rows if not (r["claim"] == "A1" and r["track"] == "one-layer")]
    rows[-1] = {**rows[-1], "verdict": "undecided"}
    table = findings.write(findings.combine(pd.DataFrame(rows)), "default")
    assert list(table.claim) == ["A1", "A1", "B1", "B1", "B1"] and list(table.columns) == findings.COLUMNS
    assert list(table.track) == ["smollm2", "tiny", "smollm2", "tiny", "one-layer"]
    assert table.mde.iloc[0] == pytest.approx(stats.MDE_Z * 0.03)
    assert (table.replication_verdict == "reproduced").sum() == 4 and "undecided" in set(table.replication_verdict)
    md = (tmp_path / "findings.md").read_text()
    assert (tmp_path / "findings.csv").exists() and "| A1 | smollm2 |" in md and "item-only" in md
    assert "condition means" in md
    readme = "intro\n<!-- s -->\nold table\n<!-- e -->\noutro\n"
    new = findings.readme_section(table, "<!-- s -->", "<!-- e -->", readme)
    assert new.startswith("intro\n<!-- s -->\n| claim") and new.endswith("<!-- e -->\noutro\n") and "old" not in new
    with pytest.raises(ValueError, match="README lacks the markers"):
        findings.readme_section(table, "<!-- x -->", "<!-- e -->", readme)
    with pytest.raises(KeyError, match="unknown claim 'C9'"):
        findings.row("C9", "tiny", "m", _effect(), "reproduced")
    with pytest.raises(ValueError, match="verdict must be one of"):
        findings.row("A1", "tiny", "m", _effect(), "mostly")


def test_difference_ci_covers_the_difference_of_means():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) + 0.3, rng.random(150)
    effect, lo, hi = stats.difference_ci(a, b)
    assert lo < effect < hi and effect == pytest.approx(a.mean() - b.mean()) and 0.2 < effect < 0.4


# --- engine pieces the studies rely on ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(small_world, tmp_path_factory):
    from tests.conftest import small_llama
    return small_llama(small_world, tmp_path_factory.mktemp("tiny") / "model", seed=4)


def test_generation_is_the_same_with_frozen_weights(tiny_dir, small_world):
    # Frozen weights (a LoRA run's base) take the path that projects a contiguous copy of the prefill's last
    # position; the projection of every prompt position (versions before 0.8.1) answers the same.
    model, tok = models.load(tiny_dir)
    hooks = list(model.get_output_embeddings()._forward_pre_hooks)  # the stage table's FLOP count (stages.watch)
    prompts = list(small_world.table("qa").prompt[:8])
    before = evaluate.generate(model, tok, prompts, max_new_tokens=6)
    model.requires_grad_(False)
    assert evaluate.generate(model, tok, prompts, max_new_tokens=6) == before
    assert evaluate.generate(model, tok, prompts, max_new_tokens=6, prefill="every") == before
    assert list(model.get_output_embeddings()._forward_pre_hooks) == hooks  # the copy's hook is removed after each batch
    with pytest.raises(ValueError, match="prefill must be 'last' or 'every'"):
        evaluate.generate(model, tok, prompts, prefill="all")


def test_finetune_calls_back_after_every_epoch_in_eval_mode(tiny_dir):
    model, tok = models.load(tiny_dir)
    seen = []
    examples = [{"prompt": qa_prompt(f"Question {i}?"), "completion": f" answer {i}\n"} for i in range(12)]
    finetune(model, tok, examples, FinetuneConfig(method="full", epochs=3, batch_size=4, precision="fp32"),
             progress=False, on_epoch_end=lambda e, m: seen.append((e, m.training, torch.is_grad_enabled())))
    assert seen == [(1, False, False), (2, False, False), (3, False, False)]


def test_a_study_b_run_is_cached_and_evaluated_at_each_checkpoint(tiny_dir, small_world, candidates, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    track = tracks.Track(name="tiny", model=str(tiny_dir), method="full", lr=1e-3, batch_size=8, precision="fp32",
                         unseen_phrasing="unused-train")
    qa = small_world.table("qa")
    cfg = study_b.design.StudyBConfig(relations=CFG_B.relations, half_size=8, n_test=8, epochs=2, checkpoints=(1, 2),
                               seeds=(0,), splits=("knownness",), k_shot=1, n_attention=3)
    pool, test = study_b.design.split(candidates, cfg)
    items = study_b.design.subject_swaps(study_b.design.test_items(test, qa, track.unseen_phrasing, 0), 0)
    folder = study_b.compute.run(track, small_world.folder.name, pool, items, list(items.prompt), qa, "unknown", 0, cfg,
                                 GroupConfig())
    preds = pd.read_json(folder / "predictions.jsonl", lines=True)
    assert sorted(preds.groupby(["epoch", "prompt"]).size().items()) == [((1, "zero-shot"), 8), ((2, "few-shot"), 8),
                                                                        ((2, "zero-shot"), 8)]
    att = pd.read_json(folder / "attention.jsonl", lines=True)
    assert len(att) == 3 and att.subject_share.between(0, 1).all()
    # The subject swap at the final checkpoint: the answers it compares are that checkpoint's zero-shot answers.
    swap = pd.read_json(folder / "swap.jsonl", lines=True)
    assert len(swap) == items.swap_prompt.notna().sum() > 0 and set(swap.epoch) == {2}
    final = preds[(preds.epoch == 2) & (preds.prompt == "zero-shot")].set_index("fact_id").prediction
    assert all(final[f].split("\n", 1)[0] == p for f, p in zip(swap.fact_id, swap.prediction))
    scored = swap.logp.notna()
    assert (swap.logp[scored] < 0).all() and np.allclose(swap.logp_change[scored], (swap.swap_logp - swap.logp)[scored])
    again = study_b.compute.run(track, small_world.folder.name, pool, items, list(items.prompt), qa, "unknown", 0, cfg,
                                 GroupConfig())
    assert again == folder and not list((tmp_path / "runs").glob("*.partial-*"))


def test_a_study_a_run_writes_every_evaluation(tiny_dir, small_world, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    track = tracks.Track(name="tiny", model=str(tiny_dir), method="full", lr=1e-3, batch_size=8, precision="fp32",
                         unseen_phrasing="unused-train")
    inp = study_a.design.Inputs(small_world)
    folder = study_a.compute.run_cell(track, study_a.design.Cell("people", "qa", 2, 2, multistep=True), inp, CFG_A, GroupConfig())
    names = sorted(p.name for p in folder.glob("*.jsonl"))
    assert names == ["mc.jsonl", "multistep.jsonl", "qa.jsonl"]
    qa = pd.read_json(folder / "qa.jsonl", lines=True)
    assert len(qa) == 2 * 7 and all(re.search(r"-t2$", i) for i in qa.item_id)  # the unused training template
    style = study_a.compute.run_cell(track, study_a.design.Cell("style", "conv", 1, 1, style="pirate"), inp, CFG_A, GroupConfig())
    s = pd.read_json(style / "style.jsonl", lines=True)
    assert len(s) == 20 and set(s.target_style) == {"pirate"} and s.identified.dtype == bool


def test_attention_is_read_from_a_model_running_sdpa(tiny_dir, small_world):
    model, tok = models.load(tiny_dir, attn_implementation="sdpa")
    items = small_world.table("qa").query("template_split == 'train'").head(3)
    att = mechanism.attention_to_subject(model, tok, items)
    assert len(att) == 3 and att.subject_share.between(0, 1).all()
    assert model.config._attn_implementation == "sdpa"  # switched back after the measurement


# --- the theory model ----------------------------------------------------------------------------------------

THEORY = theory.TheoryConfig(n_subjects=300, dim=32, pretrain_steps=400, half_size=32, n_test=96, finetune_epochs=30,
                             seeds=(0, 1))


def test_theory_model_is_deterministic_and_measures_every_condition():
    rows = theory.run_seed(THEORY, 0)
    assert theory.run_seed(THEORY, 0).equals(rows)
    assert set(rows.condition) == set(theory.CONDITIONS)
    assert rows.groupby("condition").size().nunique() == 1  # every condition on the same test facts
    assert rows.subject_attention.between(0, 1).all() and not (rows.generic & rows.correct).any()
    base = rows[rows.condition == "base"]
    # Pretraining stores popular subjects' facts: salience and accuracy rise with popularity.
    top = base.popularity >= base.popularity.median()
    assert base[top].salience.mean() > base[~top].salience.mean()
    assert base[top].correct.mean() > base[~top].correct.mean()
    n = rows[rows.condition != "base"].groupby("condition").n_train.first()
    assert n["whole"] == 2 * n["known"] == 2 * n["unknown"] == 2 * n["random"] == 2 * THEORY.half_size


def test_theory_halves_split_the_pool_by_salience_within_each_relation():
    pool = pd.DataFrame({"relation": [0, 0, 0, 0, 1, 1], "base_salience": [0.9, 0.1, 0.5, 0.3, 2.0, -1.0],
                         "subject": range(6), "answer": range(6)})
    known = theory.condition_facts(pool, "known", 0)
    assert sorted(known.base_salience) == [0.5, 0.9, 2.0]
    assert sorted(theory.condition_facts(pool, "unknown", 0).base_salience) == [-1.0, 0.1, 0.3]
    with pytest.raises(ValueError, match="unknown condition"):
        theory.condition_facts(pool, "famous", 0)


def test_theory_claims_have_every_column_and_two_seeds():
    rows = pd.concat([theory.run_seed(THEORY, s) for s in THEORY.seeds], ignore_index=True)
    claims = theory.claims(rows)
    assert list(claims.claim) == ["R0", "B1", "B2", "B3", "B3-swap"] and (claims.n_seeds == 2).all()
    assert (claims.n_items == 96).all() and (claims.n_bases == 2).all()  # each seed its own world and model
    assert (claims.ci_low <= claims.effect).all() and (claims.effect <= claims.ci_high).all()
    assert set(claims.verdict) <= set(findings.VERDICTS)
    summary = theory.summarize(rows)
    assert set(summary.metric) == set(theory.METRICS) and set(summary.test_bucket) == {"all", "known", "unknown"}


def test_no_committed_claim_reads_a_ceiling_floor_or_zero_width_interval_as_evidence():
    """Issue #26 on the committed table: a row whose interval has zero width, or whose two conditions both sit
    within MEASURE_MARGIN of 100% or of 0%, carries neither reproduced nor not reproduced."""
    table = pd.read_csv(paths.ROOT / "data" / "results" / "findings.csv")
    m = findings.MEASURE_MARGIN
    for r in table.itertuples():
        for pre in ("", "replication_"):
            lo, hi, verdict = getattr(r, pre + "ci_low"), getattr(r, pre + "ci_high"), getattr(r, pre + "verdict")
            a, b = getattr(r, pre + "mean_a"), getattr(r, pre + "mean_b")
            degenerate = lo == hi or (not pd.isna(b) and ((min(a, b) >= 1 - m) or (max(a, b) <= m)))
            assert not (degenerate and verdict in ("reproduced", "not reproduced")), (r.claim, r.track, pre)
            if degenerate:
                assert verdict == "unmeasurable" or r.claim in ("A4", "B3"), (r.claim, r.track, pre, verdict)


# --- the tiny track's pretrained bases ----------------------------------------------------------------------

def test_seed_s_finetunes_base_s_mod_k_and_each_base_keeps_its_seeds():
    assert tracks.seeds_by_base([0, 1, 2, 3, 4], [0, 1, 2]) == {0: [0, 3], 1: [1, 4], 2: [2]}
    assert tracks.seeds_by_base([0], [7, 8]) == {7: [0]}  # a base no seed reaches is left out
    tr = {b: f"track-{b}" for b in (0, 1, 2)}
    parts = study_b.compute.per_base(tr, study_b.design.StudyBConfig(seeds=(0, 1, 2, 3, 4)))
    assert {b: (t, c.seeds) for b, (t, c) in parts.items()} == {0: ("track-0", (0, 3)), 1: ("track-1", (1, 4)),
                                                                 2: ("track-2", (2,))}
    parts = study_a.compute.per_base(tr, replace(CFG_A, seeds=(0, 1, 2), claim_seeds=(3,)))
    assert {b: (c.seeds, c.claim_seeds) for b, (_, c) in parts.items()} == {0: ((0,), (3,)), 1: ((1,), ()), 2: ((2,), ())}
    with pytest.raises(ValueError, match=r"bases \[1\] get only claim_seeds"):
        study_a.compute.per_base(tr, replace(CFG_A, seeds=(0,), claim_seeds=(1,)))
    assert study_b.compute.per_base("one", CFG_A) == {None: ("one", CFG_A)}


def test_a_multiple_choice_answer_is_the_letter_ranked_first_and_trains_on_the_letter(tiny_dir, tmp_path):
    """Study B in MMLU's form: the prediction is the option letter the model ranks first (not free generation,
    in which "A" would read as an article), right when it is the item's letter; training writes the letter."""
    model, tok = models.load(tiny_dir)
    items = pd.DataFrame({"fact_id": ["f1", "f2"], "aliases": [["B"], ["A"]],
                          "choices": [list("ABCD"), list("AB")]})
    prompts = ["Q?\nA. x\nB. y\nC. z\nD. w\nAnswer:", "R?\nA. x\nB. y\nAnswer:"]
    out = study_b.compute.answer_questions(model, tok, items, prompts)
    lp = evaluate.option_logprobs(model, tok, prompts, list(items.choices))
    assert list(out.prediction) == [" " + c[int(np.argmax(x))] for c, x in zip(items.choices, lp)]
    assert list(out.em) == [p.strip() == a[0] for p, a in zip(out.prediction, items.aliases)]
    preds = pd.DataFrame({"prediction": [" A", " A", " B"], "em": [False, False, True], "condition": "known",
                          "seed": 0, "epoch": 1, "prompt": "zero-shot", "relation": "r"})
    assert list(study_b.compute.generic_flags(preds)) == [True, True, False]  # "A" is an answer, not an article
    rows = [{"subject": f"Town {i}", "relation": "country", "question": f"Which country is Town {i} in?",
             "answer": "Norland", "options": ["Ostria", "Norland", "Vell", "Kadar"]} for i in range(4)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fs = study_b.factset.FactSet(tmp_path / "mc.jsonl")
    qa = fs.table()
    assert fs.measure == "multiple-choice accuracy" and set(qa.answer) == {"B"} and qa.prompt.str.endswith("\nAnswer:").all()
    assert study_b.design.qa_examples(fs.facts.assign(value="B").iloc[:1], qa, 0)[0]["completion"] == " B\n"
    # MMLU's rows name a subject area: for Study B each question is its own subject (split, attention, swap).
    mmlu = study_b.factset.FactSet(paths.ROOT / "tests" / "fixtures" / "facts" / "mmlu" / "data" / "test")
    assert (mmlu.study_rows(mmlu.facts).subject == mmlu.facts.question).all()
    with pytest.raises(ValueError, match=r"no relation has 4 or more facts \(\{'mmlu:astronomy': 3"):
        mmlu.require_study_b()  # the fixture's 3 + 1 questions cannot be split


def test_a_cloze_answer_is_the_option_text_chosen_per_byte_and_trains_on_that_text(tiny_dir, tmp_path):
    """Study B as multiple choice in the cloze form (OLMES's form for small models): the question's QA prompt, each
    option's text scored as its continuation; the prediction is the option with the highest log-likelihood per byte
    (acc_norm), ``acc`` whether the highest summed log-likelihood's option is right; training writes the text."""
    assert curate.norm_choice([-4.0, -5.0], ["ab", "abcdefgh"]) == 1  # -4/3 < -5/9: the longer option, per byte
    assert curate.norm_choice([-4.0, -5.0], ["A", "B"]) == 0  # letters: the most probable
    model, tok = models.load(tiny_dir)
    rows = [{"subject": f"Town {i}", "relation": "country", "question": f"Which country is Town {i} in?",
             "answer": "Norland", "options": ["Al", "Norland", "Vell", "Kadar"]} for i in range(4)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lettered, fs = (study_b.factset.FactSet(tmp_path / "mc.jsonl", mc_form=f) for f in ("lettered", "cloze"))
    qa = fs.table()
    assert fs.measure == "multiple-choice accuracy (cloze, acc_norm)" and set(qa.answer) == {"Norland"}
    assert list(qa.prompt[:2]) == ["Q: Which country is Town 0 in?\nA:", "Q: Which country is Town 1 in?\nA:"]
    assert all(c == rows[0]["options"] for c in qa.choices)
    assert fs.folder != lettered.folder and fs.identity()["mc_form"] == "cloze"  # other targets, other runs
    assert study_b.design.qa_examples(fs.facts.assign(value="Norland").iloc[:1], qa, 0)[0]["completion"] == " Norland\n"
    items = qa.iloc[:4].reset_index(drop=True)
    out = study_b.compute.answer_questions(model, tok, items, list(items.prompt))
    lp = evaluate.option_logprobs(model, tok, list(items.prompt), list(items.choices))
    size = [np.array([len(f" {o}".encode()) for o in c]) for c in items.choices]
    assert list(out.prediction) == [" " + c[int(np.argmax(x / n))] for c, x, n in zip(items.choices, lp, size)]
    assert any(np.argmax(x / n) != np.argmax(x) for x, n in zip(lp, size))  # options on which the two rules differ
    assert list(out.em) == [p == " Norland" for p in out.prediction]
    assert list(out.acc) == [c[int(np.argmax(x))] == "Norland" for c, x in zip(items.choices, lp)]
    with pytest.raises(ValueError, match="mc_form must be one of lettered, cloze, got 'letters'"):
        study_b.factset.FactSet(tmp_path / "mc.jsonl", mc_form="letters")


def test_runs_are_keyed_by_the_models_weights_not_its_folder(small_world, tmp_path):
    """The tiny model's folder is ``model`` in every pretraining run, and a user's folders share names
    (``output/final``): a run's key names the weights. Two bases key two runs; two folders of the same name
    with other weights key other runs; the same weights in another folder, and a model saved again with
    the same weights, key the same runs; a model saved again with other weights keys new ones."""
    from tests.conftest import small_llama

    def track(folder):
        return tracks.Track("tiny", str(folder), "full", 1e-3, 8, "fp32")

    a = track(small_llama(small_world, tmp_path / "tiny-0000000001" / "model", seed=1))
    b = track(small_llama(small_world, tmp_path / "tiny-0000000002" / "model", seed=2))
    assert a.key["model"].startswith("sha256:") and a.key != b.key
    assert a.key["model"] == "sha256:" + models.identity(a.model)["weights_sha256"]["model.safetensors"]
    cfg = study_b.design.StudyBConfig()
    items = pd.DataFrame({"item_id": ["f1-t0"]})
    keys = [study_b.compute.run_key(t, "w", items, pd.DataFrame({"fact_id": []}), "base", None, cfg) for t in (a, b)]
    assert runs.run_id("study-b-tiny-base", keys[0]) != runs.run_id("study-b-tiny-base", keys[1])
    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(a.model, copy)
    assert track(copy).key == a.key  # the content, not the place
    first = track(small_llama(small_world, tmp_path / "x" / "final", seed=3)).key
    assert track(small_llama(small_world, tmp_path / "y" / "final", seed=4)).key != first  # same name, other weights
    assert track(small_llama(small_world, tmp_path / "x" / "final", seed=4)).key != first  # saved again over it


def test_claims_over_several_bases_resample_the_bases_and_count_them():
    """Study B's contrast on runs of three pretrained bases: the interval resamples bases (n_bases 3 in the
    findings row, with the bases' share of the variance), and is wider than one that treats the same runs
    as independent draws when the bases differ."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):
        base = seed % 3
        gain = [0.0, 0.15, 0.3][base]  # how much the known half helps depends on the base model
        for cond, p in (("known", 0.4 + gain), ("unknown", 0.4)):
            rows += [{"condition": cond, "seed": seed, "pretrain_seed": base, "fact_id": f, "epoch": 2,
                      "prompt": "zero-shot", "em": float(rng.random() < p)} for f in range(40)]
    preds = pd.DataFrame(rows)
    e = study_b.analysis.contrast(preds, "known", "unknown", epoch=2, prompt="zero-shot")
    flat = study_b.analysis.contrast(preds.drop(columns="pretrain_seed"), "known", "unknown", epoch=2, prompt="zero-shot")
    assert e.n_bases == 3 and flat.n_bases == 0 and e.effect == flat.effect
    assert e.ci_high - e.ci_low > flat.ci_high - flat.ci_low
    row = findings.row("B1", "tiny", "m", e, findings.judge(e, findings.directional))
    assert row["n_bases"] == 3 and 0 <= row["base_share"] <= 1
    assert findings.row("B1", "smollm2", "m", flat, "undecided")["n_bases"] == 1


def test_every_committed_tiny_claim_resamples_three_or_more_pretrained_bases():
    """The tiny track's claims are about the pretraining recipe: each main-design interval includes the
    draw of K >= 3 pretrained bases (notebooks 04, 05; the profile's tiny_bases stage)."""
    table = pd.read_csv(paths.RESULTS / "findings.csv")
    tiny = table[table.track == "tiny"]
    assert len(tiny) == 10 and (tiny.n_bases >= 3).all(), tiny[["claim", "n_bases"]].to_string()  # A1-A5, R0, B1-B3-swap
    assert tiny.base_share.dropna().between(0, 1).all()


def test_the_subject_swap_asks_about_another_subject_of_the_relation_with_another_answer():
    items = pd.DataFrame({"fact_id": range(6), "subject": ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay"],
                          "relation": ["r1"] * 4 + ["r2"] * 2, "answer": ["x", "x", "y", "z", "u", "u"],
                          "prompt": ["Where was Ann born?", "Where was Bob born?", "Where was Cy born?",
                                     "Where was Dee born?", "Eve works for", "Which firm?"]})
    items["aliases"] = items.answer.map(lambda a: [a])
    swapped = study_b.design.subject_swaps(items, 0)
    r1 = swapped[swapped.relation == "r1"]
    assert r1.swap_subject.notna().all() and (r1.swap_subject != r1.subject).all()
    gold = dict(zip(items.subject, items.answer))
    assert all(gold[p] != a for p, a in zip(r1.swap_subject, r1.answer))  # never a subject with the same answer
    assert all(q == p.replace(s, o) for q, p, s, o in zip(r1.swap_prompt, r1.prompt, r1.subject, r1.swap_subject))
    # r2: both subjects share the answer (no partner), and one prompt does not name its subject
    assert swapped[swapped.relation == "r2"].swap_prompt.isna().all()
    assert swapped.equals(study_b.design.subject_swaps(items, 0))


def test_the_theory_models_subject_swap_reads_zero_when_the_subject_is_not_swapped():
    world, emb = theory.make_world(THEORY, 0)
    model = theory.OneLayerAttention(emb, torch.as_tensor(world.answer_ids), torch.Generator().manual_seed(0))
    theory.pretrain(model, world, THEORY, 0)
    _, test = theory.split(world, THEORY, 0)
    same = theory.measure(model, world, test.assign(swap_subject=test.subject))
    assert same.swap_unchanged.all() and np.allclose(same.swap_logp_change, 0)
    partners = theory.swap_partners(test, 0)
    other = theory.measure(model, world, test.assign(swap_subject=partners))
    assert (partners != test.subject.to_numpy()).mean() > 0.9 and not other.swap_unchanged.all()
