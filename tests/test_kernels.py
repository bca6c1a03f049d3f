"""Reference tests for the training kernels: the same losses and gradients as peft's LoRA layer and
Hugging Face's RMSNorm, and forwards restored after training."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from knowinject.train import kernels
from knowinject.train.encoding import loss_module
from knowinject.train.finetune import FinetuneConfig, prepare


def _lora_model(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = prepare(LlamaForCausalLM(cfg), FinetuneConfig(method="lora", lora_r=4, lora_alpha=8,
                                                          lora_dropout=dropout, lora_targets=("q_proj", "v_proj", "o_proj")),
                    "bf16" if dtype == torch.bfloat16 else "fp32")
    with torch.no_grad():  # peft starts B at zero; a random B makes the adapter's path count
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in one row
    labels = ids.clone()
    labels[:, :6] = -100
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
            "labels": labels}


def _loss_and_grads(model, fused: bool, autocast: bool):
    model.zero_grad(set_to_none=True)
    with kernels.fused_training(model, enabled=fused), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_module(model)(**_batch())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_matches_peft_in_fp32():
    model = _lora_model()
    ref_loss, ref = _loss_and_grads(model, fused=False, autocast=False)
    loss, grads = _loss_and_grads(model, fused=True, autocast=False)
    assert len(ref) == 12  # A and B of 3 targets x 2 layers
    assert torch.allclose(loss, ref_loss, atol=1e-6), (loss, ref_loss)
    for name, g in ref.items():
        assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-6), name


def test_fused_lora_matches_peft_under_bf16_autocast():
    """bf16 rounds differently in the two paths (one rounding of the adapter's sum instead of three),
    so they agree to bf16 precision, not bit for bit."""
    model = _lora_model(torch.bfloat16)
    ref_loss, ref = _loss_and_grads(model, fused=False, autocast=True)
    loss, grads = _loss_and_grads(model, fused=True, autocast=True)
    assert abs(float(loss - ref_loss)) < 0.01 * float(ref_loss)
    for name, g in ref.items():
        assert grads[name].dtype == torch.float32  # adapters and their gradients stay fp32 for the optimizer
        cos = torch.nn.functional.cosine_similarity(grads[name].flatten(), g.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rmsnorm_matches_hugging_face(dtype):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
    norm = norm.to(dtype)
    x = (torch.randn(5, 7, 48) * 3).to(dtype)
    grad = torch.randn(5, 7, 48).to(dtype)
    outs = {}
    for fused in (False, True):
        xi = x.clone().requires_grad_(True)
        norm.weight.grad = None
        with kernels.fused_training(norm, enabled=fused):
            y = norm(xi)
        y.backward(grad)
        outs[fused] = (y.detach(), xi.grad, norm.weight.grad)
        assert torch.equal(xi.detach(), x)  # the input (the residual stream) is never scaled in place
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for ours, ref, what in zip(outs[True], outs[False], ("output", "input gradient", "weight gradient")):
        assert ours.dtype == ref.dtype, what
        assert torch.allclose(ours.float(), ref.float(), **tol), what


def test_forwards_are_restored_and_uncovered_layers_keep_theirs():
    model = _lora_model(dropout=0.1)  # LoRA dropout: not a plain adapter, peft's forward stays
    with kernels.fused_training(model) as n:
        assert n == 5  # the RMSNorms only: 2 per layer and the final one
        assert not any("forward" in vars(m) for m in model.modules() if type(m).__name__ == "Linear"
                       and hasattr(m, "lora_A"))
    plain = _lora_model()
    with pytest.raises(RuntimeError, match="boom"):
        with kernels.fused_training(plain) as n:
            assert n == 5 + 6
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in plain.modules())  # restored on the exception too


def test_lora_runs_have_their_own_cache_key(monkeypatch):
    """Runs trained through the kernels are not the runs trained through peft's forward."""
    from knowinject.train import models
    from knowinject.train.tracks import Track

    monkeypatch.setattr(models, "content_key", lambda name: "sha256:" + "0" * 64)  # no model needed for this rule

    lora = Track("smollm2", "x", "lora", 1e-3, 8, "bf16", 16, "heldout")
    full = Track("tiny", "x", "full", 1e-3, 8, "fp32", 16, "heldout")
    assert lora.key["kernels"] == kernels.VERSION and "kernels" not in full.key
