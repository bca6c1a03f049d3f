"""Shared fixtures: a small world built once per test session in a temporary folder, and one smoke run of
every notebook that the notebook, Ctrl-C and cluster tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from knowinject.data import geo, world, worldfiles


def _time_scale() -> int:
    """How many times the suite's timeouts are stretched on this machine: 3 on a CPU without bf16, else 1.

    Why: there every ``precision: auto`` runs in fp32. On a 2-core AMD EPYC with AVX2 only, the smoke
    notebooks took 1,825 s and ran past the 1,800 s the smoke fixture allowed, and every test that shares
    that run errored. The same notebooks take about 10 minutes on the bf16 CPUs. The timeouts guard
    against a hang; they are not speed targets (``make bench`` measures speed), so a slower machine gets
    longer ones rather than failures."""
    import torch

    from knowinject.train.models import supports_bf16
    return 1 if torch.cuda.is_available() or supports_bf16() else 3


SLOW = _time_scale()  # multiply a test's long timeouts (subprocess runs of notebooks and grids) by this

SMALL_WORLD = dict(seed=3, n_people=60, n_new_people=12, n_orgs=6, n_cities=6, n_event_countries=6, n_personas=2,
                   max_exposure=20, world_exposure=5, vocab_size=600, doc_paraphrases=2)
SMALL_REAL = dict(min_country_population=50_000_000, n_cities=30)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return worldfiles.build(world.WorldConfig(**SMALL_WORLD), geo.RealWorldConfig(**SMALL_REAL), "test", root=root)


def small_llama(small_world, folder, seed: int):
    """A 2-layer random Llama with the small world's tokenizer (left padding, eager attention), saved in
    ``folder`` as a local model the tracks can load."""
    from knowinject.train import models
    tok = small_world.tokenizer()
    tok.padding_side = "left"
    model = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed), tok)
    model.config._attn_implementation = "eager"
    models.save(model, tok, folder)
    return folder


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Every notebook, in order, with the smoke profile, writing into a temporary data folder."""
    reuse = os.environ.get("KNOWINJECT_TEST_SMOKE_RUN")  # a developer's shortcut: a smoke run kept from before
    if reuse and (Path(reuse) / "data" / "results" / "smoke" / "findings.csv").exists():
        return Path(reuse)
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "KNOWINJECT_DATA": str(tmp / "data"), "KNOWINJECT_FIGURES": str(tmp / "figures")}
    r = subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "smoke"], env=env,
                       capture_output=True, text=True, timeout=1800 * SLOW)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp


def results_of(tmp: Path) -> Path:
    return tmp / "data" / "results" / "smoke"


def is_grid_run(name: str) -> bool:
    """A run of notebook 05's Study B grids (a base evaluation or a finetuned condition)."""
    return name.startswith("study-b-") and "-candidates-" not in name


def fresh_cache(smoke_run: Path, data: Path, keep_runs: bool = False) -> Path:
    """A data folder with the smoke run's world and pretrained tiny model and none of its Study B grid runs;
    with ``keep_runs``, every other run too (knownness, candidates: notebook 05 then reaches its grids in
    seconds). The ledger starts empty."""
    import shutil
    for sub in ("worlds", "models"):
        shutil.copytree(smoke_run / "data" / sub, data / sub)
    (data / "runs").mkdir(parents=True, exist_ok=True)
    if keep_runs:
        for run in (smoke_run / "data" / "runs").iterdir():
            if run.is_dir() and not is_grid_run(run.name):
                shutil.copytree(run, data / "runs" / run.name)
    for ledger in data.rglob("ledger.jsonl"):
        ledger.unlink()
    return data


def assert_study_b_grid_matches(data: Path, smoke_run: Path, track: str = "tiny", one_design: bool = True) -> None:
    """Notebook 05's tables for ``track`` computed into ``data`` equal the in-process smoke run's:
    accuracy tables byte for byte, float tables (losses, attention) to 1e-4 (a task trains with one
    thread where a notebook may use every core); and, for a grid of the main design alone
    (``one_design``), the cache holds its base and conditions and nothing else."""
    from knowinject.core.config import build, stage_params

    from knowinject.studies import study_b
    cfg = build(study_b.design.StudyBConfig, stage_params("smoke", f"study_b_{track}"), f"study_b_{track}")
    grid = [f for f in (data / "runs").glob(f"study-b-{track}-*") if "-candidates-" not in f.name and f.is_dir()]
    if one_design:
        # one base-evaluation run per pretrained base the seeds finetune (seed s on base s mod K), then the
        # conditions; the tiny track spreads its seeds over the tiny_bases stage's bases, the others have one
        from knowinject.train.tracks import seeds_by_base
        bases = seeds_by_base(cfg.seeds, stage_params("smoke", "tiny_bases")["seeds"] if track == "tiny" else [0])
        assert len(grid) == len(bases) + len(cfg.seeds) * len(cfg.conditions)
    other, local = data / "results" / "smoke", results_of(smoke_run)
    for name in ("study_b_accuracy.csv", "study_b_by_level.csv"):
        a, b = (pd.read_csv(d / name) for d in (local, other))
        a, b = (x[x.track == track].reset_index(drop=True) for x in (a, b))
        assert b.to_csv(index=False) == a.to_csv(index=False), name
    for name in ("study_b_fit.csv", "study_b_mechanism.csv"):
        a, b = (pd.read_csv(d / name) for d in (local, other))
        a, b = (x[x.track == track].reset_index(drop=True) for x in (a, b))
        num = [c for c in a.columns if a[c].dtype.kind == "f" and c not in ("seconds", "tokens_per_s")]
        assert b.drop(columns=num + ["seconds", "tokens_per_s"], errors="ignore").equals(
            a.drop(columns=num + ["seconds", "tokens_per_s"], errors="ignore")), name
        np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-4, atol=1e-6)
