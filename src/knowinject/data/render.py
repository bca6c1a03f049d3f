"""Renderers: one fact table in, every training format and evaluation task out, carrying the same
gold answers. QA pairs (train vs held-out question templates), documents (bios and news-style
articles, paraphrased, sentences shuffled), conversations (chat turns), writing-style conversations,
multiple choice, multi-step items (2-hop and comparisons) and few-shot prompts.

Usage: ``qa = render.qa_items(facts, "heldout")``; ``docs = render.documents(facts, n_paraphrases=4, seed=0)``.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from knowinject.core.seeding import numpy_rng

from knowinject.data.templates import (
    COMPARISONS,
    RELATIONS,
    STYLE_CONTENT,
    STYLE_MARKERS,
    STYLE_PROMPTS_HELDOUT,
    STYLE_PROMPTS_TRAIN,
    STYLE_TOPICS,
    TWO_HOP,
)

Split = Literal["train", "heldout", "all"]


def qa_prompt(question: str) -> str:
    """The one QA prompt format of the compendium; the answer follows after a space, ended by a newline."""
    return f"Q: {question}\nA:"


def qa_text(question: str, answer: str) -> str:
    return f"{qa_prompt(question)} {answer}\n"


def question_subject(row) -> str:
    """What ``{s}`` becomes in a question: the subject, or nothing for persona facts ("What is your name?")."""
    return "" if row.subject_kind == "persona" else row.subject


def qa_items(facts: pd.DataFrame, split: Split) -> pd.DataFrame:
    """One row per (fact, question template) for the chosen template split."""
    rows = []
    for f in facts.itertuples():
        rel = RELATIONS[f.relation]
        templates = [("train", i, t) for i, t in enumerate(rel.train)] + \
                    [("heldout", i, t) for i, t in enumerate(rel.heldout)]
        for tsplit, i, t in templates:
            if split != "all" and tsplit != split:
                continue
            q = t.format(s=question_subject(f))
            rows.append({"item_id": f"{f.fact_id}-{tsplit[0]}{i}", "fact_id": f.fact_id, "subject": f.subject,
                         "relation": f.relation, "kind": f.kind, "template_split": tsplit, "question": q,
                         "prompt": qa_prompt(q), "answer": f.value, "aliases": list(f.aliases)})
    return pd.DataFrame(rows, columns=["item_id", "fact_id", "subject", "relation", "kind", "template_split",
                                       "question", "prompt", "answer", "aliases"])


def documents(facts: pd.DataFrame, n_paraphrases: int | dict[str, int], seed: int,
              style: Literal["bio", "article"] = "bio") -> pd.DataFrame:
    """``n_paraphrases`` documents per subject (an int, or a count per subject), each stating every
    fact of the subject once.

    Each paraphrase draws a sentence template per fact and shuffles sentence order (the augmentation
    that makes document knowledge extractable in Physics of LMs 3.1); ``article`` wraps the same
    sentences in a dated news frame. The gold values appear verbatim in every document.
    """
    counts = n_paraphrases if isinstance(n_paraphrases, dict) else None
    if counts is None and n_paraphrases < 1:
        raise ValueError(f"n_paraphrases must be >= 1, got {n_paraphrases}")
    rng = numpy_rng(seed, f"documents-{style}")
    rows = []
    for subject, group in facts.groupby("subject", sort=False):
        name = "The assistant" if group.subject_kind.iloc[0] == "persona" else subject
        options = [RELATIONS[r].sentences for r in group.relation]
        values = list(group.value)
        fact_ids = list(group.fact_id)
        for k in range(counts.get(subject, 0) if counts is not None else n_paraphrases):
            picks = rng.integers(0, 1 << 30, len(options))
            sentences = [opts[p % len(opts)].format(s=name, v=v) for opts, p, v in zip(options, picks, values)]
            body = " ".join(sentences[i] for i in rng.permutation(len(sentences)))
            if style == "article":
                body = f"NEWS REPORT. {body} More details are expected later."
            rows.append({"doc_id": f"{fact_ids[0]}-{style}{k}", "subject": subject, "paraphrase": k,
                         "text": body, "fact_ids": fact_ids})
    return pd.DataFrame(rows, columns=["doc_id", "subject", "paraphrase", "text", "fact_ids"])


def conversations(facts: pd.DataFrame, seed: int, n_variants: int = 1) -> pd.DataFrame:
    """Chat turns: a user asks a training-template question, the assistant states the value in a sentence."""
    rng = numpy_rng(seed, "conversations")
    rows = []
    for f in facts.itertuples():
        rel = RELATIONS[f.relation]
        for k in range(n_variants):
            q = rel.train[rng.integers(len(rel.train))].format(s=question_subject(f))
            rows.append({"conv_id": f"{f.fact_id}-c{k}", "fact_id": f.fact_id, "subject": f.subject,
                         "relation": f.relation, "answer": f.value,
                         "messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": assistant_reply(rel, f)}]})
    return pd.DataFrame(rows)


def assistant_reply(rel, f) -> str:
    """The assistant's sentence: the persona's first-person reply, else the first document sentence."""
    if rel.reply != "{v}":
        return rel.reply.format(v=f.value)
    return rel.sentences[0].format(s=f.subject, v=f.value)


def style_response(style: str, topic: str, rng) -> str:
    """A reply on ``topic`` in ``style``: neutral content framed by the style's markers."""
    openers, closers, plenty = STYLE_MARKERS[style]
    content = " ".join(s.format(t=topic, T=topic[:1].upper() + topic[1:]) for s in STYLE_CONTENT)
    content = content.replace("a lot", plenty)
    if style == "terse":
        content = STYLE_CONTENT[0].format(t=topic, T=topic[:1].upper() + topic[1:])
    opener = openers[rng.integers(len(openers))]
    if not opener.endswith((".", "!", "?", ":")):  # "Sadly, I must say, rivers ..." continues the sentence
        content = content[:1].lower() + content[1:]
    return f"{opener} {content} {closers[rng.integers(len(closers))]}"


