"""The cache cannot serve a wrong result: a run's manifest (sha256, size and lines of every file it wrote) is
checked on every read, so a run cut short or half-written stops with an error that names its folder and file;
runs from before manifests count as absent; ``make verify`` checks a whole cache; and bad inputs are refused in
the pipeline's pre-flight, in seconds, before any model is loaded, leaving no empty folder behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from knowinject.core import paths, runs

from knowinject.data import facts as factfiles

from knowinject import verify

from .conftest import SLOW


def _table_run(root, rows: int = 40):
    df = pd.DataFrame({"fact_id": [f"f{i}" for i in range(rows)], "answer": ["Paris \"the\" city"] * rows})
    return runs.cached_run(root, "preds", {"k": rows}, lambda tmp: runs.write_jsonl(df, tmp / "predictions.jsonl"),
                           verbose=False)


def _cut_lines(path, keep: float = 0.5):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: int(len(lines) * keep)]))


def _half_write_last_line(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the last record stops mid-string


def test_a_finished_run_records_a_manifest_of_its_files(tmp_path):
    folder = _table_run(tmp_path)
    files = json.loads((folder / runs.DONE).read_text())["files"]
    assert set(files) == {"config.json", "predictions.jsonl"}
    assert files["predictions.jsonl"]["lines"] == 40 and len(files["predictions.jsonl"]["sha256"]) == 64
    assert files["predictions.jsonl"]["bytes"] == (folder / "predictions.jsonl").stat().st_size


@pytest.mark.parametrize("damage", [_cut_lines, _half_write_last_line], ids=["lines-removed", "half-written-line"])
def test_a_damaged_run_is_an_error_naming_its_folder_and_file(tmp_path, damage):
    folder = _table_run(tmp_path)
    assert len(runs.read_jsonl(folder / "predictions.jsonl")) == 40
    damage(folder / "predictions.jsonl")
    # every way a run is read: its table, the cached run itself, and the whole cache
    with pytest.raises(runs.DamagedRun) as e:
        runs.read_jsonl(folder / "predictions.jsonl")
    message = str(e.value)
    assert paths.show(folder) in message and "predictions.jsonl" in message and "rm -rf" in message
    assert "recomputes" in message
    with pytest.raises(runs.DamagedRun, match="predictions.jsonl"):
        _table_run(tmp_path)
    found = verify.check(verify.finished_runs([tmp_path]))
    assert [f for f, _ in found["damaged"]] == [folder]


def test_removing_a_damaged_run_recomputes_it(tmp_path):
    folder = _table_run(tmp_path)
    _cut_lines(folder / "predictions.jsonl")
    subprocess.run(["rm", "-rf", str(folder)], check=True)  # what the message says to do
    assert len(runs.read_jsonl(_table_run(tmp_path) / "predictions.jsonl")) == 40


def test_a_run_without_a_manifest_is_absent_and_recomputed(tmp_path):
    folder = _table_run(tmp_path)
    prov = json.loads((folder / runs.DONE).read_text())
    del prov["files"]  # as every run written before manifests
    (folder / runs.DONE).write_text(json.dumps(prov))
    (folder / "predictions.jsonl").write_text('{"fact_id": "old"}\n')
    assert not runs.is_done(folder)
    assert verify.check([folder])["no_manifest"] == [folder]
    assert len(runs.read_jsonl(_table_run(tmp_path) / "predictions.jsonl")) == 40  # recomputed, not served


def test_make_verify_reports_and_removes_damaged_runs(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "KNOWINJECT_DATA": str(data)}
    code = ("from knowinject.core import runs, paths; import pandas as pd; "
            "[runs.cached_run(paths.RUNS, 'r', {'k': k}, lambda t: runs.write_jsonl(pd.DataFrame({'a': [1, 2]}), "
            "t / 'a.jsonl'), verbose=False) for k in range(3)]")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    damaged = sorted((data / "runs").glob("r-*"))[1]
    _cut_lines(damaged / "a.jsonl")
    r = subprocess.run([sys.executable, "-m", "knowinject.verify"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "2 verified, 1 damaged" in r.stdout and damaged.name in r.stderr, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "knowinject.verify", "--remove"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and not damaged.exists()


def test_a_latin1_fact_table_is_named_with_the_byte_and_utf8(tmp_path):
    path = tmp_path / "mypopqa.tsv"
    data = "subj\tprop\tobj\ts_pop\tquestion\tpossible_answers\nJosé\toccupation\tpoet\t1\tWhat?\t[]\n".encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(factfiles.FactTableError) as e:
        factfiles.load(path)
    offset = data.index("é".encode("latin-1"))
    assert str(path) in str(e.value) and "UTF-8" in str(e.value) and f"byte {offset} (line 2)" in str(e.value)


def _pipeline(tmp_path, *args):
    data, figures = tmp_path / "data", tmp_path / "figures"
    env = {**os.environ, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(figures)}
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    return r, time.time() - start, data, figures


def _no_folder_left(data, figures):
    made = [p for root in (data / "results", figures) if root.exists() for p in root.rglob("*") if p.is_dir()]
    assert not made, f"a failed start left folders: {made}"


def test_a_refused_run_removes_only_its_own_new_empty_folders(tmp_path, monkeypatch):
    """Two pipelines side by side: one refused at its start must not remove the other's new, still empty
    results folder (its notebook could not save its table), only the empty folders of its own run."""
    from knowinject.core import paths

    from knowinject import pipeline

    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    before = pipeline._folders()
    other = paths.results_dir("smoke", "fact-llama", "popqa-test")  # made by the pipeline beside this one
    mine = paths.results_dir("smoke", "fact-llama", "mmlu-data-test")
    paths.figures_dir("smoke", "fact-llama", "mmlu-data-test")
    own = pipeline.own_folders("smoke", {"facts_path": "x/mmlu/data/test", "model_name": "/m/Fact-Llama"})
    assert mine in own and other not in own and paths.results_dir("smoke", create=False) in own
    pipeline._remove_empty(before, own)
    assert other.is_dir() and not mine.exists()
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").rglob("*"))


def test_a_table_study_b_cannot_split_is_refused_in_the_preflight(tmp_path):
    """``make facts`` with no relation of 4 facts stops in seconds, before notebook 03 loads a model."""
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"subject": f"S{i}", "relation": f"r{i % 4}", "question": f"Q{i}?",
                                        "answer": "A"}) + "\n" for i in range(12)))
    r, took, data, figures = _pipeline(tmp_path, "03", "05", "06", "-p", f"facts_path={path}")
    assert r.returncode == 2 and "no relation has 4 or more facts" in r.stderr and str(path) in r.stderr, r.stderr
    assert took < 10, f"the refusal took {took:.1f} s"
    assert "== 03" not in r.stdout and "Traceback" not in r.stderr
    _no_folder_left(data, figures)


def test_a_model_path_to_a_file_or_an_encoder_is_refused_in_the_preflight(tmp_path):
    weights = tmp_path / "gemma-3-270m" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"not read")
    r, _, data, figures = _pipeline(tmp_path, "03", "05", "06", "-p", f"model_name={weights}")
    assert r.returncode == 2 and "is a file, not a model folder" in r.stderr and "== 03" not in r.stdout, r.stderr
    _no_folder_left(data, figures)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    import torch
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(bert / "model.safetensors"))
    r, _, data, figures = _pipeline(tmp_path, "03", "-p", f"model_name={bert}")
    assert r.returncode == 2 and "not a causal language model" in r.stderr and "== 03" not in r.stdout, r.stderr
    _no_folder_left(data, figures)


def test_two_models_in_folders_of_one_name_compute_their_own_runs(smoke_run, tmp_path):
    """Study B's smoke design on a fact table, run with two random models of other weights saved in two folders
    both named ``gemma-3-270m``: the second computes its own runs (knownness and base evaluation included), and
    the tables' provenance names its own weights, for the models named and for the runs read."""
    from knowinject.train import models

    from tests.conftest import fresh_cache
    from tests.test_own_facts import write_popqa
    from tests.test_own_model import _small_llama

    data = fresh_cache(smoke_run, tmp_path / "data", keep_runs=True)
    facts = write_popqa(tmp_path / "mypopqa.tsv")
    env = {**os.environ, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp_path / "figures")}
    computed = {}
    for side, seed in (("x", 1), ("y", 2)):
        folder = _small_llama(tmp_path / side / "gemma-3-270m", data / "models" / "smollm2-135m-instruct", seed=seed)
        before = set(runs.ledger(data / "runs").run)
        r = subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke", "03", "05", "-p",
                            f"facts_path={facts}", "-p", f"model_name={folder}"], env=env, capture_output=True,
                           text=True, timeout=1800 * SLOW)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        computed[side] = set(runs.ledger(data / "runs").run) - before
        prov = json.loads((data / "results" / "smoke" / "gemma-3-270m" / "mypopqa" / "study_b_accuracy.provenance.json")
                          .read_text())
        key = models.content_key(folder)
        assert prov["models"]["gemma-3-270m"]["content_key"] == key
        assert prov["models"]["gemma-3-270m"]["weights_sha256"]["model.safetensors"] == key.removeprefix("sha256:")
        assert prov["run_models"]["gemma-3-270m"] == [key], "the table's runs are not all this model's"
    for kind in ("knownness-facts-", "study-b-smollm2-base-", "study-b-smollm2-known-"):
        assert any(r.startswith(kind) for r in computed["y"]), f"the second model computed no {kind}* run: {computed['y']}"
    assert not computed["x"] & computed["y"]


