"""The knowledge worlds: determinism, leakage, equal information across formats, clear errors."""

from __future__ import annotations

import filecmp

import pandas as pd
import pytest

from knowinject.core import config
from knowinject.core.config import ConfigError

from knowinject.data import corpus, geo, render, world, worldfiles
from knowinject.data.templates import RELATIONS, TWO_HOP

from .conftest import SMALL_REAL, SMALL_WORLD


def test_same_seed_gives_byte_identical_files(small_world, tmp_path):
    again = worldfiles.build(world.WorldConfig(**SMALL_WORLD), geo.RealWorldConfig(**SMALL_REAL), "test",
                             root=tmp_path)
    names = [p.name for p in small_world.folder.glob("*.jsonl")] + ["datasheet.md", "config.json"]
    match, mismatch, errors = filecmp.cmpfiles(small_world.folder, again.folder, names, shallow=False)
    assert not mismatch and not errors
    tok = ["tokenizer/tokenizer.json"]
    assert filecmp.cmpfiles(small_world.folder, again.folder, tok, shallow=False)[0] == tok


def test_another_seed_gives_another_world():
    a = world.generate(world.WorldConfig(**SMALL_WORLD))
    b = world.generate(world.WorldConfig(**{**SMALL_WORLD, "seed": 4}))
    assert not a.equals(b)
    assert set(a[a.group == "new"].subject) != set(b[b.group == "new"].subject)


def test_no_new_entity_in_the_pretraining_corpus(small_world):
    facts = small_world.table("facts")
    text = "\n".join(small_world.table("corpus").text)
    never = facts[facts.group.isin(["new"])].subject.unique()
    assert len(never) > 0
    assert not [p for p in never if p in text]
    # Invented 2031 events and persona facts never appear either.
    assert "2031" not in text
    for value in facts[facts.group.str.startswith("persona")].value:
        assert f" {value}" not in text or value.isdigit()


def test_known_people_appear_as_often_as_their_exposure(small_world):
    facts = small_world.table("facts")
    docs = small_world.table("corpus").text
    person = facts[facts.group == "known"].sort_values("exposure").iloc[-1]
    bios = [t for t in docs if t.startswith(person.subject) or f" {person.subject} " in t and "Q:" not in t]
    assert len(bios) == person.exposure


def test_no_heldout_template_in_any_training_data(small_world):
    qa = small_world.table("qa")
    heldout = set(qa[qa.template_split == "heldout"].question)
    train_text = "\n".join([
        *small_world.table("corpus").text,
        *small_world.table("documents").text,
        *qa[qa.template_split == "train"].question,
        *(m[0]["content"] for m in small_world.table("conversations").messages),
    ])
    assert heldout and not [q for q in heldout if q in train_text]
    ms = small_world.table("multistep")
    assert not set(ms[ms.template_split == "heldout"].question) & set(ms[ms.template_split == "train"].question)
    styles = small_world.table("styles")
    train_prompts = {m[0]["content"] for m in styles[styles.split == "train"].messages}
    assert not {m[0]["content"] for m in styles[styles.split == "heldout"].messages} & train_prompts
    # Template lists themselves are disjoint, for every relation and multi-step kind.
    for rel in RELATIONS.values():
        assert not set(rel.train) & set(rel.heldout), rel.name
    for _, _, train, held in TWO_HOP.values():
        assert not set(train) & set(held)


def test_every_rendering_carries_the_same_gold_answer(small_world):
    facts = small_world.table("facts").set_index("fact_id")
    qa = small_world.table("qa")
    assert (qa.answer == qa.fact_id.map(facts.value)).all()
    mc = small_world.table("multiple_choice")
    syn = mc[mc.fact_id.isin(facts.index)]
    assert all(r.options[r.gold_index] == facts.value[r.fact_id] for r in syn.itertuples())
    assert all(len(set(r.options)) == len(r.options) for r in mc.itertuples())
    conv = small_world.table("conversations")
    assert all(facts.value[r.fact_id] in r.messages[1]["content"] for r in conv.itertuples())
    ms = small_world.table("multistep")
    hop2 = ms[ms.type == "two_hop"]
    assert all(facts.value[r.hop_fact_ids[1]] == r.answer for r in hop2.itertuples())


def test_documents_and_qa_carry_every_attribute_value(small_world):
    facts = small_world.table("facts")
    docs = small_world.table("documents")
    qa = small_world.table("qa")
    for subject, group in facts[facts.group == "new"].groupby("subject"):
        for text in docs[docs.subject == subject].text:
            for value in group.value:
                assert value in text, (subject, value)
        assert set(qa[qa.subject == subject].fact_id) == set(group.fact_id)


def test_numbers_tokenize_into_several_tokens(small_world):
    tok = small_world.tokenizer()
    for number in ("1987", "181", "42"):
        pieces = [p for p in tok.tokenize(f"born in {number}.") if any(c.isdigit() for c in p)]
        assert len(pieces) == len(number), pieces


