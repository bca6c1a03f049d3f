"""Study B's mechanism diagnostics: where the answer position attends (subject vs relation tokens),
how often answers collapse to a relation's generic answer, and forgetting of what the base model knew.

Usage: ``att = mechanism.attention_to_subject(model, tok, items)``; ``mechanism.generic_answer_rate(scored)``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from knowinject.train.kernels import routed

from knowinject.eval import scoring


def _spans(prompt: str, subject: str, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Token ids of ``prompt`` and the indices of subject tokens and of the other question tokens
    (the relation), leaving out the "Q: " / "\\nA:" scaffolding."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    start = prompt.find(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not found in prompt {prompt!r}")
    end = start + len(subject)
    q_start, q_end = prompt.find(" ") + 1, prompt.rfind("\n")
    subj, rel = [], []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b <= a:
            continue
        if a < end and b > start:
            subj.append(i)
        elif a >= q_start and b <= q_end:
            rel.append(i)
    return enc["input_ids"], subj, rel


@torch.no_grad()
def attention_to_subject(model, tokenizer, items: pd.DataFrame, routes=None) -> pd.DataFrame:
    """Attention mass from the last prompt position (the one that predicts the answer) onto subject
    tokens and onto relation tokens, averaged over heads, per layer and overall. One row per item.

    Attention weights exist only in eager attention: a model running SDPA (the GPU default) is
    switched to eager for this measurement and back afterwards. With ``routes`` (an adapter slot per
    item, :mod:`knowinject.train.grouped`), the items that share a prompt run as one batch of identical rows,
    one row per adapter: no padding, so every row computes what it would alone.
    """
    device = next(model.parameters()).device
    config = model.config
    previous = getattr(config, "_attn_implementation", "eager")
    config._attn_implementation = "eager"
    try:
        return _attention_rows(model, tokenizer, items, device, routes)
    finally:
        config._attn_implementation = previous


def _attention_rows(model, tokenizer, items: pd.DataFrame, device, routes=None) -> pd.DataFrame:

    rows = [None] * len(items)
    # Attention weights need no vocabulary projection (for Gemma 3's 262k entries, most of a forward): the decoder alone.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else model
    positions = pd.Series(range(len(items))).groupby(items.prompt.to_numpy(), sort=False)
    for prompt, where in positions:
        where = list(where)
        if routes is not None:
            where.sort(key=lambda i: routes[i])
        first = items.iloc[where[0]]
        ids, subj, rel = _spans(prompt, first.subject, tokenizer)
        # Items sharing a prompt are one question (the prompt names the subject): one row each, one batch.
        with routed([routes[i] for i in where]) if routes is not None else contextlib.nullcontext():
            out = body(input_ids=torch.tensor([ids] * len(where), device=device), output_attentions=True, use_cache=False)
        if out.attentions is None or out.attentions[0] is None:
            raise RuntimeError("the model returned no attentions: load it with attn_implementation='eager'")
        for row, i in enumerate(where):
            att = torch.stack([a[row, :, -1, :].float().mean(0) for a in out.attentions])  # [layers, positions]
            s, q = att[:, subj].sum(1), att[:, rel].sum(1)
            rows[i] = {"item_id": items.iloc[i].item_id, "subject_attention": float(s.mean()),
                       "relation_attention": float(q.mean()), "subject_share": float((s / (s + q).clamp(min=1e-9)).mean()),
                       "subject_attention_by_layer": s.tolist()}
    return pd.DataFrame(rows)


def generic_answer_rate(scored: pd.DataFrame) -> pd.DataFrame:
    """Per relation: the most frequent (normalised) prediction and the share of answers equal to it.
    High values mean the model answers the relation, not the subject (Study B's failure mode)."""
    rows = []
    for rel, g in scored.groupby("relation"):
        norm = g.prediction.map(lambda p: scoring.normalize_answer(scoring.first_line(p)))
        top = norm.value_counts()
        gold_share = g.answer.map(scoring.normalize_answer).value_counts(normalize=True)
        rows.append({"relation": rel, "generic_answer": top.index[0] if len(top) else "",
                     "generic_rate": float(top.iloc[0] / len(g)) if len(top) else np.nan,
                     # The rate a perfect model would show: the most common gold value's share.
                     "gold_mode_rate": float(gold_share.iloc[0]) if len(gold_share) else np.nan, "n": len(g)})
    return pd.DataFrame(rows)


def forgetting(before: pd.DataFrame, after: pd.DataFrame, key: str = "item_id") -> dict:
    """Among items the base model answered right, the share it gets wrong after finetuning; and the
    reverse (newly right among those it got wrong)."""
    m = before[[key, "em"]].merge(after[[key, "em"]], on=key, suffixes=("_before", "_after"))
    knew = m[m.em_before.astype(bool)]
    missed = m[~m.em_before.astype(bool)]
    return {"forgotten": float((~knew.em_after.astype(bool)).mean()) if len(knew) else np.nan, "n_known": len(knew),
            "newly_right": float(missed.em_after.astype(bool).mean()) if len(missed) else np.nan,
            "n_unknown": len(missed)}
