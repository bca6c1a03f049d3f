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


# --- many adapters over one frozen base (knowinject.train.grouped) ----------------------------------------------------
# Several LoRA runs share one frozen base model: each row of a batch goes through its own run's adapter.
# Every LoRA layer gets a table of adapter *slots* (A, B, scaling), and a routing (set per batch by
# :func:`routed`) says which slot each row uses (-1: the base alone). The base matmul runs once over all
# rows; each adapter's two small matmuls run over its rows only, which are contiguous blocks.

_SEGMENTS: list[tuple[int, int, int]] | None = None  # (slot, first row, last row + 1) of the current batch
_ROWS: int = 0                                       # rows of the current batch


def segments(routes) -> list[tuple[int, int, int]]:
    """Runs of equal consecutive slot ids: [(slot, lo, hi)]. Rows sorted by slot give one segment a slot."""
    routes = [int(r) for r in routes]
    out, lo = [], 0
    for i in range(1, len(routes) + 1):
        if i == len(routes) or routes[i] != routes[lo]:
            out.append((routes[lo], lo, i))
            lo = i
    return out


@contextlib.contextmanager
def routed(routes):
    """Within the block, row ``i`` of every batch through the model's slotted LoRA layers uses slot
    ``routes[i]`` (-1: no adapter). The batch must have ``len(routes)`` rows."""
    global _SEGMENTS, _ROWS
    previous = (_SEGMENTS, _ROWS)
    _SEGMENTS, _ROWS = segments(routes), len(routes)
    try:
        yield
    finally:
        _SEGMENTS, _ROWS = previous


def _token_bounds(x: torch.Tensor) -> list[tuple[int, int, int]]:
    if _SEGMENTS is None:
        raise RuntimeError("a slotted LoRA layer ran outside kernels.routed(...): say which adapter each row uses")
    if x.shape[0] != _ROWS:
        raise RuntimeError(f"the batch has {x.shape[0]} rows but the routing names {_ROWS}")
    per_row = x[0].numel() // x.shape[-1]  # tokens per row ([rows, tokens, features] or [rows, features])
    return [(slot, lo * per_row, hi * per_row) for slot, lo, hi in _SEGMENTS if slot >= 0]


class _GroupedLoraLinear(torch.autograd.Function):
    """y = x W^T + b, and for the tokens [lo, hi) of each segment j: + s_j (x A_j^T) B_j^T.
    ``adapters`` is (a_0, b_0, a_1, b_1, ...), one pair per segment; the arithmetic per row is that of
    :class:`_LoraLinear` (one bf16 rounding of the adapter's sum)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bounds, scalings, *adapters):
        x2 = x.reshape(-1, x.shape[-1])
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        xas = []
        for (lo, hi), s, a, b in zip(bounds, scalings, adapters[0::2], adapters[1::2]):
            xa = x2[lo:hi] @ a.t()
            out[lo:hi].addmm_(xa, b.t(), alpha=s)
            xas.append(xa)
        ctx.save_for_backward(x2, weight, *adapters, *xas)
        ctx.bounds, ctx.scalings, ctx.shape, ctx.n = bounds, scalings, x.shape, len(bounds)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, weight, *rest = ctx.saved_tensors
        adapters, xas = rest[:2 * ctx.n], rest[2 * ctx.n:]
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
        need_x = ctx.needs_input_grad[0]
        grad_x = g @ weight if need_x else None
        grads = []
        for (lo, hi), s, a, b, xa in zip(ctx.bounds, ctx.scalings, adapters[0::2], adapters[1::2], xas):
            gj = g[lo:hi]
            gb = gj @ b
            if need_x:
                grad_x[lo:hi].addmm_(gb, a, alpha=s)
            grads += [torch.mm(gb.t(), x2[lo:hi]).mul_(s), torch.mm(gj.t(), xa).mul_(s)]
        return (None if grad_x is None else grad_x.view(ctx.shape), None, None, None, None, *grads)


def grouped_lora_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Training forward of a slotted LoRA layer: every segment's rows through its slot's adapter."""
    bounds = _token_bounds(x)
    slots = module._knowinject_slots
    dtype = _compute_dtype(x)
    base = module.base_layer
    bias = None if base.bias is None else base.bias.to(dtype)
    adapters, scalings = [], []
    for slot, _, _ in bounds:
        a, b, s = slots[slot]
        adapters += [a.to(dtype), b.to(dtype)]
        scalings.append(s)
    with torch.autocast(x.device.type, enabled=False):
        return _GroupedLoraLinear.apply(x.to(dtype), base.weight.to(dtype), bias, [(lo, hi) for _, lo, hi in bounds],
                                        scalings, *adapters)


