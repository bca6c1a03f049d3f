"""The tiny model's pretraining corpus and tokenizer.

The corpus holds bios of the known people, each repeated by its Zipf exposure (every repetition a
fresh paraphrase with shuffled sentences), documents about organisations and cities, and QA pairs
(training templates only) about a subset of known people and about the world, so the base model
learns to answer questions from what it stored. New people, events and personas never appear.
The tokenizer is a byte-level BPE with digits split one per token, as in SmolLM2 and Llama
tokenizers, trained on all of the world's text: the corpus and every rendering that finetuning or
evaluation uses later (new people, events, personas, styles), so a finetune never has to learn a
new name from byte fragments. Only vocabulary comes from those texts; their facts never enter the
corpus. Usage: ``texts = corpus.pretraining_texts(facts, cfg)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from knowinject.core.seeding import numpy_rng

from knowinject.data import render

EOS = "<|endoftext|>"
PAD = "<pad>"


def pretraining_texts(facts: pd.DataFrame, seed: int, qa_fraction: float) -> list[str]:
    """The shuffled list of pretraining documents (each ends where the tokenizer adds ``EOS``)."""
    rng = numpy_rng(seed, "corpus")
    known = facts[facts.group == "known"]
    world = facts[facts.group == "world"]
    texts: list[str] = []
    # One paraphrase per mention: exposure e gives e different bios of the same person.
    for table in (known, world):
        exposure = table.groupby("subject", sort=False).exposure.first().to_dict()
        texts += list(render.documents(table, n_paraphrases=exposure, seed=seed, style="bio").text)
    # QA (training templates) about a subset of known people (all their facts), and about every
    # world entity: mixed training, which makes the other people's bios extractable by QA.
    qa_facts = pd.concat([known[known.subject.isin(qa_people(facts, seed, qa_fraction))], world])
    qa = render.qa_items(qa_facts, "train")
    texts += [render.qa_text(r.question, r.answer) for r in qa.itertuples()]
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def qa_people(facts: pd.DataFrame, seed: int, qa_fraction: float) -> set[str]:
    """The known people whose QA pairs are in the pretraining corpus: a ``qa_fraction`` share of every
    stretch of the exposure scale (systematic sampling down the people sorted by exposure, ties in
    random order), so people with and without QA in pretraining have the same exposure distribution."""
    rng = numpy_rng(seed, "corpus-qa-people")
    people = facts[facts.group == "known"].groupby("subject", sort=True).exposure.first()
    jitter = rng.random(len(people))
    order = people.index[np.lexsort((jitter, -people.to_numpy()))]
    # Person i is chosen when the running count (i + offset) * qa_fraction passes an integer.
    at = np.arange(len(order) + 1) + rng.random()
    chosen = np.diff(np.floor(at * qa_fraction)) > 0
    return set(order[chosen])


def tokenizer_texts(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Every text of a world's tables, for training its tokenizer (merges only; nothing is trained on
    them as a language model)."""
    texts = list(tables["corpus"].text)
    if "documents" in tables:
        texts += list(tables["documents"].text)
    for name in ("qa", "qa_realworld", "multistep"):
        if name in tables:
            texts += [render.qa_text(q, a) for q, a in zip(tables[name].question, tables[name].answer)]
    for name in ("conversations", "styles"):
        if name in tables:
            texts += [m["content"] for msgs in tables[name].messages for m in msgs]
    if "multiple_choice" in tables:
        texts += [" ".join(o) for o in tables["multiple_choice"].options]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with one token per digit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits first, so "1987" is four tokens: numbers span several tokens, as in real LMs.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)
