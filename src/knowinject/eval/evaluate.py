"""Batched evaluation: greedy generation scored by exact match, multiple choice by log-likelihood,
and per-token log-probabilities (the helper the reference test checks against Hugging Face).
Multiple choice runs each question once and its options from the question's key/value cache.

Batches are left-padded and grouped by length; generation stops per row at the first newline
(every token whose text contains a newline ends a row), which is what makes batching pay.
Usage: ``scores = evaluate.score_qa(model, tok, items)``.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from knowinject.core.config import require

from knowinject.train.encoding import CausalLMLoss, encode_prompt
from knowinject.train.kernels import routed

from knowinject.eval import scoring


def _position_ids(mask):
    return (mask.cumsum(1) - 1).clamp(min=0)


def _left_pad(seqs: list[list[int]], pad_id: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def newline_token_ids(tokenizer) -> list[int]:
    """Every token whose text contains a newline: any of them ends an answer."""
    cached = getattr(tokenizer, "_knowinject_newlines", None)
    if cached is None:
        vocab = tokenizer.get_vocab()
        cached = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))
        tokenizer._knowinject_newlines = cached
    return cached


def _batches(lengths, batch_size, routes=None):
    """Index batches of similar lengths; with ``routes``, each batch's rows ordered by slot, so that every
    adapter's rows are one contiguous block (the order of rows within a batch changes no result)."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if routes is not None:
        batches = [b[np.argsort([routes[i] for i in b], kind="stable")] for b in batches]
    return batches


@contextlib.contextmanager
def _contiguous_head(model):
    """The prefill of a generation projects only its last position onto the vocabulary (Hugging Face's
    ``logits_to_keep=1``), as a contiguous copy. With frozen weights (a LoRA model's base) torch's matmul
    does not fold the strided slice of hidden states into one matrix product: it expands the projection
    per row (a [B, 576, 49152] copy for SmolLM2), 6x slower than projecting every prompt position. The
    copy avoids both; for Gemma 3's 262k-entry vocabulary the projection of every position was most of a
    few-shot prefill. Logits are unchanged: each row's projection is the same dot products."""
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:])) if head is not None else None
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()


def _routed(routes, rows):
    """The routing of a batch whose rows are ``rows`` (no routing without ``routes``)."""
    return contextlib.nullcontext() if routes is None else routed([routes[i] for i in rows])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 32,
             chat: bool = False, temperature: float | None = None, seed: int = 0, routes=None,
             prefill: str = "last") -> list[str]:
    """Continuations of ``prompts``, each cut at its first newline: greedy, or sampled at
    ``temperature`` (plain softmax sampling, seeded) when one is given. ``routes`` (one adapter slot per
    prompt, :mod:`knowinject.train.grouped`) evaluates many adapters over one base in the same batches.
    ``prefill="every"`` projects every prompt position onto the vocabulary, as versions before 0.8.1 did
    (the same answers; ``make bench`` measures the two against each other)."""
    require(prefill in ("last", "every"), f"prefill must be 'last' or 'every', not {prefill!r}")
    sampling = {} if temperature is None else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    if temperature is not None:
        torch.manual_seed(seed)
    encoded = [encode_prompt(p, tokenizer, chat) for p in prompts]
    stop = newline_token_ids(tokenizer) + [tokenizer.eos_token_id]
    out = [""] * len(prompts)
    device = next(model.parameters()).device
    keeps = getattr(model, "_supports_logits_to_keep", lambda: False)
    for idx in _batches([len(e) for e in encoded], batch_size, routes):
        ids, mask = _left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        with _routed(routes, idx), _contiguous_head(model) if prefill == "last" else contextlib.nullcontext():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, use_cache=True,
                                 **({"logits_to_keep": 0} if prefill == "every" and keeps() else {}),
                                 **(sampling or {"do_sample": False}))
        for row, i in enumerate(idx):
            text = tokenizer.decode(gen[row, ids.shape[1]:], skip_special_tokens=True)
            out[i] = text.split("\n", 1)[0]
    return out


