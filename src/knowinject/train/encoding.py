"""Examples as token rows: a prompt and its answer encoded so that only the answer carries a loss,
rows left-padded into length-grouped batches, and the causal-LM loss on the answer tokens (the
vocabulary projection computed at those positions only).

Examples are dicts of one of three shapes: ``{"prompt", "completion"}`` (QA: loss on the completion
only), ``{"messages"}`` (a conversation: loss on the last assistant turn only, formatted with the
model's chat template where it has one) and ``{"text"}`` (documents: loss on every token).

Usage: ``batch = collate([encode(e, tok, 384) for e in examples], tok.pad_token_id)``;
``loss = batch_loss(model, batch)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def chat_prompt_and_reply(messages: list[dict], tokenizer) -> tuple[str, str]:
    """Split a conversation into (everything before the last assistant turn, that turn), as text."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt), "chat template does not extend the prompt"
        return prompt, full[len(prompt):]
    # Models without a template (the tiny model) get a plain transcript.
    turns = "".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n" for m in messages[:-1])
    return turns + "Assistant:", f" {messages[-1]['content']}\n"


def encode_prompt(text: str, tokenizer, chat: bool = False) -> list[int]:
    """Token ids of a prompt exactly as evaluation will see it (chat templates carry their own specials)."""
    return tokenizer(text, add_special_tokens=not chat).input_ids


def encode(example: dict, tokenizer, max_length: int) -> tuple[list[int], int]:
    """(token ids, number of leading ids that carry no loss) for one example."""
    if "text" in example:
        ids = tokenizer(example["text"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return ids[:max_length], 0
    if "messages" in example:
        prompt, reply = chat_prompt_and_reply(example["messages"], tokenizer)
        chat = bool(getattr(tokenizer, "chat_template", None))
    elif "prompt" in example and "completion" in example:
        prompt, reply, chat = example["prompt"], example["completion"], False
    else:
        raise ValueError(f"an example needs 'text', 'messages', or 'prompt' and 'completion'; got keys {sorted(example)}")
    p = encode_prompt(prompt, tokenizer, chat)
    c = tokenizer(reply, add_special_tokens=False).input_ids
    ids = (p + c)[-max_length:]  # keep the answer if an example is too long
    return ids, max(0, len(ids) - len(c))


def length_grouped_batches(lengths: list[int], batch_size: int, rng) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within windows of 50 batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(encoded: list[tuple[list[int], int]], pad_id: int):
    """Left-padded tensors (the answer is always at the end of a row, as in generation)."""

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        off = width - len(ids)
        input_ids[row, off:] = torch.tensor(ids)
        mask[row, off:] = 1
        labels[row, off + n_prompt:] = torch.tensor(ids[n_prompt:])
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}


class CausalLMLoss(torch.nn.Module):
    """Next-token cross-entropy over the labelled positions of a batch, as a module's forward.

    It runs the decoder, then the vocabulary projection only on the positions that carry a loss:
    for short QA answers that skips most of the largest matmul. It is an ``nn.Module`` so that
    ``accelerator.prepare`` (DDP under ``accelerate launch``) wraps the whole computation.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        # Models that rescale logits after the head (Gemma's softcapping, Cohere's logit_scale)
        # go through their own forward, which knows how.
        self.direct = (getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
                       and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None)
        self._base = [base]  # a list, so the base is not registered twice as a submodule

    @property
    def base(self):
        """The underlying ``*ForCausalLM`` (inside the peft wrapper for LoRA)."""
        return self._base[0]

    def hidden_states(self, input_ids, attention_mask, position_ids):
        return self.base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       use_cache=False).last_hidden_state

    def answer_logits(self, input_ids, attention_mask, position_ids, labels):
        """(logits, targets) of the labelled positions, in row-major order (a row's positions together)."""
        targets = labels[:, 1:]
        mask = targets != -100
        if self.direct:
            h = self.hidden_states(input_ids, attention_mask, position_ids)
            logits = self.base.get_output_embeddings()(h[:, :-1][mask])  # boolean indexing: a contiguous 2-D tensor
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False)
            logits = out.logits[:, :-1][mask]
        return logits, targets[mask]

    def forward(self, input_ids, attention_mask, position_ids, labels, reduction="mean"):
        logits, targets = self.answer_logits(input_ids, attention_mask, position_ids, labels)
        return F.cross_entropy(logits.float(), targets, reduction=reduction)


def loss_module(model) -> CausalLMLoss:
    return CausalLMLoss(model)


def batch_loss(model, batch, reduction: str = "mean"):
    """Loss of ``model`` on a collated batch (a convenience for tests and one-off use)."""
    return loss_module(model)(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"],
                              reduction=reduction)
