"""Packed pretraining: whole documents per row, none attending to another, the same loss as one
document at a time; the loop learns its corpus and calls back after each epoch."""

from __future__ import annotations

import pytest
import torch

from knowinject.core.config import ConfigError

from knowinject.train import models, pretrain
from knowinject.train.encoding import batch_loss


@pytest.fixture(scope="module")
def tok_and_docs(small_world):
    tok = small_world.tokenizer()
    texts = list(small_world.table("corpus").text[:12])
    docs = [ids + [tok.eos_token_id] for ids in tok(texts, add_special_tokens=False).input_ids]
    return tok, texts, docs


def test_packing_keeps_whole_documents_in_order(tok_and_docs):
    _, _, docs = tok_and_docs
    rows = pretrain.pack(docs, 128, range(len(docs)))
    assert [d for row in rows for d in row] == [d[:128] for d in docs]
    assert all(sum(len(d) for d in row) <= 128 for row in rows) and len(rows) < len(docs)


def test_packed_loss_equals_the_loss_of_each_document_alone(tok_and_docs):
    tok, _, docs = tok_and_docs
    model = models.tiny_model(models.TinyModelConfig(2, 64, 2, 256, 0), tok)
    model.config._attn_implementation = "eager"
    rows = pretrain.pack(docs, 256, range(len(docs)))
    ids, pos, labels = pretrain.collate_packed(rows, 256, len(rows) + 1, tok.pad_token_id)  # one all-padding row
    with torch.no_grad():
        packed = float(pretrain.PackedLoss(model)(ids, pos, labels))
        total = n = 0
        for d in docs:
            x = torch.tensor([d])
            y = x.clone()
            y[0, 0] = -100
            batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "position_ids": torch.arange(len(d))[None],
                     "labels": y}
            total += float(batch_loss(model, batch, reduction="sum"))
            n += len(d) - 1
    # Documents in one row do not see each other: a leak through attention would change the loss.
    assert packed == pytest.approx(total / n, rel=1e-5)
    assert int((labels != -100).sum()) == n + len(docs) - len(docs)  # no loss on a document's first token


def test_pretraining_learns_and_calls_back_every_epoch(tok_and_docs):
    tok, texts, _ = tok_and_docs
    texts = texts * 4  # a small corpus seen often enough to learn
    model = models.tiny_model(models.TinyModelConfig(2, 64, 2, 128, 0), tok)
    cfg = pretrain.PretrainConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, epochs=3, lr=1e-2, batch_size=2,
                                  precision="fp32", compile=False)
    seen = []
    _, result = pretrain.train_packed(model, tok, texts, cfg, progress=False,
                                      on_epoch_end=lambda e, m: seen.append((e, m.training, torch.is_grad_enabled())))
    assert seen == [(1, False, False), (2, False, False), (3, False, False)]
    assert result.epoch_loss[-1] < 0.7 * result.epoch_loss[0] and model.config.use_cache


def test_pretrain_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        pretrain.PretrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="divisible by n_head"):
        pretrain.PretrainConfig(n_embd=100, n_head=3)


def test_two_pretrainings_of_one_config_write_the_same_bytes(small_world, tmp_path):
    """The controlled instrument is a model: the smoke profile's recipe (its precision and compile
    setting) run twice on one machine must give byte-identical weights (compiled kernels did not)."""
    from dataclasses import replace

    from knowinject.core.config import build, stage_params

    cfg = replace(build(pretrain.PretrainConfig, stage_params("smoke", "pretrain"), "pretrain"), epochs=2)
    tok = small_world.tokenizer()
    texts = list(small_world.table("corpus").text[:160])
    for name in ("a", "b"):
        model = models.tiny_model(cfg.model_config(), tok)
        pretrain.train_packed(model, tok, texts, cfg, out_dir=tmp_path / name, progress=False)
    a, b = ((tmp_path / n / "model" / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert a == b