def score_qa(model, tokenizer, items: pd.DataFrame, prefix: str = "", max_new_tokens: int = 12,
             batch_size: int = 32, routes=None) -> pd.DataFrame:
    """``items`` with ``prediction``, ``em`` and ``contains`` columns (one row per item)."""
    preds = generate(model, tokenizer, [prefix + p for p in items.prompt], max_new_tokens, batch_size, routes=routes)
    out = items.copy()
    out["prediction"] = preds
    out["em"] = [scoring.exact_match(p, a) for p, a in zip(preds, items.aliases)]
    out["contains"] = [scoring.contains_match(p, a) for p, a in zip(preds, items.aliases)]
    return out


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompts: list[str], continuations: list[str], batch_size: int = 32,
                          routes=None) -> np.ndarray:
    """Summed log-probability of each continuation given its prompt (tokenised as in training)."""
    pairs = []
    for p, c in zip(prompts, continuations):
        pids = encode_prompt(p, tokenizer)
        cids = tokenizer(c, add_special_tokens=False).input_ids
        pairs.append((pids + cids, len(cids)))
    out = np.zeros(len(pairs))
    device = next(model.parameters()).device
    for idx in _batches([len(s) for s, _ in pairs], batch_size, routes):
        ids, mask = _left_pad([pairs[i][0] for i in idx], tokenizer.pad_token_id)
        n_last = max(pairs[i][1] for i in idx)
        # Left padding puts every continuation at the end: only the last n_last positions need the
        # vocabulary projection, which at 49k entries is most of the cost of a full forward.
        with _routed(routes, idx):
            lp = token_logprobs(model, ids.to(device), mask.to(device), last=n_last)
        for row, i in enumerate(idx):
            n = pairs[i][1]
            out[i] = float(lp[row, -n:].sum())
    return out


def _decoder_logits(parts, input_ids, attention_mask, position_ids, cache, positions):
    """Logits at ``positions`` (an index over [B, T]: slices or a boolean mask) of a forward that
    extends ``cache`` (none: no cache). Where the model allows it (``parts.direct``), the vocabulary
    projection runs on those positions only."""
    kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
          "past_key_values": cache, "use_cache": cache is not None}
    if parts.direct:
        h = parts.base.get_decoder()(**kw).last_hidden_state
        return parts.base.get_output_embeddings()(h[positions].contiguous())
    return parts.model(**kw).logits[positions]


def token_logprobs(model, input_ids, attention_mask, last: int | None = None):
    """log p(token t | tokens < t) for t = 1..T-1, shape [B, T-1] (fp32); with ``last``, only for the
    final ``last`` tokens, shape [B, last]."""
    last = input_ids.shape[1] - 1 if last is None else min(last, input_ids.shape[1] - 1)
    targets = input_ids[:, -last:]
    logits = _decoder_logits(CausalLMLoss(model), input_ids, attention_mask, _position_ids(attention_mask), None,
                             (slice(None), slice(-last - 1, -1)))
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


def _width_groups(rows, min_rows: int = 16):
    """Option rows grouped by token length for one forward each; a group of fewer than ``min_rows``
    rows joins the next longer one (padded): a forward over a handful of rows costs about as much as
    one over sixteen."""
    groups, pending = [], []
    for _, g in itertools.groupby(sorted(rows, key=lambda r: len(r[2])), key=lambda r: len(r[2])):
        pending += list(g)
        if len(pending) >= min_rows:
            groups.append(pending)
            pending = []
    if pending:
        groups[-1:] = [(groups[-1] if groups else []) + pending]
    return groups


@torch.no_grad()
def option_logprobs(model, tokenizer, prompts: list[str], options: list[list[str]], batch_size: int = 32,
                    routes=None) -> list[np.ndarray]:
    """Summed log-probability of each of a prompt's options (each scored as `` {option}``), one array
    per prompt; the same numbers as ``continuation_logprobs`` on every (prompt, option) pair.

    Each prompt runs through the model once, for ``batch_size`` prompts at a time; its options then
    run from its key/value cache. The first token of every option is scored from the prompt's last
    position, so one-token options cost no forward at all. For four options of two or three tokens
    after a prompt of a dozen, that is about a third of the tokens the pairs take.
    """
    parts = CausalLMLoss(model)
    device = next(model.parameters()).device
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    conts = [[tokenizer(f" {o}", add_special_tokens=False).input_ids for o in opts] for opts in options]
    out = [np.zeros(len(c)) for c in conts]
    pad = tokenizer.pad_token_id
    for idx in _batches([len(e) for e in encoded], batch_size, routes):
        ids, mask = _left_pad([encoded[i] for i in idx], pad)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=parts.base.config)
        with _routed(routes, idx):
            first = F.log_softmax(_decoder_logits(parts, ids, mask, _position_ids(mask), cache,
                                                  (slice(None), -1)).float(), dim=-1)  # [prompts, vocab]
        # One row per (question, option), in question order; scores summed in float64.
        rows = [(q, c) for q, i in enumerate(idx) for c in conts[i]]
        lp = first[[q for q, _ in rows], [c[0] for _, c in rows]].double()
        prompt_len = mask.sum(1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        for group in _width_groups([(r, q, c) for r, (q, c) in enumerate(rows) if len(c) > 1]):
            if routes is not None:  # each adapter's rows together (row order changes no score)
                group.sort(key=lambda row: routes[idx[row[1]]])
            width = max(len(c) for _, _, c in group)
            sel = torch.tensor([q for _, q, _ in group], device=device)
            branch = DynamicCache(config=parts.base.config)
            for layer, (k, v) in enumerate(kv):
                branch.update(k.index_select(0, sel), v.index_select(0, sel), layer)
            # Right-padded: an option's own tokens come first, so its padding is never attended to.
            oids = torch.tensor([c + [pad] * (width - len(c)) for _, _, c in group], device=device)
            omask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for _, _, c in group], device=device)
            positions = prompt_len[sel, None] + torch.arange(width - 1, device=device)[None]
            real = omask[:, 1:].bool()
            with _routed(routes, [idx[q] for _, q, _ in group]):
                logits = _decoder_logits(parts, oids[:, :-1], torch.cat([mask[sel], omask[:, :-1]], 1), positions,
                                         branch, real)
            tok_lp = F.log_softmax(logits.float(), dim=-1).gather(-1, oids[:, 1:][real][:, None]).squeeze(-1)
            sums = torch.zeros(len(group), device=device).index_add_(0, real.nonzero()[:, 0], tok_lp)
            lp[[r for r, _, _ in group]] += sums.double()
        for i, scores in zip(idx, np.split(lp.cpu().numpy(), np.cumsum([len(conts[i]) for i in idx])[:-1])):
            out[i] = scores
    return out


