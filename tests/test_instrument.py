"""The instrument's spread: held-out storage at 31-100 mentions across pretraining draws, against +/-5 points."""

import pandas as pd

from knowinject.bench import instrument


def _table(values):
    rows = []
    for (seed, precision), v in values.items():
        for measure in ("held-out templates", "training templates"):
            rows += [{"seed": seed, "precision": precision, "measure": measure, "bucket": b, "mean": m}
                     for b, m in (("11-30", v / 2), ("31-100", v))]
    return pd.DataFrame(rows)


def test_spread_measures_every_draw_from_the_first_seed_in_bf16():
    s = instrument.spread(_table({(0, "bf16"): 0.56, (1, "bf16"): 0.60, (2, "bf16"): 0.52, (0, "fp32"): 0.58}))
    assert s["bucket"] == "31-100"
    assert abs(s["largest move"] - 0.04) < 1e-9 and s["within tolerance"]
    assert abs(s["range over seeds"] - 0.08) < 1e-9
    s = instrument.spread(_table({(0, "bf16"): 0.56, (0, "fp32"): 0.62}))
    assert abs(s["largest move"] - 0.06) < 1e-9 and not s["within tolerance"]   # fp32 moved it 6 points


def test_spread_falls_back_to_the_top_bucket_of_a_small_world():
    t = _table({(0, "bf16"): 0.5})
    s = instrument.spread(t[t.bucket != "31-100"])
    assert s["bucket"] == "11-30" and s["largest move"] == 0
