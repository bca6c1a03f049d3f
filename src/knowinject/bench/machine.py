"""What every benchmark measures against: the machine, its matmul peak, the FLOPs a finetuning step
needs (for MFU), and the QA data the throughput benchmarks train on.

Usage: ``peak = machine.matmul_peak(torch.bfloat16)``; ``machine.flops_needed(model, "lora", tokens, loss_tokens)``.
"""

from __future__ import annotations

import platform
import time

import torch

from knowinject.data import geo, render


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} x{torch.get_num_threads()} threads"


def matmul_peak(dtype, n: int = 2048, iters: int = 10, trials: int = 5) -> float:
    """Measured FLOP/s of a square matmul in ``dtype`` (the roofline MFU is reported against): the best
    of several trials, so a momentary stall does not lower the peak and inflate every MFU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


def param_split(model) -> tuple[int, int]:
    """(non-embedding parameters, parameters of the vocabulary projection)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings().weight.numel()
    total = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    embed = base.get_input_embeddings().weight.numel()
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    return total - embed - (0 if tied else head), head


def flops_needed(model, method: str, tokens: int, loss_tokens: int) -> float:
    factor = 6 if method == "full" else 4
    body, head = param_split(model)
    return factor * body * tokens + factor * head * loss_tokens


def qa_examples(n: int) -> list[dict]:
    facts = geo.realworld_facts(geo.RealWorldConfig(min_country_population=0, n_cities=2000))
    qa = render.qa_items(facts, "train").head(n)
    return [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in qa.itertuples()]
