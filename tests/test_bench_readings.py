"""The measurements behind two readings of docs/findings.md and docs/claims.md that train no design of their own:
the multiple-choice forms' prompts and their frequency-only baseline (``make mc-forms``), and the jobs the tiny
track's regime search runs (``make regime``)."""

from __future__ import annotations

import pandas as pd

from knowinject.studies import study_b

from knowinject.bench import mc_forms, regime


def _questions() -> pd.DataFrame:
    rows = [("f1", "continent", "Where is Lyon?", "Europe", ["Asia", "Europe", "Africa", "Oceania"]),
            ("f2", "continent", "Where is Pune?", "Asia", ["Asia", "Europe", "Africa", "Oceania"]),
            ("f3", "continent", "Where is Osaka?", "Asia", ["Oceania", "Africa", "Asia", "Europe"]),
            ("f4", "continent", "Where is Lagos?", "Africa", ["Europe", "Asia", "Africa", "Oceania"]),
            ("f5", "currency", "What is Chad's currency?", "CFA franc", ["Euro", "CFA franc", "Yen", "Rupee"])]
    t = pd.DataFrame(rows, columns=["fact_id", "relation", "question", "answer", "options"])
    return t.assign(answer_letter=["ABCD"[o.index(a)] for o, a in zip(t.options, t.answer)])


def test_each_form_asks_the_question_after_solved_ones_of_its_relation_only():
    t = _questions()
    lettered, cloze = mc_forms.prompts(t, "lettered", 2), mc_forms.prompts(t, "cloze", 2)
    assert lettered[0].endswith("Where is Lyon?\nA. Asia\nB. Europe\nC. Africa\nD. Oceania\nAnswer:")
    assert lettered[0].count("Answer:") == 3 and "Lyon" not in lettered[0].rsplit("\n\n", 1)[0]
    assert cloze[0].endswith("Q: Where is Lyon?\nA:") and cloze[0].count("Q: ") == 3 and "\nA. " not in cloze[0]
    solved = {f"Q: {q}\nA: {a}" for q, a in zip(t.question[1:4], t.answer[1:4])}  # the other continent questions
    assert set(cloze[0].split("\n\n")[:-1]) <= solved and len(cloze[0].split("\n\n")) == 3
    # A relation with one question has nobody to learn from: the question alone.
    assert cloze[4] == "Q: What is Chad's currency?\nA:" and mc_forms.prompts(t, "cloze", 0) == \
        [f"Q: {q}\nA:" for q in t.question]


def test_the_frequency_guess_picks_the_option_most_often_right_among_the_other_questions():
    right = mc_forms.frequency_baseline(_questions())
    # The other continent questions' answers decide. Lyon: Asia twice, Africa once -> Asia (wrong). Pune: Europe,
    # Asia, Africa once each, a tie the first listed option wins -> Asia (right). Osaka: the same tie, Africa listed
    # first (wrong). Lagos: Asia twice -> Asia (wrong). Chad's currency, alone in its relation: the first option.
    assert list(right) == [False, True, False, False, False]


def test_the_regime_search_runs_the_base_and_the_whole_pool_of_every_seed():
    cfg = study_b.design.StudyBConfig(seeds=(0, 3))
    assert regime.whole_and_base(cfg) == [("base", 0), ("whole", 0), ("whole", 3)]
    names = [s[0] for s in regime.SETTINGS]
    assert len(names) == len(set(names)) and names[0].startswith("today's") and 0 < regime.ROUND_TWO < len(names)
