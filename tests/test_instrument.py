"""The instrument's storage curves and their spread: held-out storage at 31-100 mentions across
pretraining draws, against +/-5 points (eval.storage, used by notebook 02 and make instrument)."""

import pandas as pd
import pytest

from knowinject.eval import storage

from knowinject.bench import instrument


def _table(values):
    rows = []
    for (seed, precision), v in values.items():
        for measure in ("held-out templates", "training templates"):
            rows += [{"seed": seed, "precision": precision, "measure": measure, "bucket": b, "mean": m}
                     for b, m in (("11-30", v / 2), ("31-100", v))]
    return pd.DataFrame(rows)


def test_spread_measures_every_draw_from_the_first_seed_in_bf16():
    s = storage.spread(_table({(0, "bf16"): 0.56, (1, "bf16"): 0.60, (2, "bf16"): 0.52, (0, "fp32"): 0.58}))
    assert s["bucket"] == "31-100"
    assert abs(s["largest move"] - 0.04) < 1e-9 and s["within tolerance"]
    assert abs(s["range over seeds"] - 0.08) < 1e-9
    s = storage.spread(_table({(0, "bf16"): 0.56, (0, "fp32"): 0.62}))
    assert abs(s["largest move"] - 0.06) < 1e-9 and not s["within tolerance"]   # fp32 moved it 6 points
    assert storage.spread(_table({(0, "bf16"): 0.56, (1, "bf16"): 0.61}))["within tolerance"]  # exactly 5 points


def test_spread_falls_back_to_the_top_bucket_of_a_small_world():
    t = _table({(0, "bf16"): 0.5})
    s = storage.spread(t[t.bucket != "31-100"])
    assert s["bucket"] == "11-30" and s["largest move"] == 0


def test_curves_count_only_people_whose_qa_was_never_in_pretraining():
    scored = pd.DataFrame({"qa_in_pretraining": [False, False, False, True],
                           "template_split": ["heldout", "heldout", "train", "heldout"],
                           "exposure": [50, 60, 50, 50], "em": [1.0, 0.0, 1.0, 1.0]})
    c = storage.curves_by_bucket(scored).set_index("measure")
    assert c.loc["held-out templates", "mean"] == 0.5 and c.loc["held-out templates", "n"] == 2
    assert c.loc["training templates", "mean"] == 1.0 and set(c.bucket) == {"31-100"}


def test_the_command_refuses_a_results_name_or_setting_it_cannot_use(capsys):
    # checked before any pretraining starts, so a typo costs nothing
    for argv, said in ((["--out", "curves.txt"], "ending in .csv"), (["--out", "../x.csv"], "ending in .csv"),
                       (["--set", "epochs"], "KEY=VALUE"), (["--set", "seed=3"], "other than seed and precision")):
        with pytest.raises(SystemExit) as e:
            instrument.main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err
