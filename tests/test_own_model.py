"""A researcher's own model: notebooks 03-06 with a local folder holding another causal LM (not
SmolLM2) file every table under that model's slug, record its identity, and leave SmolLM2's tables
untouched. The model is a small random Gemma 3 the test saves itself (no hub); ``_small_llama`` makes the
random Llama other tests use."""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest

from knowinject.core import paths

from knowinject.train import models

FOLDER_NAME = "My-Gemma3_v2"
SLUG = "my-gemma3-v2"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def _small_llama(folder, tokenizer_source, seed: int = 0):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id))
    models.save(model, tok, folder)
    return folder


def test_slug_names_folders_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    assert models.slug("smollm2") == "smollm2"
    assert models.slug("meta-llama/Llama-2-7b-hf") == "meta-llama-llama-2-7b-hf"
    assert models.slug(f"/models/{FOLDER_NAME}/") == SLUG
    assert paths.results_dir("smoke", "smollm2") == paths.results_dir("smoke")
    assert paths.results_dir("default", models.slug("org/Model")) == tmp_path / "default" / "org-model"
    assert paths.results_dir("default") == tmp_path and paths.results_dir("full", "smollm2") == tmp_path / "full"


def test_notebooks_03_to_06_file_results_under_the_model(smoke_run, tmp_path):
    """The smoke profile's data (notebooks 01-02 and SmolLM2's 03-06, the session's smoke run), then 03-06 again
    with the folder, which holds a small random **Gemma 3** (sliding-window and global attention layers, one
    key-value head, Gemma's RMSNorm, which the fused kernels leave to Hugging Face), so that every Gemma-only
    path (LoRA on its q_proj / v_proj, attention read for B3, the subject swap, generation stopped at the first
    newline) runs in ``make test``: its tables land in ``results/smoke/<slug>/`` with its architecture in the
    provenance and its rows in the findings, and SmolLM2's stay byte for byte."""
    import shutil

    from tests.conftest import fresh_cache
    from tests.test_gemma3 import small_gemma3

    data, figures = tmp_path / "data", tmp_path / "figures"
    fresh_cache(smoke_run, data, keep_runs=True)
    (data / "results").mkdir()
    shutil.copytree(smoke_run / "data" / "results" / "smoke", data / "results" / "smoke")
    smoke = data / "results" / "smoke"
    before = _digest(smoke)
    folder = small_gemma3(tmp_path / FOLDER_NAME, data / "models" / "smollm2-135m-instruct")

    import papermill
    old = {k: os.environ.get(k) for k in ("KNOWINJECT_DATA", "KNOWINJECT_FIGURES")}
    os.environ.update({"KNOWINJECT_DATA": str(data), "KNOWINJECT_FIGURES": str(figures)})
    try:
        for nb, extra in (("03_knownness", {}), ("04_study_a", {"track_names": "smollm2"}),
                          ("05_study_b", {"track_names": "smollm2"}), ("06_figures", {})):
            papermill.execute_notebook(str(paths.NOTEBOOKS / f"{nb}.ipynb"), str(tmp_path / f"{nb}.ipynb"),
                                       parameters={"profile": "smoke", "model_name": str(folder), **extra},
                                       kernel_name="python3", progress_bar=False, cwd=str(paths.NOTEBOOKS))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    assert _digest(smoke) == before, "SmolLM2's smoke tables were touched"
    own = smoke / SLUG
    for name in (f"{SLUG}_knownness.csv", "study_a_summary.csv", "study_a_claims.csv", "study_b_accuracy.csv",
                 "study_b_claims.csv", "findings.csv"):
        assert (own / name).exists(), name
    claims = pd.read_csv(own / "findings.csv")
    assert SLUG in set(claims.track) and "smollm2" not in set(claims.track)
    # Every claim by model: its rows beside ours (the profile's findings), in its own folder, never in ours.
    by_model = pd.read_csv(own / "by_model.csv")
    assert {SLUG, "smollm2", "tiny"} <= set(by_model.track) and not (smoke / "by_model.csv").read_text().count(SLUG)
    assert by_model[by_model.track == SLUG].architecture.eq("Gemma3ForCausalLM").all()
    assert set(claims[claims.track == SLUG].claim) == {"A1", "A2", "A3", "A4", "A5", "R0", "B1", "B2", "B3", "B3-swap"}
    prov = json.loads((own / "study_b_claims.provenance.json").read_text())
    ident = prov["models"][SLUG]
    assert ident["architecture"] == "Gemma3ForCausalLM" and ident["config"]["hidden_size"] == 64
    assert ident["weights_sha256"] == {"model.safetensors": hashlib.sha256(
        (folder / "model.safetensors").read_bytes()).hexdigest()}
    assert prov["run_models"][SLUG] == [models.content_key(folder)]
    mech = pd.read_csv(own / "study_b_mechanism.csv")
    attention = mech[(mech.track == SLUG) & mech.metric.str.contains("attention")]
    assert len(attention) and attention["mean"].between(0, 1).all()  # Gemma's attention weights were read
    knownness = json.loads((own / f"{SLUG}_knownness.provenance.json").read_text())
    assert knownness["model"]["slug"] == SLUG
    assert (figures / "smoke" / SLUG / "study_b_B1_B2_accuracy_by_condition.png").exists()
    assert (figures / "smoke" / SLUG / f"{SLUG}_slick_by_popularity.png").exists()  # named for the model it holds


@pytest.mark.parametrize("name", ["smollm2"])
def test_identity_of_the_default_model_hashes_its_weights(name):
    ident = models.identity(name)
    assert ident["slug"] == "smollm2" and ident["architecture"] == "LlamaForCausalLM"
    assert len(ident["weights_sha256"]) == 1 and all(len(h) == 64 for h in ident["weights_sha256"].values())
