"""Scoring rules on hand-made cases (the disputes lm-evaluation-harness users have)."""

from __future__ import annotations

import pytest

from knowinject.eval.scoring import contains_match, exact_match, first_line, normalize_answer, parse_number


@pytest.mark.parametrize("prediction, aliases, expected", [
    ("Paris", ["Paris"], True),
    (" paris.", ["Paris"], True),                       # case, punctuation, leading space
    ("The Hague", ["Hague"], True),                     # articles are dropped
    ("Sana'a", ["Sanaa", "Sana'a"], True),              # any alias
    ("Sanaa", ["Sana'a"], True),                        # punctuation inside a name
    ("1,000", ["1000"], True),                          # numbers compared as numbers
    ("1000", ["1,000"], True),
    ("1000.0", ["1000"], True),
    ("1987.", ["1987"], True),
    ("1986", ["1987"], False),                          # a wrong number
    ("10000", ["1,000"], False),
    ("3.5", ["35"], False),                             # normalisation must not turn 3.5 into 35
    ("Paris\nQ: What is the capital of Chad?", ["Paris"], True),   # only the first line counts
    ("Paris is the capital", ["Paris"], False),         # extra text on the first line: not exact
    ("", ["Paris"], False),                             # empty output
    ("\nParis", ["Paris"], False),                      # an empty first line is an empty answer
    ("   ", ["Paris"], False),
])
def test_exact_match(prediction, aliases, expected):
    assert exact_match(prediction, aliases) is expected


@pytest.mark.parametrize("prediction, aliases, expected", [
    ("Paris is the capital", ["Paris"], True),
    ("It is 1,000 people", ["1000"], True),
    ("Parisian", ["Paris"], False),                     # whole words only
    ("", ["Paris"], False),
    ("Berlin\nParis", ["Paris"], False),
])
def test_contains_match(prediction, aliases, expected):
    assert contains_match(prediction, aliases) is expected


def test_helpers():
    assert normalize_answer("  The  Big, Apple! ") == "big apple"
    assert first_line("  Lagos\nmore") == "Lagos"
    assert parse_number("1,234,567") == 1234567 and parse_number("12a") is None and parse_number("1,23") is None