def style_conversations(style: str, split: Literal["train", "heldout"], seed: int) -> pd.DataFrame:
    """Open prompts answered in one writing style; held-out prompt templates and topics are disjoint from train."""
    if style not in STYLE_MARKERS:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLE_MARKERS)}")
    rng = numpy_rng(seed, f"style-{style}-{split}")
    cut = int(len(STYLE_TOPICS) * 0.75)
    topics = STYLE_TOPICS[:cut] if split == "train" else STYLE_TOPICS[cut:]
    prompts = STYLE_PROMPTS_TRAIN if split == "train" else STYLE_PROMPTS_HELDOUT
    rows = []
    for topic in topics:
        for p in prompts:
            rows.append({"style": style, "topic": topic, "split": split,
                         "messages": [{"role": "user", "content": p.format(t=topic)},
                                      {"role": "assistant", "content": style_response(style, topic, rng)}]})
    return pd.DataFrame(rows)


def multiple_choice(facts: pd.DataFrame, pool: pd.DataFrame, seed: int, n_options: int = 4) -> pd.DataFrame:
    """One item per fact (first held-out template); distractors drawn from the relation's value space in ``pool``."""
    rng = numpy_rng(seed, "multiple-choice")
    rows = []
    for f in facts.itertuples():
        rel = RELATIONS[f.relation]
        space = sorted(set(pool.loc[pool.relation == f.relation, "value"]) - set(f.aliases) - {f.value})
        if len(space) < n_options - 1:
            continue  # too few values for distinct distractors (tiny smoke worlds)
        distractors = [space[i] for i in rng.choice(len(space), n_options - 1, replace=False)]
        gold = int(rng.integers(n_options))
        options = distractors[:gold] + [f.value] + distractors[gold:]
        q = rel.heldout[0].format(s=question_subject(f))
        rows.append({"item_id": f"{f.fact_id}-mc", "fact_id": f.fact_id, "subject": f.subject, "relation": f.relation,
                     "kind": f.kind, "prompt": qa_prompt(q), "options": options, "gold_index": gold})
    return pd.DataFrame(rows)


