"""Models: the reference test against Hugging Face, loading paths, and a real LoRA finetune."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knowinject.data import render

from knowinject.train import models
from knowinject.train.encoding import batch_loss, collate, encode
from knowinject.train.finetune import FinetuneConfig, finetune

from knowinject.eval import evaluate


@pytest.fixture(scope="module")
def tiny(small_world):
    tok = small_world.tokenizer()
    tok.padding_side = "left"
    model = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=1), tok)
    return model.eval(), tok


def _batch(tok):
    examples = [{"prompt": "Q: Where was Alric Ashdown born?\nA:", "completion": " Lagos\n"},
                {"prompt": "Q: How tall is Brisa Orlov?\nA:", "completion": " 181\n"},
                {"text": "Brisa Orlov works as a pilot. Brisa Orlov was born in 1955."}]
    return collate([encode(e, tok, 64) for e in examples], tok.pad_token_id)


def test_loss_and_logprobs_equal_hugging_face(tiny):
    """Reference test: our loss and per-token log-probabilities against the model's own."""
    model, tok = tiny
    b = _batch(tok)
    with torch.no_grad():
        ours = batch_loss(model, b)
        hf = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                   labels=b["labels"]).loss
        assert torch.allclose(ours, hf, atol=1e-5), (ours, hf)
        lp = evaluate.token_logprobs(model, b["input_ids"], b["attention_mask"])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits
        ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
        assert torch.allclose(lp, ref, atol=1e-5)
        # Summed log-probs of the labelled tokens = -(loss x number of labelled tokens).
        mask = b["labels"][:, 1:] != -100
        assert torch.allclose(-(lp[mask]).sum() / mask.sum(), hf, atol=1e-5)


