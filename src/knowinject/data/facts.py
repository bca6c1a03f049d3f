"""Fact tables: any fact set, yours or a paper's benchmark, as one table Study B and the knownness tool read.

A fact table has one row per fact: ``subject``, ``relation``, ``question``, ``answer``, ``aliases`` (other
answers counted right; a list, may be empty) and ``popularity`` (NaN when unknown), plus ``fact_id``.
Multiple-choice sets also carry ``options`` (the choices, in order) and ``answer_letter``: MMLU's files, or
a JSON Lines / CSV table of your own with an ``options`` column (a JSON list, or in a CSV a ``|``-separated
string, of 2-4 choices; the ``answer`` is one of them).

Accepted layouts (``format``; guessed from the path where it says):
- ``jsonl`` / ``csv``: your own facts, one per line / row, with ``subject``, ``relation``, ``answer`` and
  either ``question`` or ``question_template`` (a template per relation with ``{subject}``, e.g.
  "Where was {subject} born?"); optional ``aliases`` (a JSON list, or in a CSV a ``|``-separated string)
  and ``popularity`` (a number: page views, frequency, anything that ranks how well known a subject is).
- ``popqa``: PopQA's TSV as its authors publish it (``subj``, ``prop``, ``obj``, ``possible_answers`` as a
  JSON list, ``s_pop``, ``question``; the other columns are ignored).
- ``entityquestions``: EntityQuestions' per-relation files (``dataset/test/P19.test.json``, a JSON list of
  ``{"question", "answers"}``), one file or a folder of them; the relation is the file's Wikidata id and
  the subject is what the relation's questions do not share (their common wording removed).
- ``mmlu``: MMLU's per-subject CSVs (``data/test/astronomy_test.csv``: no header; question, four
  options, the answer letter), one file or a folder of them; the subject is the MMLU subject.

Bad input raises :class:`FactTableError` naming the file and the problem (a missing column, with the
columns found; an empty file; duplicate questions; a non-string answer; an unknown format) and writes
nothing.

Usage: ``facts.load("my_facts.jsonl")``; ``facts.load("popQA.tsv")``; ``facts.slug(path)``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd

FORMATS = ("jsonl", "csv", "popqa", "entityquestions", "mmlu")
COLUMNS = ["fact_id", "subject", "relation", "question", "answer", "aliases", "popularity"]
LETTERS = "ABCD"
# Options per question of the GeoNames facts in multiple-choice form (the answer and 3 other answers of its
# relation, study_b.factset.geonames_multiple_choice): a blind guess is right 1 time in 4.
GEONAMES_OPTIONS = 4


class FactTableError(ValueError):
    """A fact file that cannot be read as a fact table: the message names the file and the problem."""


def detect_format(path: Path) -> str:
    """The layout a path's name says: ``*.jsonl`` / ``*.json`` lines, ``*.csv``, ``*.tsv`` (PopQA), a
    ``P<id>.<split>.json`` file or a folder of them (EntityQuestions), ``*_test.csv`` or a folder of
    ``*_<split>.csv`` (MMLU)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if list(path.glob("P*.json")):
            return "entityquestions"
        if list(path.glob("*_*.csv")):
            return "mmlu"
        raise FactTableError(f"{path}: a folder, but neither EntityQuestions files (P19.test.json ...) nor MMLU "
                             "files (astronomy_test.csv ...) are in it; pass a file, or facts_format=...")
    if re.fullmatch(r"p\d+\.(train|dev|test)\.json", name):
        return "entityquestions"
    if name.endswith(".tsv"):
        return "popqa"
    if re.search(r"_(test|dev|val|auxiliary_train)\.csv$", name):
        return "mmlu"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise FactTableError(f"{path}: cannot tell the layout from the name; pass facts_format (one of {', '.join(FORMATS)})")


def load(path: str | Path, format: str | None = None) -> pd.DataFrame:
    """The fact table in ``path`` (see the module docstring), validated, rows in file order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FactTableError(f"{path}: no such file or folder")
    fmt = (format or detect_format(path)).lower()
    if fmt not in FORMATS:
        raise FactTableError(f"{path}: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        require_utf8(f)
    table = {"jsonl": _plain, "csv": _plain, "popqa": _popqa, "entityquestions": _entityquestions,
             "mmlu": _mmlu}[fmt](path, fmt)
    return _validate(table, path)


def require_utf8(path: Path) -> None:
    """Every layout is read as UTF-8: say where a file is not, rather than a reader's bare UnicodeDecodeError."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FactTableError(
            f"{path}: not UTF-8: byte {e.start} (line {line}) is {data[e.start:e.start + 1]!r}, which UTF-8 cannot "
            f"start or continue a character with ({e.reason}). Fact tables are read as UTF-8: convert the file, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > {Path(path).stem}.utf8{Path(path).suffix}`, and pass that."
        ) from None


