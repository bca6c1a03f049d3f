"""What every benchmark measures against: the machine, its matmul peak, the FLOPs a finetuning step
needs (for MFU), and the QA data the throughput benchmarks train on.

Usage: ``peak = machine.matmul_peak(torch.bfloat16)``; ``machine.flops_needed(model, "lora", tokens, loss_tokens)``.
"""

from __future__ import annotations

from knowinject.core.hardware import machine, matmul_peak, peaks  # noqa: F401 (what the benchmarks measure against)


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
    from knowinject.data import geo, render

    facts = geo.realworld_facts(geo.RealWorldConfig(min_country_population=0, n_cities=2000))
    qa = render.qa_items(facts, "train").head(n)
    return [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in qa.itertuples()]
