"""Fact tables (``knowinject.data.facts``): your own JSON Lines / CSV facts and the papers' benchmarks in
the layouts their authors publish (fixtures of invented rows in those exact layouts, under
``tests/fixtures/facts/``), and an error that names the file and the problem for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowinject.data import facts

FIX = Path(__file__).parent / "fixtures" / "facts"


def test_popqa_tsv():
    t = facts.load(FIX / "popQA.tsv")
    assert list(t.columns) == facts.COLUMNS and len(t) == 4
    r = t.iloc[0]
    assert (r.subject, r.relation, r.answer, r.aliases, r.popularity) == \
        ("Vardo Keln", "occupation", "cartographer", ["map maker"], 112.0)
    assert r.question == "What is Vardo Keln's occupation?" and t.fact_id.is_unique


def test_entityquestions_files_and_folder():
    one = facts.load(FIX / "entityquestions" / "dataset" / "test" / "P19.test.json")
    assert list(one.subject) == ["Halvard Quist", "Ysolde Varga", "Tomas Ebbe"] and set(one.relation) == {"P19"}
    assert one.aliases.iloc[1] == ["Kettering"] and one.answer.iloc[1] == "Kettering Vale"
    every = facts.load(FIX / "entityquestions" / "dataset" / "test")
    assert len(every) == 5 and set(every.relation) == {"P19", "P40"}
    assert list(every[every.relation == "P40"].subject) == ["Marta Ilves", "Per Orrin"]  # "Who is X's child?"


def test_mmlu_csvs_are_multiple_choice():
    t = facts.load(FIX / "mmlu" / "data" / "test")
    assert len(t) == 4 and set(t.subject) == {"astronomy", "world_history"}
    r = t.iloc[2]
    assert r.options == ["rings", "two moons, both tidally locked", "volcanoes", "oceans"]
    assert (r.answer_letter, r.answer, r.relation) == ("B", "two moons, both tidally locked", "mmlu:astronomy")


def test_your_own_facts_as_json_lines_or_csv(tmp_path):
    rows = [{"subject": "Quill Harbor", "relation": "country", "question_template": "Which country is {subject} in?",
             "answer": "Norland", "aliases": ["Kingdom of Norland"], "popularity": 12},
            {"subject": "Brindle", "relation": "country", "question_template": "Which country is {subject} in?",
             "answer": "Ostria"}]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = facts.load(tmp_path / "mine.jsonl")
    assert list(t.question) == ["Which country is Quill Harbor in?", "Which country is Brindle in?"]
    assert t.aliases.iloc[0] == ["Kingdom of Norland"] and t.aliases.iloc[1] == [] and t.popularity.iloc[0] == 12
    (tmp_path / "mine.csv").write_text("subject,relation,question,answer,aliases\n"
                                       "Quill Harbor,country,Which country is Quill Harbor in?,Norland,Norlund|N.\n")
    assert facts.load(tmp_path / "mine.csv").aliases.iloc[0] == ["Norlund", "N."]
    assert facts.slug(tmp_path / "My Facts.v2.jsonl") == "my-facts-v2"
    # Benchmarks keep their test splits in folders named like the split: the slug names the benchmark too.
    assert facts.slug(FIX / "entityquestions" / "dataset" / "test") == "entityquestions-dataset-test"
    assert facts.slug(FIX / "mmlu" / "data" / "test") == "mmlu-data-test"


def test_your_own_multiple_choice_facts_carry_options_and_the_answers_letter(tmp_path):
    rows = [{"subject": "Quill Harbor", "relation": "country", "question": "Which country is Quill Harbor in?",
             "answer": "Norland", "options": ["Ostria", "Norland", "Vell", "Kadar"]},
            {"subject": "Brindle", "relation": "country", "question": "Which country is Brindle in?",
             "answer": "Ostria", "options": ["Ostria", "Vell"]}]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = facts.load(tmp_path / "mc.jsonl")
    assert list(t.answer_letter) == ["B", "A"] and t.options.iloc[1] == ["Ostria", "Vell"]
    (tmp_path / "mc.csv").write_text("subject,relation,question,answer,options\n"
                                     "Brindle,country,Which country is Brindle in?,Vell,Ostria|Vell|Kadar\n")
    assert facts.load(tmp_path / "mc.csv").answer_letter.iloc[0] == "B"


def _bad(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name,text,message", [
    ("a.jsonl", '{"subject": "X", "relation": "r", "answer": "y"}\n', r"a.jsonl: missing column question \(or "
     r"question_template with \{subject\}\); columns found: subject, relation, answer"),
    ("b.csv", "subject,answer\nX,y\n", r"b.csv: missing column relation .*columns found: subject, answer"),
    ("c.jsonl", "", r"c.jsonl: the file is empty"),
    ("d.csv", "", r"d.csv: the file is empty"),
    ("e.jsonl", '{"subject": "X", "relation": "r", "question": "Q?", "answer": "y"}\n'
                '{"subject": "Z", "relation": "r", "question": "Q?", "answer": "w"}\n', r"e.jsonl: 1 duplicate question"),
    ("f.jsonl", '{"subject": "X", "relation": "r", "question": "Q?", "answer": 1885}\n',
     r"f.jsonl: row 1: answer must be a non-empty string, got 1885"),
    ("g.tsv", "subj\tprop\tobj\nX\tr\ty\n", r"g.tsv: missing columns possible_answers, s_pop, question \(PopQA"),
    ("h.parquet", "x", r"h.parquet: cannot tell the layout from the name; pass facts_format"),
    ("astro_test.csv", "Q?,a,b,c,d,E\n", r"astro_test.csv: the answer column must be a letter A-D, got 'E'"),
    ("P19.test.json", '[{"question": "Where was X born?", "answers": "Oslo"}]',
     r"P19.test.json: answers must be a non-empty list of strings"),
    ("i.jsonl", '{"subject": "X", "relation": "r", "question": "Q?", "answer": "y", "options": ["a", "b", "c"]}\n',
     r"i.jsonl: row 1: the answer 'y' is not one of its options \['a', 'b', 'c'\]"),
    ("j.jsonl", '{"subject": "X", "relation": "r", "question": "Q?", "answer": "y", "options": ["y", "y"]}\n',
     r"j.jsonl: row 1: options must be a list of 2-4 distinct strings"),
])
def test_bad_input_names_the_file_and_the_problem_and_writes_nothing(tmp_path, name, text, message):
    p = _bad(tmp_path, name, text)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(facts.FactTableError, match=message):
        facts.load(p)
    assert sorted(tmp_path.iterdir()) == before


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(facts.FactTableError, match="unknown format 'xml'; formats: jsonl, csv, popqa"):
        facts.load(FIX / "popQA.tsv", format="xml")
    with pytest.raises(facts.FactTableError, match="nowhere.jsonl: no such file"):
        facts.load(tmp_path / "nowhere.jsonl")