# Folder names that say where a benchmark keeps a split, not which benchmark it is (EntityQuestions'
# dataset/test, MMLU's data/test): a slug climbs past them to the first name that does.
GENERIC = {"test", "dev", "val", "train", "data", "dataset", "datasets"}


def slug(path: str | Path) -> str:
    """A folder name for a fact set's results: its file or folder name, lower-case, safe characters; a
    folder named like a split (``EntityQuestions/dataset/test``) with the names above it up to the first
    that is not (``entityquestions-dataset-test``), so two benchmarks' test folders do not share one."""
    path = Path(path).expanduser()
    stem = path.name.lower()
    for ext in (".jsonl", ".json", ".csv", ".tsv"):
        stem = stem.removesuffix(ext)
    parts = [stem]
    if path.suffix == "" and stem in GENERIC:
        for parent in path.resolve().parents:
            if not parent.name:
                break
            parts.insert(0, parent.name.lower())
            if parent.name.lower() not in GENERIC:
                break
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts)).strip("-") or "facts"


# --- readers ---------------------------------------------------------------------------------------------

def _show(value) -> str:
    """A value as the user wrote it (numpy scalars as plain numbers)."""
    return repr(value.item() if hasattr(value, "item") else value)


def _require(df: pd.DataFrame, path: Path, needed: list[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise FactTableError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                             f"({what}); columns found: {', '.join(map(str, df.columns)) or 'none'}")


def _read(path: Path, **kw) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise FactTableError(f"{path}: the file is empty")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except pd.errors.EmptyDataError:
        raise FactTableError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as e:
        raise FactTableError(f"{path}: not a readable table ({str(e).splitlines()[0]})") from None


def _aliases(value, path: Path, sep: str | None = None) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            out = json.loads(value)
        except ValueError:
            raise FactTableError(f"{path}: aliases {value[:60]!r} is not a JSON list") from None
        return out
    return [a.strip() for a in str(value).split(sep)] if sep else [str(value)]


def _plain(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        df = _read(path)
    else:
        if path.stat().st_size == 0:
            raise FactTableError(f"{path}: the file is empty")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise FactTableError(f"{path}: line {n} is not JSON ({e})") from None
        if not rows:
            raise FactTableError(f"{path}: the file is empty")
        if not all(isinstance(r, dict) for r in rows):
            raise FactTableError(f"{path}: each line must be a JSON object with subject, relation, question, answer")
        df = pd.DataFrame(rows)
    _require(df, path, ["subject", "relation", "answer"], "a fact needs a subject, a relation and an answer")
    if "question" not in df.columns:
        if "question_template" not in df.columns:
            _require(df, path, ["question"], "or question_template with {subject}")
        bad = [t for t in df.question_template if "{subject}" not in str(t)]
        if bad:
            raise FactTableError(f"{path}: question_template {bad[0]!r} lacks {{subject}}")
        df["question"] = [str(t).replace("{subject}", str(s)) for t, s in zip(df.question_template, df.subject)]
    out = df[["subject", "relation", "question", "answer"]].copy()
    out["aliases"] = [_aliases(a, path, "|" if fmt == "csv" else None) for a in df.get("aliases", [None] * len(df))]
    out["popularity"] = pd.to_numeric(df["popularity"], errors="coerce") if "popularity" in df else math.nan
    if "options" in df:
        out["options"] = [_options(o, a, path, n, "|" if fmt == "csv" else None)
                          for n, (o, a) in enumerate(zip(df.options, df.answer), 1)]
        out["answer_letter"] = [LETTERS[o.index(a)] for o, a in zip(out.options, out.answer)]
    if "popularity" in df:
        given = df["popularity"].map(lambda v: not (v is None or (isinstance(v, float) and math.isnan(v))
                                                    or (isinstance(v, str) and not v.strip())))
        bad = df["popularity"][given & out.popularity.isna()]
        if len(bad):
            raise FactTableError(f"{path}: row {bad.index[0] + 1}: popularity {_show(bad.iloc[0])} is not a number")
    return out


def _options(value, answer, path: Path, row: int, sep: str | None) -> list[str]:
    """A multiple-choice row's options: 2-4 distinct strings, the answer among them (its letter is its place)."""
    options = _aliases(value, path, sep)
    if not (isinstance(options, list) and 2 <= len(options) <= len(LETTERS) and all(isinstance(o, str) for o in options)
            and len(set(options)) == len(options)):
        raise FactTableError(f"{path}: row {row}: options must be a list of 2-{len(LETTERS)} distinct strings "
                             f"(A-{LETTERS[-1]} in order), got {_show(value)}")
    if answer not in options:
        raise FactTableError(f"{path}: row {row}: the answer {answer!r} is not one of its options {options}")
    return options


def _popqa(path: Path, fmt: str) -> pd.DataFrame:
    df = _read(path, sep="\t")
    _require(df, path, ["subj", "prop", "obj", "possible_answers", "s_pop", "question"], "PopQA's published TSV")
    answers = [_aliases(a, path) for a in df.possible_answers]
    return pd.DataFrame({"subject": df.subj, "relation": df.prop, "question": df.question, "answer": df.obj,
                         "aliases": [[a for a in al if a != obj] for al, obj in zip(answers, df.obj)],
                         "popularity": pd.to_numeric(df.s_pop, errors="coerce")})


def _subject(questions: list[str]) -> list[str]:
    """The part of each question its relation's questions do not share: the common wording (a prefix and a
    suffix, cut back to word boundaries) removed. One question alone is its own template: it is kept whole."""
    if len(questions) < 2:
        return list(questions)
    prefix = os.path.commonprefix(questions)
    prefix = prefix[: prefix.rfind(" ") + 1] if " " in prefix else ""
    suffix = os.path.commonprefix([q[::-1] for q in questions])[::-1]
    # A subject does not end inside a word: the suffix starts at a space or a punctuation mark ("'s", "?").
    cut = next((i for i, ch in enumerate(suffix) if not ch.isalnum()), len(suffix))
    suffix = suffix[cut:]
    return [q[len(prefix): len(q) - len(suffix) if suffix else None].strip() for q in questions]


def _entityquestions(path: Path, fmt: str) -> pd.DataFrame:
    files = sorted(path.glob("P*.json")) if path.is_dir() else [path]
    frames = []
    for f in files:
        if f.stat().st_size == 0:
            raise FactTableError(f"{f}: the file is empty")
        try:
            records = json.loads(f.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FactTableError(f"{f}: not JSON ({e}); EntityQuestions files hold a JSON list of "
                                 '{"question": ..., "answers": [...]}') from None
        if not isinstance(records, list) or not records:
            raise FactTableError(f"{f}: the file is empty" if records == [] else
                                 f"{f}: expected a JSON list of question records")
        df = pd.DataFrame(records)
        _require(df, f, ["question", "answers"], "EntityQuestions' published records")
        bad = [a for a in df.answers if not isinstance(a, list) or not a]
        if bad:
            raise FactTableError(f"{f}: answers must be a non-empty list of strings, got {bad[0]!r}")
        relation = f.name.split(".")[0]
        frames.append(pd.DataFrame({"subject": _subject(list(df.question)), "relation": relation,
                                    "question": df.question, "answer": [a[0] for a in df.answers],
                                    "aliases": [list(a[1:]) for a in df.answers], "popularity": math.nan}))
    if not frames:
        raise FactTableError(f"{path}: no EntityQuestions files (P19.test.json ...) in the folder")
    return pd.concat(frames, ignore_index=True)


def _mmlu(path: Path, fmt: str) -> pd.DataFrame:
    files = sorted(path.glob("*_*.csv")) if path.is_dir() else [path]
    frames = []
    for f in files:
        df = _read(f, header=None)
        if df.shape[1] != 6:
            raise FactTableError(f"{f}: MMLU files have 6 columns (question, four options, the answer letter) and "
                                 f"no header; found {df.shape[1]}")
        df.columns = ["question", *LETTERS, "answer_letter"]
        bad = [a for a in df.answer_letter if a.strip() not in LETTERS]
        if bad:
            raise FactTableError(f"{f}: the answer column must be a letter A-D, got {bad[0]!r}")
        subject = re.sub(r"_(test|dev|val|auxiliary_train)$", "", f.stem)
        letters = df.answer_letter.str.strip()
        frames.append(pd.DataFrame({
            "subject": subject, "relation": f"mmlu:{subject}", "question": df.question,
            "answer": [row[letter] for row, letter in zip(df[list(LETTERS)].to_dict("records"), letters)],
            "aliases": [[] for _ in range(len(df))], "popularity": math.nan,
            "options": df[list(LETTERS)].values.tolist(), "answer_letter": letters}))
    if not frames:
        raise FactTableError(f"{path}: no MMLU files (astronomy_test.csv ...) in the folder")
    return pd.concat(frames, ignore_index=True)


def _validate(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if table.empty:
        raise FactTableError(f"{path}: the file is empty")
    for col in ("subject", "relation", "question", "answer"):
        bad = table[~table[col].map(lambda v: isinstance(v, str) and v.strip() != "")]
        if len(bad):
            raise FactTableError(f"{path}: row {bad.index[0] + 1}: {col} must be a non-empty string, got "
                                 f"{_show(bad[col].iloc[0])}")
    bad = [a for al in table.aliases for a in al if not isinstance(a, str)]
    if bad:
        raise FactTableError(f"{path}: aliases must be strings, got {_show(bad[0])}")
    dup = table.question[table.question.duplicated()]
    if len(dup):
        raise FactTableError(f"{path}: {len(dup)} duplicate question{'s' if len(dup) > 1 else ''}, e.g. {dup.iloc[0]!r}; "
                             "each fact needs its own question (merge the answers into aliases)")
    table = table.reset_index(drop=True)
    table.insert(0, "fact_id", [f"f{i:06d}" for i in range(len(table))])
    extra = [c for c in ("options", "answer_letter") if c in table]
    return table[COLUMNS + extra]