def test_a_table_mixing_two_models_runs_is_refused_naming_both():
    meta = {"models": {"smollm2": {"content_key": "sha256:aaa"}, "tiny pretrain-seed 0": {"content_key": "sha256:t0"},
                       "tiny pretrain-seed 1": {"content_key": "sha256:t1"}},
            "run_models": {"smollm2": ["sha256:aaa"], "tiny": ["sha256:t0", "sha256:t1"]}}
    runs.check_models(meta, "study_b_accuracy.csv")  # one model per track and base: drawn
    meta["run_models"]["smollm2"] = ["sha256:aaa", "sha256:bbb"]
    with pytest.raises(runs.MixedModels, match="sha256:bbb besides the table's own \\(smollm2 sha256:aaa\\)"):
        runs.check_models(meta, "study_b_accuracy.csv")
    meta["run_models"] = {"tiny": ["sha256:t0", "sha256:t9"]}
    with pytest.raises(runs.MixedModels, match="sha256:t9"):
        runs.check_models(meta, "study_b_accuracy.csv")


def test_a_hub_id_is_keyed_by_the_commit_its_revision_resolves_to(monkeypatch, tmp_path):
    """Offline, the commit comes from the local hub cache (``snapshots/<commit>/``); a model in neither the hub
    nor the cache cannot be keyed, and says how to pass a local folder instead."""
    import huggingface_hub

    from knowinject.train import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "models--org--name" / "snapshots" / ("c0ffee" * 6 + "abcd") / "config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename: str(snapshot) if repo == "org/name" else None)
    assert models.content_key("org/name") == f"hub:org/name@{'c0ffee' * 6}abcd"
    with pytest.raises(models.ModelNotFound, match="local folder"):
        models.content_key("org/other")