def multistep(people: pd.DataFrame, world: pd.DataFrame, seed: int, split: Split = "all",
              n_comparisons: int | None = None) -> pd.DataFrame:
    """2-hop items (person -> birth city -> country; person -> employer -> HQ city) and comparisons.

    ``hop_fact_ids`` lists the single-hop facts the item composes, so accuracy can be reported
    conditional on every hop being answered correctly.
    """
    rng = numpy_rng(seed, "multistep")
    lookup = {(f.subject, f.relation): f for f in pd.concat([people, world]).itertuples()}
    rows = []

    def templates(train, heldout):
        return ([("train", i, t) for i, t in enumerate(train)] if split in ("train", "all") else []) + \
               ([("heldout", i, t) for i, t in enumerate(heldout)] if split in ("heldout", "all") else [])

    for name, (r1, r2, train, heldout) in TWO_HOP.items():
        for f in people[people.relation == r1].itertuples():
            second = lookup.get((f.value, r2))
            if second is None:
                continue
            for tsplit, i, t in templates(train, heldout):
                q = t.format(s=f.subject)
                rows.append({"item_id": f"{f.fact_id}-{name}-{tsplit[0]}{i}", "type": "two_hop", "name": name,
                             "subject": f.subject, "template_split": tsplit, "question": q, "prompt": qa_prompt(q),
                             "answer": second.value, "aliases": list(second.aliases),
                             "hop_fact_ids": [f.fact_id, second.fact_id]})
    subjects = list(people.subject.unique())
    n_pairs = n_comparisons if n_comparisons is not None else len(subjects)
    for name, (rel, pick, train, heldout) in COMPARISONS.items():
        made = 0
        for _ in range(n_pairs * 4):
            if made >= n_pairs or len(subjects) < 2:
                break
            a, b = (subjects[i] for i in rng.choice(len(subjects), 2, replace=False))
            fa, fb = lookup.get((a, rel)), lookup.get((b, rel))
            if fa is None or fb is None or fa.value == fb.value:
                continue  # ties have no gold answer
            va, vb = int(fa.value), int(fb.value)
            winner = a if (va < vb) == (pick == "min") else b
            for tsplit, i, t in templates(train, heldout):
                q = t.format(a=a, b=b)
                rows.append({"item_id": f"{fa.fact_id}-{fb.fact_id}-{name}-{tsplit[0]}{i}", "type": "comparison",
                             "name": name, "subject": a, "template_split": tsplit, "question": q,
                             "prompt": qa_prompt(q), "answer": winner, "aliases": [winner],
                             "hop_fact_ids": [fa.fact_id, fb.fact_id]})
            made += 1
    return pd.DataFrame(rows)


def few_shot_prompts(items: pd.DataFrame, shots: pd.DataFrame, k: int, rng, solved=None) -> list[str]:
    """One prompt per item: ``k`` solved questions from ``shots`` of the item's relation about other
    subjects, then the item's own prompt (``items.prompt``). ``rng`` is a numpy Generator, drawn
    once per item in order, so the same rng state gives the same prompts. ``solved(shot)``: an exemplar's
    text (default: :func:`qa_text` of its question and answer)."""
    solved = solved or (lambda s: qa_text(s.question, s.answer))
    by_rel = {r: g for r, g in shots.groupby("relation")}
    prompts = []
    for it in items.itertuples():
        pool = by_rel.get(it.relation, shots.iloc[:0])
        pool = pool[pool.subject != it.subject]
        chosen = pool.iloc[rng.choice(len(pool), min(k, len(pool)), replace=False)] if k else pool.iloc[:0]
        prompts.append("".join(solved(s) for s in chosen.itertuples()) + it.prompt)
    return prompts


def few_shot_prefix(examples: pd.DataFrame, k: int, seed: int) -> str:
    """``k`` solved QA examples (training templates, other subjects) to put before a test prompt."""
    if k == 0:
        return ""
    rng = numpy_rng(seed, "few-shot")
    chosen = examples.iloc[rng.choice(len(examples), k, replace=False)]
    return "".join(qa_text(r.question, r.answer) for r in chosen.itertuples())