def score_multiple_choice(model, tokenizer, items: pd.DataFrame, batch_size: int = 32,
                          shared_prompt: bool = True, routes=None) -> pd.DataFrame:
    """``acc`` (summed log-likelihood) and ``acc_norm`` (divided by the option's length in bytes, as
    lm-evaluation-harness does) for each item. ``batch_size`` counts questions; with
    ``shared_prompt=False`` every (question, option) pair runs as a sequence of its own, ``batch_size``
    pairs at a time (lm-evaluation-harness's way, kept for the benchmark's comparison)."""
    if shared_prompt:
        scores = option_logprobs(model, tokenizer, list(items.prompt), [list(o) for o in items.options], batch_size,
                                 routes)
    else:
        require(routes is None, "multiple choice with routes needs shared_prompt=True")
        prompts = [r.prompt for r in items.itertuples() for _ in r.options]
        lp = continuation_logprobs(model, tokenizer, prompts, [f" {o}" for r in items.itertuples() for o in r.options],
                                   batch_size)
        scores = np.split(lp, np.cumsum([len(o) for o in items.options])[:-1])
    out = items.copy()
    acc, acc_norm = [], []
    for r, s in zip(items.itertuples(), scores):
        lengths = np.array([len(f" {o}".encode()) for o in r.options])
        acc.append(int(np.argmax(s)) == r.gold_index)
        acc_norm.append(int(np.argmax(s / lengths)) == r.gold_index)
    out["acc"], out["acc_norm"] = acc, acc_norm
    return out


def multistep_accuracy(multistep_scored: pd.DataFrame, single_scored: pd.DataFrame) -> pd.DataFrame:
    """Multi-step accuracy per item type, overall and conditional on every single hop being answered
    right (``single_scored`` has ``fact_id`` and ``em`` for the single-hop questions)."""
    hop_ok = single_scored.groupby("fact_id").em.max()
    df = multistep_scored.copy()
    df["hops_known"] = [all(bool(hop_ok.get(f, False)) for f in hops) for hops in df.hop_fact_ids]
    rows = []
    for (kind, name), g in df.groupby(["type", "name"]):
        known = g[g.hops_known]
        rows.append({"type": kind, "name": name, "em": float(g.em.mean()), "n": len(g),
                     "em_given_hops_known": float(known.em.mean()) if len(known) else np.nan,
                     "n_hops_known": len(known)})
    return pd.DataFrame(rows)


def evaluate_adapters(base_model, adapter_dirs, evaluate_fn) -> dict:
    """Evaluate many LoRA adapters against one loaded base model: each adapter is attached, evaluated
    with ``evaluate_fn(model)`` and removed again, so the base is loaded once, not once per adapter."""
    from peft import PeftModel

    results = {}
    for d in adapter_dirs:
        model = PeftModel.from_pretrained(base_model, str(d))
        model.eval()
        try:
            results[str(d)] = evaluate_fn(model)
        finally:
            base_model = model.unload()  # the base without adapter layers, weights untouched
    return results
