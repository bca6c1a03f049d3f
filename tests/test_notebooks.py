"""Notebooks: committed clean, one parameters cell, the STYLE.md anatomy; and a smoke run of every
notebook through the real pipeline (papermill), with assertions on the metrics each one saves."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from knowinject.core import executor, paths

from knowinject.studies import findings

from knowinject import compare, pipeline

from .conftest import SLOW, assert_study_b_grid_matches, fresh_cache, results_of

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


def _results(tmp):
    return results_of(tmp)


def test_smoke_01_world(smoke_run):
    s = json.loads((_results(smoke_run) / "world_summary.json").read_text())
    assert all(s["checks"].values())
    assert s["n_new_people"] == 20 and s["n_known_people"] == 120
    assert s["corpus_tokens"] > 10_000
    # Log-uniform exposure up to 30 mentions: every bucket up to 11-30 holds people, none above.
    buckets = s["people_per_exposure_bucket"]
    assert all(buckets[b] > 0 for b in ("1", "2-3", "4-10", "11-30")) and buckets["31-100"] == buckets[">100"] == 0
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
    assert {"monotone over the exposure buckets", "at most 20% at 1 mention"} <= set(s["checks"])
    assert (smoke_run / "figures" / "smoke" / "tiny_knownness_by_exposure.png").exists()
    assert list((smoke_run / "data" / "models").glob("tiny-*/model/model.safetensors"))
    # the recipe from each base seed (smoke: 0 and 1), both measures, and their spread against the tolerance
    bases = pd.read_csv(_results(smoke_run) / "tiny_bases.csv")
    assert sorted(bases.seed.unique()) == [0, 1] and set(bases.measure) == {"held-out templates", "training templates"}
    assert bases["mean"].between(0, 1).all() and bases.model.nunique() == 2
    assert s["bases"]["seeds"] == [0, 1] and set(s["bases"]["curves"]) == {"0", "1"}
    assert s["bases"]["spread"]["largest move"] >= 0 and isinstance(s["bases"]["spread"]["within tolerance"], bool)


def test_smoke_03_knownness(smoke_run):
    s = json.loads((_results(smoke_run) / "smollm2_knownness.json").read_text())
    assert s["n_facts"] == 60
    # SmolLM2 knows some real-world facts few-shot, and fewer zero-shot (format, not knowledge).
    assert 0.1 < s["few_shot_em"] <= 1 and s["zero_shot_em"] <= s["few_shot_em"]
    assert sum(s["slick_counts"].values()) == 60
    assert (smoke_run / "figures" / "smoke" / "smollm2_accuracy_by_popularity.png").exists()


def test_smoke_04_study_a(smoke_run):
    claims = pd.read_csv(_results(smoke_run) / "study_a_claims.csv")
    for design in ("main", "replication"):
        d = claims[claims.design == design]
        assert sorted(zip(d.claim, d.track)) == [(c, t) for c in ("A1", "A2", "A3", "A4", "A5")
                                                 for t in ("smollm2", "tiny")], design
    assert set(claims.verdict) <= set(findings.VERDICTS)
    assert ((claims.ci_low <= claims.effect + 1e-9) | claims.effect.isna()).all() and claims.mde.notna().sum() >= 16
    hops = pd.read_csv(_results(smoke_run) / "study_a_second_hop.csv")
    assert {"birth_country", "birth_continent"} <= set(hops.name) and hops.second_hop_accuracy.between(0, 1).all()
    summary = pd.read_csv(_results(smoke_run) / "study_a_summary.csv")
    assert {"qa", "multiple_choice", "two_hop", "style_identification"} <= set(summary.evaluation)
    assert summary["mean"].between(0, 1).all() and (summary.ci_low <= summary["mean"] + 1e-9).all()
    fit = pd.read_csv(_results(smoke_run) / "study_a_fit.csv")
    assert (fit.final_loss < fit.first_loss).mean() > 0.8  # training fits its data in almost every run
    assert (_results(smoke_run) / "study_a_claims.provenance.json").exists()


def test_smoke_05_study_b(smoke_run):
    claims = pd.read_csv(_results(smoke_run) / "study_b_claims.csv")
    for design, tracks in (("main", ("one-layer", "smollm2", "smollm2-cloze", "tiny")),
                           ("replication", ("one-layer", "smollm2", "tiny"))):
        d = claims[claims.design == design]
        # R0 (does finetuning lift factuality?) for every instrument, the one-layer model's pretrained model included.
        assert sorted(zip(d.claim, d.track)) == sorted([(c, t) for c in ("R0", "B1", "B2", "B3", "B3-swap")
                                                        for t in tracks]), design
    assert set(claims[claims.claim == "R0"].verdict) <= {"lifts", "lowers", "undecided", "unmeasurable"}
    # Study B as multiple choice in the cloze form: SmolLM2 on the GeoNames facts as four-way questions, each option's
    # text scored after the question (acc_norm); the lettered form runs in the full profile.
    mc = claims[claims.track == "smollm2-cloze"]
    assert mc[mc.claim.isin(["B1", "B2"])].metric.str.startswith("multiple-choice accuracy (cloze, acc_norm), ").all()
    levels = pd.read_csv(_results(smoke_run) / "study_b_by_level.csv")
    tiny = levels[(levels.track == "tiny") & (levels.condition == "base")]
    assert set(tiny["level"]) >= {"1", "2-3", "4-10"} and tiny.n_items.nunique() == 1  # stratified test set
    theory = pd.read_csv(_results(smoke_run) / "study_b_theory.csv")
    assert set(theory.condition) == {"base", "known", "unknown", "random", "whole"}
    acc = pd.read_csv(_results(smoke_run) / "study_b_accuracy.csv")
    assert set(acc.epoch) == {0, 1, 2} and {"base", "known", "unknown", "random", "whole"} <= set(acc.condition)
    base = acc[(acc.track == "smollm2") & (acc.condition == "base") & (acc.bucket == "all") & (acc.metric == "em")]
    assert base.set_index("prompt")["mean"]["few-shot"] > 0  # SmolLM2 knows some test facts before finetuning
    fit = pd.read_csv(_results(smoke_run) / "study_b_fit.csv")
    # SmolLM2's LoRA runs fit their facts epoch by epoch. The smoke tiny model finetunes on 7-32 facts for a
    # handful of steps, too few for its per-epoch mean loss to be monotone, so it is only checked for sanity.
    lora = fit[fit.track == "smollm2"]
    assert len(lora) and (lora.loss_epoch_2 < lora.loss_epoch_1).all()
    tiny_fit = fit[fit.track == "tiny"]
    assert len(tiny_fit) and tiny_fit[["loss_epoch_1", "loss_epoch_2"]].gt(0).all().all()
    mech = pd.read_csv(_results(smoke_run) / "study_b_mechanism.csv")
    assert mech[mech.metric == "subject_attention_share"]["mean"].between(0, 1).all()
    # B3's causal reading: every track's final checkpoints asked their test questions about swapped subjects.
    swap = mech[mech.metric == "answer_unchanged_on_subject_swap"]
    assert set(swap.track) == {"smollm2", "smollm2-cloze", "tiny"} and swap["mean"].between(0, 1).all() \
        and (swap.n_items > 0).all()
    # acc_norm (em) and acc (summed log-likelihood) are both reported for every condition of the cloze track.
    cloze = acc[(acc.track == "smollm2-cloze") & (acc.bucket == "all")]
    assert len(cloze) and cloze["mean"].between(0, 1).all()
    assert set(cloze[cloze.metric == "acc"].condition) == set(cloze[cloze.metric == "em"].condition)
    # The chance rate comes from the questions' own options (four per GeoNames question); open questions have none.
    assert acc[acc.track == "smollm2-cloze"].chance.eq(0.25).all() and acc[acc.track != "smollm2-cloze"].chance.isna().all()


def test_smoke_06_figures_and_findings(smoke_run):
    table = pd.read_csv(_results(smoke_run) / "findings.csv")
    assert list(table.columns) == findings.COLUMNS
    assert len(table) == 5 * 2 + 5 * 4 and table.mde.notna().sum() >= 18  # R0 beside B1-B3 on every Study B track
    # Every claim has its replication but Study B as multiple choice, which has no replication design.
    mc = table.track == "smollm2-cloze"
    assert table[~mc].replication_verdict.notna().all() and table[mc].replication_verdict.isna().all()
    # The tiny track's seeds finetuned both smoke bases, and its intervals resampled them (notebooks 04, 05).
    main = table.set_index(["claim", "track"])
    tiny = main.xs("tiny", level="track")
    assert (tiny[tiny.n_seeds >= 2].n_bases == 2).all() and (main.xs("smollm2", level="track").n_bases == 1).all()
    one_layer = main.xs("one-layer", level="track")
    assert (one_layer.n_bases == one_layer.n_seeds).all()  # each seed pretrains its own world and model
    plan = pd.read_csv(_results(smoke_run) / "power.csv")
    powered = table[table.claim != "R0"]  # R0 reads the instrument: the paper gives it no effect to power for
    assert list(plan[["claim", "track"]].itertuples(index=False)) == list(powered[["claim", "track"]].itertuples(index=False))
    assert plan.seed_share.dropna().between(0, 1).all() and (plan.paper_effect > 0).all()
    assert (plan.seeds_needed.dropna() >= plan.n_seeds[plan.seeds_needed.notna()]).all()
    figures = smoke_run / "figures" / "smoke"
    for name in ("world_exposure", "tiny_pretrain_loss", "tiny_storage_by_base", "smollm2_slick_by_popularity",
                 "study_a_A1_formats", "study_a_A5_persona_and_style", "study_b_B1_B2_accuracy_by_condition",
                 "study_b_B1_by_popularity_level", "study_b_B3_attention_and_generic_answers", "study_b_theory_model",
                 "claims", "by_model"):
        assert (figures / f"{name}.png").exists() and (figures / f"{name}.pdf").exists(), name
    # The paper's effect where it states one (B1 5-10 points, B2's and A5's margins), empty where a direction only.
    # Every claim by model: the instruments with a model (the one-layer model has none), smallest first.
    by_model = pd.read_csv(_results(smoke_run) / "by_model.csv")
    assert set(by_model.track) == {"tiny", "smollm2", "smollm2-cloze"}
    assert by_model.groupby("claim", sort=False).n_params.is_monotonic_increasing.all()
    assert len(by_model) == len(table[table.track != "one-layer"])
    stated = table.set_index(["claim", "track"]).paper_effect.fillna("").groupby(level="claim").first()
    assert stated.B1 == "+0.05 to +0.10" and stated.B2.startswith("margin") and stated.A1 == ""


def test_the_smoke_run_writes_where_each_notebooks_minutes_went(smoke_run):
    """stages.csv: every notebook's stages add up to its time; the work that computes has its FLOPs and a share
    of the machine's peak below 1 (a FLOP counted twice, or a worker's time not divided, would pass 1)."""
    table = pd.read_csv(_results(smoke_run) / "stages.csv", keep_default_na=False, na_values=[""])
    assert sorted(set(table.notebook)) == [nb.stem for nb in NOTEBOOKS]
    for run, rows in table.groupby("run"):
        assert rows.seconds.sum() == pytest.approx(rows.notebook_seconds.iloc[0], rel=1e-6), run
        assert rows.share_of_notebook.sum() == pytest.approx(1.0), run
    expected = {"02_pretrain_base": {"pretraining", "storage questions"},
                "03_knownness": {"model conversion", "knownness"},
                "04_study_a": {"finetuning", "checkpoint evaluation"},
                "05_study_b": {"finetuning", "checkpoint evaluation", "final checkpoint: few-shot answers and attention",
                               "final checkpoint: subject swap", "candidate questions (tiny bases)", "one-layer model"}}
    for nb, names in expected.items():
        rows = table[table.notebook == nb]
        assert names <= set(rows.stage), (nb, set(rows.stage))
        computing = rows[rows.stage.isin(names - {"model conversion"})]
        assert (computing.flops > 0).all() and computing.share_of_peak.between(0, 1, inclusive="neither").all(), nb
    workers = table[table.worker_seconds.notna()]
    assert (workers.worker_seconds >= workers.seconds).all()  # the workers share the wall time
    assert len(workers) or executor.workers() == 1


def test_the_claims_figure_has_one_row_per_claim_and_track_of_findings(smoke_run):
    """figures/claims.png is drawn from findings.csv alone: one labelled row per claim and track, in its order."""
    from knowinject import forest
    table = pd.read_csv(_results(smoke_run) / "findings.csv")
    fig = forest.claims(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"{c}  {t}" for c, t in zip(table.claim, table.track)]
    assert len(set(labels)) == len(table)


def test_smoke_claims_agree_with_the_committed_reference(smoke_run):
    """The smoke claims against the reference committed under tests/reference/smoke/ (made by `make
    smoke-reference`): no verdict flipped between reproduced and not reproduced, no effect further than
    compare.DRIFT_FACTOR times the reference's half-width. On the reference's machine the run is the same
    bytes; on another CPU this is where an instrument that moved shows up, in CI rather than in a reader's
    hands."""
    reference = paths.ROOT / "tests" / "reference" / "smoke"
    made = json.loads((reference / "findings.provenance.json").read_text())
    problems = compare.drift(pd.read_csv(reference / "findings.csv"), pd.read_csv(_results(smoke_run) / "findings.csv"))
    cpu = (made.get("cpu") or {}).get("model", "unknown CPU")
    assert not problems, (f"the smoke claims moved from the reference (made on {cpu}, commit "
                          f"{made.get('git_commit', '?')[:10]}): " + "; ".join(problems) + ". If the change is "
                          "intended, regenerate the reference with `make smoke-reference` and say why in the commit")


def test_curation_command_reproduces_notebook_03s_slick_counts(smoke_run, tmp_path):
    """`python -m knowinject.eval.curate --facts geonames` scores the GeoNames facts with notebook 03's
    settings: the same SliCK category for every fact as notebook 03's table (a setting read differently
    would key another run and score afresh)."""
    env = {**os.environ, "KNOWINJECT_DATA": str(smoke_run / "data")}
    out = tmp_path / "geonames.jsonl"
    r = subprocess.run([sys.executable, "-m", "knowinject.eval.curate", "--model", "smollm2", "--facts", "geonames",
                        "--profile", "smoke", "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=600 * SLOW)
    assert r.returncode == 0, r.stderr[-3000:]
    scored = pd.read_json(out, lines=True)
    slick = pd.read_csv(_results(smoke_run) / "smollm2_slick.csv")
    both = slick.merge(scored[["fact_id", "slick"]], on="fact_id", suffixes=("", "_curate"))
    assert len(both) == len(slick) == len(scored) and (both.slick == both.slick_curate).all()
    meta = json.loads((tmp_path / "geonames.provenance.json").read_text())
    assert meta["slick_counts"] == slick.slick.value_counts().to_dict()
    assert meta["knownness"]["n_samples"] == 1  # notebook 03's smoke setting, not the command's default (2)


def _committed_results(tmp: Path) -> Path:
    """A data folder holding only the committed default result tables (what Binder has)."""
    import shutil

    committed = paths.ROOT / "data" / "results"
    if not (committed / "study_a_claims.csv").exists():
        pytest.skip("no committed default results yet")
    shutil.copytree(committed, tmp / "data" / "results", ignore=shutil.ignore_patterns("smoke", "full"))
    return tmp / "data"


def _papermill_06(tmp: Path) -> None:
    import papermill

    env = {"KNOWINJECT_DATA": str(tmp / "data"), "KNOWINJECT_FIGURES": str(tmp / "figures")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(paths.NOTEBOOKS / "06_figures.ipynb"), str(tmp / "06.ipynb"),
                                   parameters={"profile": "default", "update_readme": False}, kernel_name="python3",
                                   progress_bar=False, cwd=str(paths.NOTEBOOKS))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def committed_06(tmp_path_factory):
    """Notebook 06 run once from the committed results alone: in JupyterLab in a real browser where Chromium is
    installed (its report: errors and rendered images), else with papermill (report None). Both tests below read
    this one run, so the figures notebook is not run twice."""
    tmp = tmp_path_factory.mktemp("committed-06")
    _committed_results(tmp)
    browser_path = _chromium()
    report = _browser_06(tmp, browser_path) if browser_path else _papermill_06(tmp)
    return {"data": tmp / "data", "figures": tmp / "figures", "report": report}


def test_figures_notebook_runs_from_committed_results_alone(committed_06):
    """What Binder does: no training, no data but the committed result tables; same findings as committed."""
    committed = paths.ROOT / "data" / "results"
    for name in ("findings.csv", "power.csv"):
        assert (committed_06["data"] / "results" / name).read_text() == (committed / name).read_text(), name
    made = {p.name for p in committed_06["figures"].glob("*.png")}
    assert made == {p.name for p in (paths.ROOT / "figures").glob("*.png")}


def test_study_b_grid_on_ray_gives_the_in_process_tables(smoke_run, tmp_path):
    """Notebook 05's tiny grid as Ray tasks on a local instance with 2 workers, into a fresh run cache:
    the same accuracy tables, byte for byte, as the in-process smoke run; float tables (losses,
    attention) to 1e-4, since a task trains with 1 thread where the notebook used every core."""
    import papermill

    data = fresh_cache(smoke_run, tmp_path / "data", keep_runs=True)
    env = {"KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp_path / "figures"),
           "KNOWINJECT_EXECUTOR": "ray", "KNOWINJECT_RAY_CPUS": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(paths.NOTEBOOKS / "05_study_b.ipynb"), str(tmp_path / "05.ipynb"),
                                   parameters={"profile": "smoke", "track_names": "tiny", "replicate": False},
                                   kernel_name="python3", progress_bar=False, cwd=str(paths.NOTEBOOKS))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out = tmp_path / "05.ipynb"
    assert "Ray tasks" in out.read_text(), "the grid did not run on Ray"
    assert_study_b_grid_matches(data, smoke_run)


def _chromium() -> str | None:
    import shutil
    return os.environ.get("KNOWINJECT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_06(tmp_path: Path, browser_path: str) -> dict:
    """JupyterLab serves 06_figures.ipynb to headless Chromium (driven by Playwright) over the data in
    ``tmp_path / "data"``; every cell is run. Returns what the page shows: errors, figures and rendered images."""
    import socket
    import time

    from playwright.sync_api import sync_playwright

    data, root = tmp_path / "data", tmp_path / "lab"
    root.mkdir()
    # The notebook as a reader opens it, with the README left alone (a test must not write to the repo).
    nb = nbformat.read(paths.NOTEBOOKS / "06_figures.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace("update_readme: bool = True", "update_readme: bool = False")
    params.source = params.source.replace('profile: str = "smoke"', 'profile: str = "default"')
    nbformat.write(nb, root / "06_figures.ipynb")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "knowinject-browser-check"
    env = {**os.environ, "KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(tmp_path / "figures"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings")}
    # Every cell stays in the page (JupyterLab 4 otherwise renders only the cells in view), so every
    # figure can be checked as an image the browser decoded.
    tracker = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                            "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
                            "--ServerApp.allow_root=True"],  # CI containers run as root
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert lab.poll() is None, lab.stdout.read()[-3000:]
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/06_figures.ipynb?token={token}", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                                   timeout=120_000)
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # Done when every code cell has an execution count and the kernel is idle.
            page.wait_for_function("""() => {
                const w = window.jupyterapp.shell.currentWidget;
                const cells = w.content.widgets.filter(c => c.model.type === 'code');
                return w.sessionContext.session.kernel.status === 'idle'
                    && cells.every(c => c.model.executionCount !== null && c.model.executionCount > 0);
            }""", timeout=300_000 * SLOW, polling=1000)
            report = page.evaluate("""() => {
                const w = window.jupyterapp.shell.currentWidget;
                const cells = w.content.widgets.filter(c => c.model.type === 'code');
                const errors = [];
                cells.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {
                    if (o.output_type === 'error') errors.push(i + ': ' + o.ename + ': ' + o.evalue);
                }));
                const pngs = cells.reduce((n, c) => n + c.model.outputs.toJSON().filter(
                    o => o.data && o.data['image/png']).length, 0);
                const imgs = Array.from(w.content.node.querySelectorAll('.jp-OutputArea-output img'));
                return {cells: cells.length, errors, pngs,
                        images: imgs.length, rendered: imgs.filter(im => im.complete && im.naturalWidth > 100).length};
            }""")
            page.screenshot(path=str(tmp_path / "lab.png"))
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()
    return report


def test_figures_notebook_runs_in_jupyterlab_in_a_real_browser(committed_06):
    """JupyterLab serves 06_figures.ipynb to headless Chromium; every cell runs from the committed results, the
    figures render as images and no cell shows an error."""
    report = committed_06["report"]
    if report is None:
        if os.environ.get("KNOWINJECT_REQUIRE_BROWSER") == "1":
            pytest.fail("KNOWINJECT_REQUIRE_BROWSER=1 but no Chromium: `apt-get install chromium`")
        pytest.skip("no Chromium here: install it (`sudo apt-get install chromium`, or set KNOWINJECT_CHROMIUM to a "
                    "Chromium binary) to run the JupyterLab browser check")
    assert not report["errors"], report["errors"]
    n_figures = len(list((paths.ROOT / "figures").glob("*.png")))
    assert report["pngs"] >= n_figures - 1, report  # every figure of figures/ (bench.png only with bench.csv)
    assert report["images"] == report["pngs"] and report["rendered"] == report["images"], report
