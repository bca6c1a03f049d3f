"""What every benchmark measures against: the machine, its matmul peak, the FLOPs a finetuning step
needs (for MFU), and the QA data the throughput benchmarks train on.

Usage: ``peak = machine.matmul_peak(torch.bfloat16)``; ``machine.flops_needed(model, "lora", tokens, loss_tokens)``.
"""

from __future__ import annotations

from knowinject.core.hardware import machine, matmul_peak, peaks  # noqa: F401 (what the benchmarks measure against)
from knowinject.core.stages import param_split


def flops_needed(model, method: str, tokens: int, loss_tokens: int) -> float:
    factor = 6 if method == "full" else 4
    body, head = param_split(model)
    return factor * body * tokens + factor * head * loss_tokens


def qa_examples(n: int) -> list[dict]:
    from knowinject.data import geo, render

    facts = geo.realworld_facts(geo.RealWorldConfig(min_country_population=0, n_cities=2000))
    qa = render.qa_items(facts, "train").head(n)
    return [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in qa.itertuples()]
