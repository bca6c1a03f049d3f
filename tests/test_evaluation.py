"""Evaluation engine pieces: multi-step conditioning, persona identification, mechanism diagnostics,
many adapters against one base model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from knowinject.data import render
from knowinject.data.templates import STYLES

from knowinject.train import models
from knowinject.train.finetune import FinetuneConfig, finetune

from knowinject.eval import evaluate, mechanism, persona


@pytest.fixture(scope="module")
def tiny(small_world):
    tok = small_world.tokenizer()
    tok.padding_side = "left"
    model = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=2), tok)
    model.config._attn_implementation = "eager"
    return model.eval(), tok


def test_multistep_accuracy_conditions_on_single_hops():
    ms = pd.DataFrame({"type": ["two_hop"] * 3, "name": ["birth_country"] * 3, "em": [True, False, True],
                       "hop_fact_ids": [["a", "x"], ["b", "x"], ["c", "x"]]})
    single = pd.DataFrame({"fact_id": ["a", "b", "c", "x"], "em": [True, True, False, True]})
    r = evaluate.multistep_accuracy(ms, single).iloc[0]
    assert r.em == pytest.approx(2 / 3) and r.n_hops_known == 2 and r.em_given_hops_known == 0.5


def test_style_classifier_tells_the_styles_apart(small_world):
    styles = small_world.table("styles")
    train, held = styles[styles.split == "train"], styles[styles.split == "heldout"]
    clf = persona.StyleClassifier().fit([m[1]["content"] for m in train.messages], list(train["style"]))
    for style in STYLES:
        texts = [m[1]["content"] for m in held[held["style"] == style].messages]
        assert clf.identification_accuracy(texts, style) >= 0.9, style
    # Neutral text carries no style: it is not identified as any one style reliably.
    neutral = [f"{t} is a topic people discuss." for t in ("rivers", "bread", "clocks", "maps")]
    assert clf.identification_accuracy(neutral, "pirate") < 1.0
    with pytest.raises(ValueError, match="two styles"):
        persona.StyleClassifier().fit(["a", "b"], ["x", "x"])


def test_attention_to_subject_sums_to_at_most_one(tiny):
    model, tok = tiny
    items = pd.DataFrame({"item_id": ["i1"], "subject": ["Alric Ashdown"],
                          "prompt": [render.qa_prompt("Where was Alric Ashdown born?")]})
    att = mechanism.attention_to_subject(model, tok, items).iloc[0]
    assert 0 < att.subject_attention and 0 < att.relation_attention
    assert att.subject_attention + att.relation_attention <= 1 + 1e-5
    assert 0 < att.subject_share < 1 and len(att.subject_attention_by_layer) == 2


def test_generic_answer_rate_and_forgetting():
    scored = pd.DataFrame({"relation": ["capital"] * 4, "prediction": ["Paris", "paris.", "Rome", "Paris"],
                           "answer": ["Paris", "Rome", "Rome", "Lima"]})
    r = mechanism.generic_answer_rate(scored).iloc[0]
    assert r.generic_answer == "paris" and r.generic_rate == 0.75 and r.gold_mode_rate == 0.5
    before = pd.DataFrame({"item_id": [1, 2, 3, 4], "em": [True, True, False, False]})
    after = pd.DataFrame({"item_id": [1, 2, 3, 4], "em": [True, False, True, False]})
    f = mechanism.forgetting(before, after)
    assert f["forgotten"] == 0.5 and f["newly_right"] == 0.5 and f["n_known"] == 2


def test_many_adapters_against_one_base(tiny, small_world, tmp_path):
    model, tok = tiny
    qa = render.qa_items(small_world.table("facts").query("group == 'new'").head(4), "train")
    ex = [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in qa.itertuples()]
    dirs = []
    for seed in (0, 1):
        base = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=2), tok)
        cfg = FinetuneConfig(method="lora", epochs=3, lr=5e-2, batch_size=4, seed=seed, precision="fp32",
                             lora_targets=("q_proj", "v_proj", "up_proj"))
        finetune(base, tok, ex, cfg, out_dir=tmp_path / f"a{seed}", progress=False)
        dirs.append(tmp_path / f"a{seed}" / "model")
    probe = torch.tensor([tok(qa.prompt.iloc[0]).input_ids])
    with torch.no_grad():
        before = model(probe).logits.clone()
    results = evaluate.evaluate_adapters(model, dirs, lambda m: m(probe).logits.detach().clone())
    outs = list(results.values())
    assert len(outs) == 2 and not torch.allclose(outs[0], before) and not torch.allclose(outs[0], outs[1])
    with torch.no_grad():
        assert torch.allclose(model(probe).logits, before)  # the base is untouched afterwards
