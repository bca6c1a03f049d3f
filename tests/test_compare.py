"""The reproduction report: verdicts compared claim by claim, the largest deviation per table, and a
non-zero exit when a verdict moves between reproduced and not reproduced."""

from __future__ import annotations

import json

import pandas as pd

from knowinject.core import paths

from knowinject import compare


def _findings(effect, lo, hi, verdict, rep_verdict="undecided"):
    return pd.DataFrame([{"claim": "A1", "track": "tiny", "effect": effect, "ci_low": lo, "ci_high": hi,
                          "verdict": verdict, "replication_effect": 0.1, "replication_ci_low": -0.1,
                          "replication_ci_high": 0.3, "replication_verdict": rep_verdict},
                         {"claim": "B1", "track": "tiny", "effect": 0.05, "ci_low": 0.01, "ci_high": 0.09,
                          "verdict": "reproduced", "replication_effect": float("nan"), "replication_ci_low": float("nan"),
                          "replication_ci_high": float("nan"), "replication_verdict": float("nan")}])


def test_claims_flag_moved_verdicts_and_effects_outside_the_committed_interval():
    old = _findings(0.124, 0.066, 0.182, "reproduced")
    same = compare.claims(old, _findings(0.10, 0.05, 0.15, "reproduced"))
    assert same["same verdict"].all() and same["new effect in committed interval"].all() and not same.flipped.any()
    assert list(same.design) == ["main", "replication", "main"]  # B1 was not replicated: no row
    moved = compare.claims(old, _findings(0.024, -0.03, 0.08, "undecided"))
    row = moved[(moved.claim == "A1") & (moved.design == "main")].iloc[0]
    assert not row["same verdict"] and not row["new effect in committed interval"] and not row.flipped
    flipped = compare.claims(old, _findings(-0.1, -0.2, -0.05, "not reproduced"))
    assert flipped.flipped.sum() == 1


def test_a_claim_in_one_run_only_reads_as_new_not_as_a_moved_verdict():
    old = _findings(0.124, 0.066, 0.182, "reproduced")
    new = pd.concat([_findings(0.124, 0.066, 0.182, "reproduced"),
                     _findings(0.2, 0.1, 0.3, "reproduced").assign(track="smollm2-mc")], ignore_index=True)
    table = compare.claims(old, new)
    added = table[table.track == "smollm2-mc"]
    assert len(added) and added["same verdict"].isna().all() and (added.committed == "new claim").all()
    assert "nan" not in " ".join(table.committed) and table.loc[table.track != "smollm2-mc", "same verdict"].all()
    gone = compare.claims(new, old)
    assert (gone.loc[gone.track == "smollm2-mc", "this run"] == "not in this run").all()


def test_deviation_aligns_rows_by_their_labels_and_ignores_timings():
    old = pd.DataFrame({"bucket": ["1", "2-3"], "em": [0.04, 0.13], "seconds": [10.0, 20.0]})
    new = pd.DataFrame({"bucket": ["2-3", "1"], "em": [0.10, 0.06], "seconds": [99.0, 99.0]})
    d = compare.deviation(old, new)
    assert abs(d["largest deviation"] - 0.03) < 1e-12 and d["in column"] == "em" and d["rows compared"] == 2


def test_deviation_aligns_rows_by_their_checkpoint_when_a_track_is_added():
    """Study B's accuracy rows are told apart by their epoch too: a track added in the middle of the table (the
    cloze multiple choice in place of the lettered one) leaves every other row compared with itself."""
    rows = [{"condition": c, "epoch": e, "track": t, "mean": m} for t, m in (("smollm2", 0.5), ("tiny", 0.3))
            for c in ("base", "whole") for e in (0, 1)]
    old = pd.DataFrame(rows)
    new = pd.concat([old.iloc[:4], pd.DataFrame(rows[:4]).assign(track="smollm2-cloze", mean=0.9), old.iloc[4:]],
                    ignore_index=True)
    d = compare.deviation(old, new)
    assert d["largest deviation"] == 0 and d["rows compared"] == 8 and d["rows this run"] == 12
    assert compare.deviation(old, new.assign(mean=new["mean"] + (new.track == "tiny") * 0.1))["in column"] == "mean"


