"""The curation tool: knownness of any fact table with any causal model, resumable from its cache,
and Study B's advice as ``--keep known``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from knowinject.core import paths

from knowinject.train import models

from knowinject.eval import curate

from .conftest import small_llama

FIX = Path(__file__).parent / "fixtures" / "facts"


@pytest.fixture(scope="module")
def model_dir(small_world, tmp_path_factory):
    return small_llama(small_world, tmp_path_factory.mktemp("curate") / "llama", seed=5)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    return tmp_path / "runs"


def _main(*args):
    return curate.main([a for a in map(str, args)])


def test_scores_every_fact_keeps_the_known_and_resumes_from_its_cache(model_dir, runs, tmp_path, monkeypatch):
    out = tmp_path / "scored.jsonl"
    assert _main("--model", model_dir, "--facts", FIX / "popQA.tsv", "--out", out, "--n-sets", "2") == 0
    scored = pd.read_json(out, lines=True)
    assert len(scored) == 4 and {"gold_prob", "few_shot_em", "slick", "known"} <= set(scored.columns)
    assert set(scored.slick) <= {"HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"}
    assert scored.known.tolist() == scored.slick.isin(curate.KNOWN).tolist()
    meta = json.loads((tmp_path / "scored.provenance.json").read_text())
    assert meta["model"]["weights_sha256"] and meta["n_facts"] == 4 and meta["kept"] == "all"
    # Cached: a second call (e.g. after an interruption) reads every chunk back and never loads the model.
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model was loaded again"))
    assert _main("--model", model_dir, "--facts", FIX / "popQA.tsv", "--out", tmp_path / "unknown.jsonl",
                 "--keep", "unknown") == 0
    unknown = pd.read_json(tmp_path / "unknown.jsonl", lines=True)
    assert len(unknown) == (~scored.known).sum() and not unknown.known.any()


def test_an_interrupted_scoring_keeps_its_finished_chunks(model_dir, runs, monkeypatch):
    calls = []
    real = curate.knownness.measure

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(curate.knownness, "measure", flaky)
    cfg = curate.knownness.KnownnessConfig(n_sets=1, n_samples=0)
    with pytest.raises(KeyboardInterrupt):
        curate.score(model_dir, FIX / "entityquestions" / "dataset" / "test", cfg, progress=False, chunk=2)
    assert len(list(runs.glob("knownness-facts-*"))) == 1  # the first chunk is kept, nothing half-written
    done = curate.score(model_dir, FIX / "entityquestions" / "dataset" / "test", cfg, progress=False, chunk=2)
    assert len(done) == 5 and len(calls) == 4  # resumed: chunks 2 and 3 computed, chunk 1 read back


def test_multiple_choice_is_known_when_the_correct_letter_is_most_probable(model_dir, runs):
    cfg = curate.knownness.KnownnessConfig(k_shot=1)
    scored = curate.score(model_dir, FIX / "mmlu" / "data" / "test", cfg, progress=False)
    assert len(scored) == 4 and all(abs(sum(p) - 1) < 1e-6 for p in scored.option_probs)
    best = [max(range(4), key=lambda i: p[i]) for p in scored.option_probs]
    assert scored.known.tolist() == [b == "ABCD".index(a) for b, a in zip(best, scored.answer_letter)]


def test_a_cloze_question_is_known_when_its_option_text_is_chosen_per_byte(model_dir, runs):
    """The cloze form: each option's text scored after the question's QA prompt; known when the correct option has
    the highest log-likelihood per byte (acc_norm), the same choice Study B's answers make; cached apart from the
    lettered form's scores."""
    cfg = curate.knownness.KnownnessConfig(k_shot=1)
    mmlu = FIX / "mmlu" / "data" / "test"
    cloze = curate.score(model_dir, mmlu, cfg, progress=False, mc_form="cloze")
    lettered = curate.score(model_dir, mmlu, cfg, progress=False)
    assert len(list(runs.glob("knownness-facts-*"))) == 2 and all(abs(sum(p) - 1) < 1e-6 for p in cloze.option_probs)
    model, tok = models.load(model_dir)
    best = [int(np.argmax(p)) for p in cloze.option_probs]
    assert cloze.known.tolist() == [b == "ABCD".index(a) for b, a in zip(best, cloze.answer_letter)]
    zero = curate.measure_mc(model, tok, cloze, cloze, replace(cfg, k_shot=0), "cloze")
    lp = curate.evaluate.option_logprobs(model, tok, [curate.render.qa_prompt(q) for q in cloze.question],
                                         [list(o) for o in cloze.options])
    assert zero.known.tolist() == [curate.norm_choice(x, o) == "ABCD".index(a)
                                   for x, o, a in zip(lp, cloze.options, cloze.answer_letter)]
    assert lettered.option_probs.map(len).eq(4).all() and not cloze.option_probs.equals(lettered.option_probs)
    with pytest.raises(curate.ConfigError, match="mc_form must be one of lettered, cloze"):
        curate.score(model_dir, mmlu, cfg, progress=False, mc_form="letter")


def test_bad_fact_files_and_models_are_refused_with_a_message(model_dir, runs, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "X", "answer": "y"}\n')
    assert _main("--model", model_dir, "--facts", bad, "--out", tmp_path / "o.jsonl") == 2
    assert "bad.jsonl: missing column relation" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert _main("--model", tmp_path / "nomodel", "--facts", FIX / "popQA.tsv", "--out", tmp_path / "o.jsonl") == 2
    assert "no model folder" in capsys.readouterr().err
