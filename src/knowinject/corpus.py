"""The tiny model's pretraining corpus and tokenizer.

The corpus holds bios of the known people, each repeated by its Zipf exposure (every repetition a
fresh paraphrase with shuffled sentences), documents about organisations and cities, and QA pairs
(training templates only) about a subset of known people and about the world, so the base model
learns to answer questions from what it stored. New people, events and personas never appear.
The tokenizer is a byte-level BPE trained on the corpus, with digits split one per token, as in
SmolLM2 and Llama tokenizers. Usage: ``texts = corpus.pretraining_texts(facts, cfg)``.
"""

from __future__ import annotations

import pandas as pd

from . import render
from .seeding import numpy_rng

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
    # QA about a random subset of known people (all their facts), and about every world entity.
    people = known.subject.unique()
    qa_people = set(people[rng.permutation(len(people))[: round(qa_fraction * len(people))]])
    qa_facts = pd.concat([known[known.subject.isin(qa_people)], world])
    qa = render.qa_items(qa_facts, "train")
    texts += [render.qa_text(r.question, r.answer) for r in qa.itertuples()]
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def qa_people(facts: pd.DataFrame, seed: int, qa_fraction: float) -> set[str]:
    """The known people whose QA pairs are in the pretraining corpus (same draw as ``pretraining_texts``)."""
    rng = numpy_rng(seed, "corpus")
    people = facts.loc[facts.group == "known", "subject"].unique()
    return set(people[rng.permutation(len(people))[: round(qa_fraction * len(people))]])


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