def routed_lora_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Evaluation forward of a slotted LoRA layer, with peft's arithmetic for each row: the base in its
    own dtype, the adapter in the adapter's dtype, their sum rounded once to the base's output dtype."""
    bounds = _token_bounds(x)
    out = module.base_layer(x)
    flat = out.view(-1, out.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    for slot, lo, hi in bounds:
        a, b, s = module._knowinject_slots[slot]
        delta = (x2[lo:hi].to(a.dtype) @ a.t()) @ b.t() * s
        flat[lo:hi] = (flat[lo:hi] + delta).to(flat.dtype)
    return out


def lora_layers(model) -> list:
    """The model's peft LoRA linear layers that slots can serve (no dropout or variants; checked per adapter)."""
    try:
        from peft.tuners.lora import Linear
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, Linear) and not m.merged and isinstance(m.base_layer, torch.nn.Linear)
            and not getattr(m, "fan_in_fan_out", False)]


class Slots:
    """Adapter slots of a peft model, one table per LoRA layer: :meth:`add` an adapter of the model (its
    parameters, trained in place), :meth:`freeze` a copy of one (a checkpoint to evaluate later),
    :meth:`release` a slot. Routes are slot ids."""

    def __init__(self, model):
        self.layers = lora_layers(model)
        if not self.layers:
            raise ValueError("the model has no peft LoRA linear layers to give adapter slots")
        self.norms = [m for m in model.modules() if _llama_rmsnorm(m)]
        for m in self.layers:
            m._knowinject_slots = []

    def add(self, adapter: str) -> int:
        for m in self.layers:
            if not (isinstance(m.lora_dropout[adapter], torch.nn.Identity) and adapter not in m.lora_variant):
                raise ValueError(f"adapter {adapter!r} uses LoRA dropout or a LoRA variant: slots serve plain adapters")
            m._knowinject_slots.append((m.lora_A[adapter].weight, m.lora_B[adapter].weight, float(m.scaling[adapter])))
        return len(self.layers[0]._knowinject_slots) - 1

    def freeze(self, slot: int) -> int:
        for m in self.layers:
            a, b, s = m._knowinject_slots[slot]
            m._knowinject_slots.append((a.detach().clone(), b.detach().clone(), s))
        return len(self.layers[0]._knowinject_slots) - 1

    def release(self, slot: int) -> None:
        for m in self.layers:
            m._knowinject_slots[slot] = None

    @contextlib.contextmanager
    def training(self):
        """Slotted LoRA layers through :class:`_GroupedLoraLinear`, RMSNorms through :class:`_RMSNorm`."""
        with self._swapped(grouped_lora_forward, norms=True):
            yield

    @contextlib.contextmanager
    def evaluation(self):
        """Slotted LoRA layers with peft's arithmetic per row; every other module its own forward."""
        with self._swapped(routed_lora_forward, norms=False):
            yield

    @contextlib.contextmanager
    def _swapped(self, forward, norms: bool):
        for m in self.layers:
            m.forward = forward.__get__(m)
        for m in self.norms if norms else []:
            m.forward = rmsnorm_forward.__get__(m)
        try:
            yield
        finally:
            for m in self.layers + (self.norms if norms else []):
                del m.forward


def slot_state(model, slot: int) -> dict[str, torch.Tensor]:
    """The adapter in ``slot`` as ``{"<layer>.lora_A": A, "<layer>.lora_B": B}`` (what tests compare
    with a solo run's adapter, and what a caller saves)."""
    out = {}
    for name, m in model.named_modules():
        table = getattr(m, "_knowinject_slots", None)
        if table is not None and table[slot] is not None:
            a, b, _ = table[slot]
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a.detach().clone(), b.detach().clone()
    return out


def adapter_state(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """A peft model's adapter in the same layout as :func:`slot_state`."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {}):
            out[f"{name}.lora_A"] = m.lora_A[adapter].weight.detach().clone()
            out[f"{name}.lora_B"] = m.lora_B[adapter].weight.detach().clone()
    return out