def test_collate_masks_prompt_and_padding(tiny):
    _, tok = tiny
    b = _batch(tok)
    ids, n_prompt = encode({"prompt": "Q: Where was Alric Ashdown born?\nA:", "completion": " Lagos\n"}, tok, 64)
    row = b["labels"][0]
    assert (row[: b["input_ids"].shape[1] - len(ids) + n_prompt] == -100).all()
    assert tok.decode(row[row != -100]) == " Lagos\n"
    assert (b["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token
    long_ids, n = encode({"prompt": "x " * 200, "completion": " Lagos\n"}, tok, 32)
    assert len(long_ids) == 32 and tok.decode(long_ids[n:]) == " Lagos\n"  # truncation keeps the answer


def test_batched_generation_matches_one_prompt_at_a_time(tiny):
    model, tok = tiny
    prompts = ["Q: Where was Alric Ashdown born?\nA:", "Q: hi\nA:", "Q: How tall is Brisa Orlov in cm?\nA:"]
    batched = evaluate.generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [evaluate.generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_finetune_is_deterministic(tiny, small_world):
    _, tok = tiny
    qa = render.qa_items(small_world.table("facts").query("group == 'new'").head(6), "train")
    ex = [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in qa.itertuples()]
    cfg = FinetuneConfig(method="full", epochs=2, lr=1e-3, batch_size=4, log_every=1)
    runs = []
    for _ in range(2):
        m = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=1), tok)
        runs.append(finetune(m, tok, ex, cfg, progress=False)[1].log.loss.tolist())
    assert runs[0] == runs[1]


def test_tiny_model_saved_to_a_folder_loads_like_a_hub_id(tiny, tmp_path):
    model, tok = tiny
    models.save(model, tok, tmp_path / "m")
    again, tok2 = models.load(tmp_path / "m")
    ids = torch.tensor([tok("Q: hi\nA:").input_ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    assert tok2.padding_side == "left" and tok2.pad_token is not None


def test_missing_model_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(models.ModelNotFound, match="no model folder at .*give a folder with config.json"):
        models.load(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFound, match="Offline"):
        models.load("some-org/some-model-that-is-not-cached")


def test_a_hub_id_without_network_fails_within_seconds(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # a host that never answers, wherever this runs
    start = time.perf_counter()
    with pytest.raises(models.ModelNotFound, match="Offline"):
        models.load("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - start < 5


def test_a_folder_without_config_or_safetensors_names_what_is_missing(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(models.ModelNotFound, match=r"lacks config.json and \*.safetensors weights.*save_pretrained"):
        models.load(empty)
    model, tok = tiny
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    tok.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # what older checkpoints ship
    with pytest.raises(models.ModelNotFound, match=r"lacks \*.safetensors weights \(it has pytorch_model.bin"):
        models.load(pickled)


def test_an_encoder_or_a_truncated_checkpoint_is_refused_within_seconds(tiny, tmp_path):
    import time

    from transformers import BertConfig, BertForMaskedLM

    model, tok = tiny
    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert)
    tok.save_pretrained(bert)
    start = time.perf_counter()
    with pytest.raises(models.ModelNotFound, match=r"holds a BertForMaskedLM \(model_type 'bert'\), not a causal "
                                                   r"language model.*causal \(decoder\) language model"):
        models.load(bert)
    cut = tmp_path / "cut"
    models.save(model, tok, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy that stopped halfway
    with pytest.raises(models.ModelNotFound, match=r"cut/model.safetensors is not a readable safetensors file.*"
                                                   r"truncated or corrupt. Save the model again"):
        models.load(cut)
    weights.write_bytes(b"\x05")  # not even a header
    with pytest.raises(models.ModelNotFound, match=r"model.safetensors is not a readable safetensors file"):
        models.load(cut)
    assert time.perf_counter() - start < 10


@pytest.fixture(scope="module")
def smollm2():
    return models.load(models.SMOLLM2)


@pytest.mark.slow
def test_smollm2_converts_from_gguf_and_knows_popular_capitals(smollm2):
    assert models.smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (models.smollm2_dir() / "model.safetensors").exists()
    model, tok = smollm2
    assert 130e6 < models.n_params(model) < 140e6
    shots = "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Italy?\nA: Rome\n"
    items = pd.DataFrame({"prompt": [shots + render.qa_prompt(f"What is the capital of {c}?") for c in
                                     ("Germany", "Japan", "China", "Chad")],
                          "aliases": [["Berlin"], ["Tokyo"], ["Beijing"], ["N'Djamena"]]})
    # A real pretrained model: it knows the capitals of populous countries (not necessarily Chad's).
    assert evaluate.score_qa(model, tok, items).em.iloc[:3].sum() >= 2


@pytest.mark.slow
def test_lora_finetune_on_20_facts_learns_them(small_world):
    """20 new facts: training loss falls and QA accuracy rises, on trained and held-out phrasings."""
    facts = small_world.table("facts").query("group == 'new' and kind == 'categorical'").head(20)
    qa = render.qa_items(facts, "all")
    train, heldout = qa[qa.template_split == "train"], qa[qa.template_split == "heldout"]
    model, tok = models.load(models.SMOLLM2)
    before_train = evaluate.score_qa(model, tok, train).em.mean()
    before_held = evaluate.score_qa(model, tok, heldout).em.mean()
    ex = [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in train.itertuples()]
    model, res = finetune(model, tok, ex, FinetuneConfig(method="lora", epochs=6, lr=3e-3, batch_size=8),
                          progress=False)
    after_train = evaluate.score_qa(model, tok, train).em.mean()
    after_held = evaluate.score_qa(model, tok, heldout).em.mean()
    print(f"loss {res.epoch_loss}; train EM {before_train:.2f}->{after_train:.2f}; "
          f"held-out EM {before_held:.2f}->{after_held:.2f}")
    assert res.epoch_loss[-1] < 0.3 * res.epoch_loss[0]
    assert after_train >= before_train + 0.5
    assert after_held > before_held


def test_logprobs_of_the_last_tokens_only_match_the_full_computation(tiny):
    model, tok = tiny
    b = _batch(tok)
    with torch.no_grad():
        full = evaluate.token_logprobs(model, b["input_ids"], b["attention_mask"])
        last = evaluate.token_logprobs(model, b["input_ids"], b["attention_mask"], last=4)
    assert torch.allclose(full[:, -4:], last, atol=1e-5)


def _lora_llama(vocab_size: int):
    """A grouped-query Llama wrapped in LoRA (random B, so the adapters count): the SmolLM2 path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from knowinject.train.finetune import prepare

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = prepare(LlamaForCausalLM(cfg), FinetuneConfig(method="lora", lora_r=4, lora_alpha=8), "fp32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa-lora"])
def test_options_from_a_shared_prompt_score_like_separate_pairs(tiny, arch):
    """Multiple choice runs each question once and its options from the question's cache; every
    option's log-probability must equal the one its own (question, option) sequence gets."""
    model, tok = tiny
    if arch != "gpt2":
        model = _lora_llama(len(tok))
    people = ["Alric Ashdown", "Brisa Orlov", "Cato Vell", "Dara Quist", "Emrys Tal", "Fenna Ro", "Gil Amari", "Hale"]
    prompts = [f"Q: Where was {p} born?\nA:" if i % 2 else f"Q: {p}?\nA:" for i, p in enumerate(people)]
    options = [["Lagos", "New Lagos City", "181", "a pilot born in 1955"][: 2 + i % 3] + ["born"] * (i % 2)
               for i in range(len(prompts))]
    lengths = {len(tok(f" {o}", add_special_tokens=False).input_ids) for opts in options for o in opts}
    assert 1 in lengths and max(lengths) >= 4  # one-token options (no forward) and padded groups both occur
    pairs = evaluate.continuation_logprobs(model, tok, [p for p, o in zip(prompts, options) for _ in o],
                                           [f" {x}" for o in options for x in o], batch_size=32)
    for bs in (1, 3, 8):
        shared = evaluate.option_logprobs(model, tok, prompts, options, batch_size=bs)
        assert [len(s) for s in shared] == [len(o) for o in options]
        assert torch.allclose(torch.tensor(np.concatenate(shared)), torch.tensor(pairs), atol=1e-4), bs
    items = pd.DataFrame({"prompt": prompts, "options": options, "gold_index": [i % 2 for i in range(len(prompts))]})
    a = evaluate.score_multiple_choice(model, tok, items, batch_size=4)
    b = evaluate.score_multiple_choice(model, tok, items, batch_size=4, shared_prompt=False)
    assert a[["acc", "acc_norm"]].equals(b[["acc", "acc_norm"]])