@pytest.mark.parametrize("bad, message", [
    ({"n_people": -1}, "n_people must be >= 0"),
    ({"zipf_exponent": 0.0}, "zipf_exponent must be > 0"),
    ({"zipf_exponent": -1.0}, "zipf_exponent must be > 0"),
    ({"n_people": 5000}, "distinct names"),
    ({"max_exposure": 0}, "max_exposure"),
    ({"n_orgs": 10_000}, "n_orgs must be <="),
])
def test_bad_parameters_fail_clearly(bad, message):
    with pytest.raises(ConfigError, match=message):
        world.WorldConfig(**bad)


def test_documents_reject_zero_paraphrases():
    facts = world.generate(world.WorldConfig(**SMALL_WORLD))
    with pytest.raises(ValueError, match="n_paraphrases must be >= 1"):
        render.documents(facts.head(3), 0, seed=0)


def test_zipf_exposure_is_monotone_and_floored():
    e = world.zipf_exposure(2000, 0.75, 300, 2)
    assert e[0] == 300 and e.min() == 2 and (e[:-1] >= e[1:]).all()


def test_realworld_facts_have_aliases_and_popularity():
    real = geo.realworld_facts(geo.RealWorldConfig(min_country_population=20_000_000, n_cities=40))
    yemen = real[(real.relation == "capital") & (real.subject == "Yemen")]
    if len(yemen):
        assert {"Sanaa", "Sana'a"} <= set(yemen.aliases.iloc[0])
    assert (real.popularity > 0).all()
    assert set(real.relation) == {"capital", "continent", "currency", "population_millions", "city_country"}


def test_log_uniform_exposure_fills_every_bucket_and_zipf_does_not():
    log = pd.Series(world.log_uniform_exposure(600, 100, 1))
    counts = world.exposure_buckets(log).value_counts()
    assert log.max() == 100 and log.min() == 1 and log.is_monotonic_decreasing
    assert all(counts[b] >= 0.14 * 600 for b in ("1", "2-3", "4-10", "11-30", "31-100")) and counts[">100"] == 0
    zipf = pd.Series(world.zipf_exposure(600, 0.75, 100, 1))
    assert world.exposure_buckets(zipf).value_counts()["31-100"] < 0.05 * 600
    cfg = world.WorldConfig(**{**SMALL_WORLD, "exposure_law": "log_uniform"})
    facts = world.generate(cfg)
    assert facts[facts.group == "known"].groupby("subject").exposure.first().max() == SMALL_WORLD["max_exposure"]
    with pytest.raises(ConfigError, match="exposure_law"):
        config.build(world.WorldConfig, {"exposure_law": "pareto"})


def test_qa_people_are_a_share_of_every_stretch_of_the_exposure_scale():
    facts = world.generate(world.WorldConfig(**{**SMALL_WORLD, "n_people": 200, "exposure_law": "log_uniform"}))
    people = facts[facts.group == "known"].groupby("subject").exposure.first()
    for fraction in (0.0, 0.1, 0.5, 1.0):
        chosen = corpus.qa_people(facts, 0, fraction)
        assert len(chosen) == round(fraction * len(people))
    chosen = corpus.qa_people(facts, 0, 0.5)
    share = people.index.isin(chosen)
    by_bucket = pd.Series(share, index=people.index).groupby(world.exposure_buckets(people), observed=True).mean()
    assert (by_bucket - 0.5).abs().max() <= 0.05  # half of every bucket, not half overall by luck
    assert corpus.qa_people(facts, 0, 0.5) == chosen and corpus.qa_people(facts, 1, 0.5) != chosen


def test_tokenizer_is_trained_on_the_words_finetuning_brings_but_the_corpus_lacks_their_facts(small_world):
    corpus_text = "\n".join(small_world.table("corpus").text)
    assert "satellites" not in corpus_text and "2031" not in corpus_text  # no event facts in pretraining
    tables = {name: small_world.table(name) for name in worldfiles.TABLES}
    texts = corpus.tokenizer_texts(tables)
    assert len(texts) > len(tables["corpus"]) and any("satellites" in t for t in texts)
    docs = tables["documents"]
    articles = list(docs[docs.doc_id.str.contains("article")].text)

    def n_tokens(texts):
        tok = corpus.train_tokenizer(texts, 2000)
        return sum(len(ids) for ids in tok(articles, add_special_tokens=False).input_ids)
    # Study A's news articles about 2031 events take fewer, longer tokens than under a corpus-only tokenizer.
    assert n_tokens(texts) < 0.8 * n_tokens(list(tables["corpus"].text))


def test_world_cities_have_a_continent_for_the_two_hop_routes(small_world):
    facts = small_world.table("facts")
    cities = facts[(facts.group == "world") & (facts.relation == "country")].subject
    continents = facts[facts.relation == "city_continent"].set_index("subject").value
    assert set(cities) == set(continents.index) and set(continents) <= {
        "Asia", "Africa", "Europe", "North America", "South America", "Oceania"}
    ms = small_world.table("multistep")
    assert {"birth_country", "birth_continent", "employer_city"} <= set(ms.name)
