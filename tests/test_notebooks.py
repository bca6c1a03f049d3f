"""Notebooks: committed clean, one parameters cell, the STYLE.md anatomy; and a smoke run of every
notebook through the real pipeline (papermill), with assertions on the metrics each one saves."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import nbformat
import pytest

from knowinject import paths, pipeline

NOTEBOOKS = pipeline.notebooks()


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_one_parameters_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    # Parameters are plain typed literals; derived values belong in the next cell.
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), ast.dump(node)
        ast.literal_eval(node.value)
    assert "profile" in pipeline_params(nb_path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "Inputs" in nb.cells[0].source and "Outputs" in nb.cells[0].source
    assert "print_colophon" in code[-1].source, "the last cell is the colophon"


def pipeline_params(nb_path):
    import papermill
    return papermill.inspect_notebook(str(nb_path))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Every notebook, in order, with the smoke profile, writing into a temporary data folder."""
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "KNOWINJECT_DATA": str(tmp / "data"), "KNOWINJECT_FIGURES": str(tmp / "figures")}
    r = subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke"], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp


def _results(tmp):
    return tmp / "data" / "results" / "smoke"


def test_smoke_01_world(smoke_run):
    s = json.loads((_results(smoke_run) / "world_summary.json").read_text())
    assert all(s["checks"].values())
    assert s["n_new_people"] == 20 and s["n_known_people"] == 120
    assert s["corpus_tokens"] > 10_000
    assert s["people_per_exposure_bucket"]["1"] > s["people_per_exposure_bucket"]["11-30"] > 0  # Zipf shape
    assert (smoke_run / "figures" / "smoke" / "world_exposure.png").exists()


def test_failing_notebook_is_named_with_its_cell(tmp_path, monkeypatch):
    bad = nbformat.v4.new_notebook()
    bad.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell('profile: str = "smoke"')
    p.metadata["tags"] = ["parameters"]
    bad.cells = [p, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nbformat.write(bad, nb_dir / "99_broken.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", nb_dir)
    monkeypatch.setattr(paths, "EXECUTED", tmp_path / "executed")
    with pytest.raises(pipeline.NotebookFailed, match=r"99_broken.ipynb failed in cell 3 .*ValueError: boom"):
        pipeline.run_notebook(nb_dir / "99_broken.ipynb", "smoke")


def test_smoke_02_pretrain(smoke_run):
    s = json.loads((_results(smoke_run) / "tiny_pretrain.json").read_text())
    assert s["final_loss"] < 0.7 * s["first_loss"]  # the tiny model learned its corpus
    assert s["train_tokens"] > 100_000 and 0 <= s["em_overall"] <= 1
    assert (smoke_run / "figures" / "smoke" / "tiny_knownness_by_exposure.png").exists()
    assert list((smoke_run / "data" / "models").glob("tiny-*/model/model.safetensors"))


def test_smoke_03_knownness(smoke_run):
    s = json.loads((_results(smoke_run) / "smollm2_knownness.json").read_text())
    assert s["n_facts"] == 60
    # SmolLM2 knows some real-world facts few-shot, and fewer zero-shot (format, not knowledge).
    assert 0.1 < s["few_shot_em"] <= 1 and s["zero_shot_em"] <= s["few_shot_em"]
    assert sum(s["slick_counts"].values()) == 60
    assert (smoke_run / "figures" / "smoke" / "smollm2_accuracy_by_popularity.png").exists()