def test_deviation_keeps_rows_whose_later_labels_quote_a_number_that_moved():
    # findings.csv's B3 metric text quotes the generic-answer rate: the row is the same claim, not a new one
    old = pd.DataFrame({"claim": ["A1", "B3", "B3"], "track": ["tiny", "tiny", "smollm2"],
                        "metric": ["em", "attention (rate +0.038)", "attention (rate +0.023)"],
                        "effect": [0.07, 0.046, 0.011]})
    new = old.assign(metric=["em", "attention (rate +0.115)", "attention (rate -0.001)"],
                     effect=[0.07, 0.022, 0.011])
    d = compare.deviation(old, new)
    assert d["rows compared"] == 3 and abs(d["largest deviation"] - 0.024) < 1e-12 and d["in column"] == "effect"


def test_report_exits_non_zero_when_a_verdict_flips(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    old = _findings(0.124, 0.066, 0.182, "reproduced")
    prov = {"git_commit": "abc", "cpu": {"model": "AMD EPYC", "features": ["avx512_bf16"]}}
    store = {"findings.csv": old.to_csv(index=False), "findings.provenance.json": json.dumps(prov)}
    monkeypatch.setattr(compare, "committed", lambda path, ref: store.get(path.name))
    _findings(-0.1, -0.2, -0.05, "not reproduced").to_csv(tmp_path / "findings.csv", index=False)
    (tmp_path / "findings.provenance.json").write_text(json.dumps({**prov, "cpu": {"model": "Intel Xeon",
                                                                                  "features": ["amx_bf16"]}}))
    text, flipped = compare.report("default", "HEAD")
    assert flipped and "AMD EPYC" in text and "Intel Xeon" in text and "0 of 3 verdicts the same" not in text
    assert compare.main(["--profile", "default"]) == 1
    old.to_csv(tmp_path / "findings.csv", index=False)
    assert compare.main(["--profile", "default"]) == 0


def test_drift_allows_a_redraw_and_names_what_moved_too_far():
    ref = _findings(0.124, 0.066, 0.182, "reproduced")           # half-width 0.058
    assert compare.drift(ref, ref) == []
    # within 3 half-widths (0.174), an honest redraw of the same design: no drift, even an undecided verdict
    assert compare.drift(ref, _findings(0.124 - 0.17, -0.1, 0.05, "undecided")) == []
    far = compare.drift(ref, _findings(0.124 - 0.18, -0.1, 0.05, "undecided"))
    assert len(far) == 1 and "A1 tiny main" in far[0] and "0.058" in far[0]
    flip = compare.drift(ref, _findings(0.0, -0.05, -0.01, "not reproduced"))
    assert any("verdict reproduced -> not reproduced" in p for p in flip)
    assert any("only in the reference" in p for p in compare.drift(ref, ref.iloc[:1]))


def _stamp(folder, profile, model, features, device="cpu: x86_64"):
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps({"profile": profile, "device": device,
                                                        "cpu": {"model": model, "features": features}}))


def test_the_report_names_the_machines_behind_the_cached_runs_and_flags_a_mix(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "MODELS", tmp_path / "models")
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(compare, "committed", lambda path, ref: None)
    (tmp_path / "results").mkdir()
    assert compare.machines("default").empty
    assert "No cached model or run of profile default" in compare.report("default")[0]
    _stamp(tmp_path / "models" / "tiny-1", "default", "AMD EPYC", ["avx2", "avx512f", "avx512_bf16"])
    for i in range(3):
        _stamp(tmp_path / "runs" / f"study-a-{i}", "default", "AMD EPYC", ["avx2", "avx512f", "avx512_bf16"])
    _stamp(tmp_path / "runs" / "smoke-run", "smoke", "Intel Xeon", ["avx2", "amx_bf16"])  # another profile's
    (tmp_path / "runs" / "unfinished.partial-1").mkdir()  # no provenance yet: not counted
    one = compare.machines("default")
    assert len(one) == 1 and one.runs.iloc[0] == 4 and one.cpu.iloc[0] == "AMD EPYC"
    text, _ = compare.report("default")
    assert "AMD EPYC" in text and "mix" not in text
    # one node of a cluster without bf16: the same config keys, another instrument
    _stamp(tmp_path / "runs" / "study-a-9", "default", "AMD EPYC", ["avx2"])
    two = compare.machines("default")
    assert len(two) == 2 and list(two.runs) == [4, 1] and "avx2" in list(two["bf16 / AMX features"])
    assert "results mix 2 kinds of machine" in compare.report("default")[0]
