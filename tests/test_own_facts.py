"""Study B on a fact table of one's own (issue #24): notebooks 03, 05 and 06 with ``facts_path``, run through the
pipeline's ``-p`` as ``make facts`` does, on invented facts written in each published layout (PopQA's TSV, an
EntityQuestions folder, a plain JSON Lines table) with a small random Llama. Each fact set's tables land under
``results/smoke/<model>/<facts-slug>/``; the smoke profile's own tables stay byte for byte. A multiple-choice
table in MMLU's layout runs Study B in MMLU's lettered form (each question its own subject); multiple-choice
facts of one's own (JSON Lines with options) run it in the cloze form when asked (``facts_mc_form``); a set too
small to split is refused with a message."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from knowinject.core.config import ConfigError

from knowinject import pipeline
from tests.conftest import SLOW, fresh_cache
from tests.test_own_model import _small_llama

FIRST = ["Vardo", "Orla", "Halvard", "Ysolde", "Tomas", "Marta", "Per", "Ilka", "Bram", "Senna", "Odo", "Livia",
         "Jarek", "Nadia", "Corin", "Elsa"]
LAST = ["Keln", "Brisk", "Quist", "Varga"]
PLACES = ["Tamsford", "Brennmoor", "Kettering Vale", "Ostrava Nova", "Lindqvist", "Harrowgate"]
JOBS = ["cartographer", "glassblower", "astronomer", "ferryman", "luthier", "archivist"]


def _people(n: int) -> list[str]:
    return [f"{FIRST[i % len(FIRST)]} {LAST[i // len(FIRST)]}" for i in range(n)]


def write_popqa(path: Path, n: int = 24) -> Path:
    """PopQA's TSV as published (every column, ``possible_answers`` a JSON list), invented rows."""
    cols = ["id", "subj", "prop", "obj", "subj_id", "prop_id", "obj_id", "s_aliases", "o_aliases", "s_uri", "o_uri",
            "s_wiki_title", "o_wiki_title", "s_pop", "o_pop", "question", "possible_answers"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(cols)
        for i, who in enumerate(_people(n)):
            prop, obj, q = (("occupation", JOBS[i % 6], f"What is {who}'s occupation?") if i % 2 == 0 else
                            ("place of birth", PLACES[i % 6], f"In what city was {who} born?"))
            w.writerow([1000 + i, who, prop, obj, 2000 + i, 22, 3000 + i, "[]", "[]", f"http://x/Q{i}", f"http://x/O{i}",
                        who, obj, 10 * (i + 1) ** 2, 500, q, json.dumps([obj])])
    return path


def write_entityquestions(folder: Path, n: int = 24) -> Path:
    """EntityQuestions' per-relation files (``dataset/test/P19.test.json``: a JSON list of question and answers)."""
    test = folder / "dataset" / "test"
    test.mkdir(parents=True)
    people = _people(n)
    (test / "P19.test.json").write_text(json.dumps(
        [{"question": f"Where was {p} born?", "answers": [PLACES[i % 6]]} for i, p in enumerate(people[: n // 2])]))
    (test / "P106.test.json").write_text(json.dumps(
        [{"question": f"What kind of work does {p} do?", "answers": [JOBS[i % 6]]}
         for i, p in enumerate(people[n // 2:])]))
    return test


def write_jsonl(path: Path, n: int = 24, choices: bool = False) -> Path:
    """A fact table of one's own: a question template per relation, aliases and popularity optional; with
    ``choices``, four options per fact (multiple choice, the answer among them)."""
    rows = []
    for i, p in enumerate(_people(n)):
        city = i % 2 == 1
        values = PLACES if city else JOBS
        rows.append({"subject": p, "relation": "workshop_city" if city else "trade",
                     "question_template": ("Which city is {subject}'s workshop in?" if city
                                           else "What trade does {subject} follow?"),
                     "answer": values[i % 6], "popularity": i + 1,
                     **({"options": [values[(i + k) % 6] for k in (2, 0, 3, 1)][i % 4:] +
                                    [values[(i + k) % 6] for k in (2, 0, 3, 1)][:i % 4]} if choices else {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_mmlu(folder: Path, n: int = 12) -> Path:
    """MMLU's per-subject CSVs as published (``data/test/<subject>_test.csv``: no header; question, four
    options, the answer letter), invented questions in two subject areas."""
    test = folder / "data" / "test"
    test.mkdir(parents=True)
    for area, values, ask in (("cartography", PLACES, "Which town does map sheet {i} of the {who} survey show?"),
                              ("crafts", JOBS, "Which craft did the {who} guild record in ledger {i}?")):
        with open(test / f"{area}_test.csv", "w", newline="") as f:
            w = csv.writer(f)
            for i in range(n):
                options = [values[(i + k) % 6] for k in range(4)]
                w.writerow([ask.format(i=i + 1, who=LAST[i % 4]), *options, "ABCD"[(i * 3) % 4]])
    return test


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*")) if p.is_file()}


def _pipeline(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke", *args], env=env,
                          capture_output=True, text=True, timeout=1800 * SLOW)


@pytest.fixture(scope="module")
def facts_runs(smoke_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("facts")
    data = fresh_cache(smoke_run, tmp / "data", keep_runs=True)
    # The smoke profile's own tables, as notebooks 01-06 wrote them: a fact set must not touch them.
    (data / "results").mkdir()
    import shutil
    shutil.copytree(smoke_run / "data" / "results" / "smoke", data / "results" / "smoke")
    before = _digest(data / "results" / "smoke")
    model = _small_llama(tmp / "Fact-Llama", data / "models" / "smollm2-135m-instruct")
    env = {**os.environ, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp / "figures")}
    sets = {"popqa-test": write_popqa(tmp / "popQA-test.tsv"),
            "entityquestions-dataset-test": write_entityquestions(tmp / "entityquestions"),
            "my-facts": write_jsonl(tmp / "my_facts.jsonl"),
            "my-mc-facts": write_jsonl(tmp / "my_mc_facts.jsonl", choices=True)}
    # Your own multiple-choice table in the cloze form (make facts ... MC_FORM=cloze); MMLU's below in the lettered one.
    args = {slug: ("03", "05", "06", "-p", f"facts_path={path}", "-p", f"model_name={model}",
                   *(["-p", "facts_mc_form=cloze"] if slug == "my-mc-facts" else [])) for slug, path in sets.items()}
    mmlu = Path(__file__).parent / "fixtures" / "facts" / "mmlu" / "data" / "test"
    args["mmlu-03"] = ("03", "-p", f"facts_path={mmlu}", "-p", f"model_name={model}")
    args["mmlu-05"] = ("05", "-p", f"facts_path={mmlu}", "-p", f"model_name={model}")
    big = write_mmlu(tmp / "MMLU-big")
    args["mmlu-big-data-test"] = ("03", "05", "06", "-p", f"facts_path={big}", "-p", f"model_name={model}")
    # Two pipelines at a time: each is mostly kernel starts and imports, one core's work, and the fact sets
    # share no run (the cache's claims keep concurrent pipelines apart, as they keep a grid's workers). The run
    # refused in its preflight goes alone, after: it shares its results folder with mmlu-03, and a failed start
    # removes its own folders where they are new and empty.
    from concurrent.futures import ThreadPoolExecutor
    refused = args.pop("mmlu-05")
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(args, pool.map(lambda a: _pipeline(env, *a), args.values())))
    runs["mmlu-05"] = _pipeline(env, *refused)
    return {"data": data, "runs": runs, "before": before, "model": "fact-llama"}


@pytest.mark.parametrize("slug", ["popqa-test", "entityquestions-dataset-test", "my-facts"])
def test_study_b_runs_on_each_published_layout_and_files_its_tables_under_its_own_slug(facts_runs, slug):
    r = facts_runs["runs"][slug]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    own = facts_runs["data"] / "results" / "smoke" / facts_runs["model"] / slug
    for name in ("fact-llama_knownness.csv", "fact-llama_knownness.json", "study_b_claims.csv", "study_b_accuracy.csv",
                 "study_b_mechanism.csv", "findings.csv", "power.csv"):
        assert (own / name).exists(), name
    claims = pd.read_csv(own / "findings.csv")
    # The pretrained track only (the tiny and theory models know nothing of these facts), every B claim.
    assert set(claims.claim) == {"R0", "B1", "B2", "B3", "B3-swap"} and set(claims.track) == {facts_runs["model"]}
    prov = json.loads((own / "study_b_claims.provenance.json").read_text())
    assert prov["configs"]["facts"]["slug"] == slug and len(prov["configs"]["facts"]["sha256"]) == 64
    known = json.loads((own / "fact-llama_knownness.json").read_text())
    assert known["n_facts"] == 24 and sum(known["slick_counts"].values()) == 24


def test_a_fact_set_leaves_the_profiles_own_tables_byte_for_byte(facts_runs):
    assert _digest(facts_runs["data"] / "results" / "smoke") == facts_runs["before"]


def _multiple_choice_claims(facts_runs, slug: str) -> Path:
    """The fact set ``slug`` ran Study B as multiple choice: every claim, B1 and B2 read as multiple-choice
    accuracy. Returns the folder of its tables."""
    r = facts_runs["runs"][slug]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    own = facts_runs["data"] / "results" / "smoke" / facts_runs["model"] / slug
    claims = pd.read_csv(own / "findings.csv")
    assert set(claims.claim) == {"R0", "B1", "B2", "B3", "B3-swap"}
    assert claims[claims.claim.isin(["B1", "B2"])].metric.str.startswith("multiple-choice accuracy").all()
    return own


def test_your_multiple_choice_facts_run_study_b_in_the_cloze_form_when_asked(facts_runs):
    own = _multiple_choice_claims(facts_runs, "my-mc-facts")
    claims = pd.read_csv(own / "findings.csv")
    assert claims[claims.claim.isin(["B1", "B2"])].metric.str.startswith("multiple-choice accuracy (cloze, acc_norm), ").all()
    acc = pd.read_csv(own / "study_b_accuracy.csv")
    assert acc["mean"].between(0, 1).all() and {"em", "acc"} <= set(acc.metric)  # acc_norm, and acc beside it


def test_a_multiple_choice_table_is_scored_and_refused_by_study_b_with_a_message(facts_runs):
    r = facts_runs["runs"]["mmlu-03"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    scored = json.loads((facts_runs["data"] / "results" / "smoke" / facts_runs["model"] / "mmlu-data-test" /
                         "fact-llama_knownness.json").read_text())
    assert scored["n_facts"] == 4 and 0 <= scored["known"] <= 1 and set(scored["slick_counts"]) <= {"Known", "Unknown"}
    # Four questions in two subject areas (3 + 1) cannot be split into pool and test: refused before anything runs.
    r = facts_runs["runs"]["mmlu-05"]
    assert r.returncode == 2 and "no relation has 4 or more facts" in r.stderr


def test_study_b_runs_on_mmlus_layout_with_each_question_its_own_subject(facts_runs):
    own = _multiple_choice_claims(facts_runs, "mmlu-big-data-test")
    mech = pd.read_csv(own / "study_b_mechanism.csv")
    swap = mech[mech.metric == "answer_unchanged_on_subject_swap"]  # another question over the same options
    assert len(swap) and (swap.n_items > 0).all()


def test_pipeline_parameters_are_checked_before_anything_runs():
    assert pipeline.parse_overrides(["facts_path=a b.jsonl", "subset=3", "replicate=False"]) == \
        {"facts_path": "a b.jsonl", "subset": 3, "replicate": False}
    with pytest.raises(ConfigError, match="write a parameter as NAME=VALUE"):
        pipeline.parse_overrides(["facts_path"])
    assert pipeline.main(["--profile", "smoke", "01", "-p", "facts_path=x.jsonl"]) == 2  # 01 declares no facts_path
