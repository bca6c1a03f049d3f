"""Training kernels for small decoders on a CPU: a fused LoRA linear layer and RMSNorm, swapped into a
model for the duration of finetuning by :func:`fused_training`.

Why: a 576-wide model on a CPU with AMX spends most of a training step outside its matmuls (the
profile ``make bench`` writes to ``bench_profile.csv``: matmuls are about a third of a SmolLM2 LoRA
step). Every element-wise pass over the activations costs about as much as a projection, so the
kernels here do the same arithmetic in fewer passes:

- **LoRA linear.** peft computes ``base(x) + B(A(dropout(x))) * scaling`` by casting ``x`` to the
  adapter's dtype and back, then scaling and adding in separate passes; backward accumulates two
  input gradients. Here the adapter's output is accumulated into the base output by one ``addmm_``
  (the scaling is its ``alpha``), and backward does the same for the input gradient: 4 small
  matmuls and no element-wise pass.
- **RMSNorm.** Hugging Face's Llama RMSNorm is 8 autograd nodes (each saving a tensor); here it is one,
  with the same arithmetic (statistics in fp32, normalised values rounded to the input dtype, then
  scaled by the weight) and a hand-written backward.

The arithmetic matches the modules they replace (the reference tests in ``tests/test_kernels.py`` compare
losses and gradients with Hugging Face and peft). Modules the kernels do not cover (LoRA dropout,
DoRA, merged or several adapters, other norms) keep their own forward.
"""

from __future__ import annotations

import contextlib

import torch

# Part of the cache key of every LoRA run (``tracks.Track.key``): the kernels round differently from
# peft's forward (one bf16 rounding of the adapter's sum instead of three), so a run trained before
# them is not the run this code would make.
VERSION = 1


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with W frozen; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float):
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2 @ a.t()                                     # [M, r]
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        out.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scaling, ctx.shape = scaling, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, weight, a, b, xa = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
        gb = g @ b                                          # [M, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(gb, a, alpha=s).view(ctx.shape)
        if ctx.needs_input_grad[3]:
            grad_a = torch.mm(gb.t(), x2).mul_(s)
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(g.t(), xa).mul_(s)
        return grad_x, None, None, grad_a, grad_b, None


class _RMSNorm(torch.autograd.Function):
    """Hugging Face's Llama RMSNorm, ``w * (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(x.dtype)``, as one node."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.to(torch.float32, copy=True)  # a copy even for fp32 input: it is scaled in place below
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        normed = xf.mul_(rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return weight * normed

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.to(torch.float32, copy=True).mul_(rstd)  # never in place on the saved input
        grad_w = None
        if ctx.needs_input_grad[1]:
            # The product is rounded to the input dtype before the weight multiplies it, as in forward.
            grad_w = (grad.float() * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        gy = grad.float() * weight.float()
        # d/dx of x * rstd(x): rstd * (gy - xhat * mean(gy * xhat)); the cast to x.dtype passes gradients through.
        coef = (gy * xhat).mean(-1, keepdim=True)
        grad_x = gy.sub_(xhat.mul_(coef)).mul_(rstd).to(x.dtype)
        return grad_x, grad_w, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def lora_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a peft ``lora.Linear`` with one active plain adapter, through :class:`_LoraLinear`."""
    name = module.active_adapters[0]
    dtype = _compute_dtype(x)
    base = module.base_layer
    bias = None if base.bias is None else base.bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _LoraLinear.apply(x.to(dtype), base.weight.to(dtype), bias, module.lora_A[name].weight.to(dtype),
                                 module.lora_B[name].weight.to(dtype), float(module.scaling[name]))


def rmsnorm_forward(module, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, module.weight, module.variance_epsilon)


def _plain_lora(module) -> bool:
    """A peft LoRA linear layer that :func:`lora_forward` computes exactly."""
    try:
        from peft.tuners.lora import Linear
    except ImportError:
        return False
    if not isinstance(module, Linear) or module.merged or module.disable_adapters:
        return False
    active = list(module.active_adapters)
    return (len(active) == 1 and active[0] in module.lora_A and not module.lora_variant
            and isinstance(module.lora_dropout[active[0]], torch.nn.Identity)
            and not getattr(module, "fan_in_fan_out", False) and isinstance(module.base_layer, torch.nn.Linear))


def _llama_rmsnorm(module) -> bool:
    # By name and shape, not class: Llama, Mistral, Qwen2 and SmolLM copies of the same module.
    return (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
            and type(module).__name__ not in ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")
            and getattr(module, "weight", None) is not None and module.weight.dim() == 1)


@contextlib.contextmanager
def fused_training(model, enabled: bool = True):
    """Within the block, the model's plain LoRA linear layers and Llama-style RMSNorms run through the
    kernels above; their own forwards are restored on exit (also on an exception)."""
    swapped = []
    if enabled:
        for module in model.modules():
            if _plain_lora(module):
                swapped.append(module)
                module.forward = lora_forward.__get__(module)
            elif _llama_rmsnorm(module):
                swapped.append(module)
                module.forward = rmsnorm_forward.__get__(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward  # the instance attribute; the class's forward shows through again
