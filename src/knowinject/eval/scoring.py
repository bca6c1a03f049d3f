"""Scoring rules, as readers will compare them with SQuAD and lm-evaluation-harness.

Exact match after SQuAD normalisation (lowercase, no punctuation, no articles, collapsed spaces)
against a list of aliases, on the first line of a generated answer; numbers are compared as numbers
("1,000" = "1000" = "1000.0"); containment (a normalised alias inside the normalised answer) is the
secondary metric. Usage: ``exact_match("The Paris.", ["Paris"])`` -> True.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


def first_line(text: str) -> str:
    """The answer proper: generation is cut at the first newline (leading spaces are not a line)."""
    return text.lstrip(" \t").split("\n", 1)[0].strip()


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> float | None:
    """A number written alone ("1,000", "1000.", "-3.5"), else None."""
    t = text.strip().rstrip(".!?;:").strip()
    if not _NUMBER.match(t):
        return None
    return float(t.replace(",", ""))


def exact_match(prediction: str, aliases: list[str] | str) -> bool:
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    pred = first_line(prediction)
    if not pred:
        return False
    pred_num = parse_number(pred)
    norm = normalize_answer(pred)
    for alias in aliases:
        gold_num = parse_number(alias)
        if gold_num is not None and pred_num is not None:
            if gold_num == pred_num:
                return True
            continue  # a different number is wrong, whatever its digits normalise to
        if norm == normalize_answer(alias):
            return True
    return False


def contains_match(prediction: str, aliases: list[str] | str) -> bool:
    """A normalised alias appears as whole words inside the normalised first line."""
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    pred = f" {normalize_answer(first_line(prediction).replace(',', ''))} "
    return any(f" {normalize_answer(a.replace(',', ''))} " in pred for a in aliases if normalize_answer(a))
