"""The stage table: FLOPs counted by make bench's rule, a stage's own seconds, and a notebook's wall time
divided among the stages of its kernel and its workers."""

import math
import time

import pytest
import torch

from knowinject.core import hardware, stages

from knowinject.train import models

from knowinject.bench import machine


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "stages.jsonl"
    monkeypatch.setenv(stages.ENV, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(small_world):
    tok = small_world.tokenizer()
    tok.padding_side = "left"
    return models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=1), tok), tok


def _batch(vocab: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: not counted
    return ids, mask


def test_forward_and_training_flops_follow_the_bench_rule(tiny, log):
    model, tok = tiny
    ids, mask = _batch(len(tok))
    body, head = machine.param_split(model)
    real, projected = int(mask.sum()), ids.numel()  # the model's own forward projects every position
    with stages.stage("forward"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    with stages.stage("full training"):
        model.train()
        model(input_ids=ids, attention_mask=mask).logits.float().sum().backward()
        model.eval()
    fwd, full = stages.read(log)
    assert fwd["flops"] == 2 * body * real + 2 * head * projected
    assert full["flops"] == 6 * body * real + 6 * head * projected
    assert fwd["precision"] == full["precision"] == "fp32"


def test_lora_training_counts_four_flops_per_parameter_and_token(tiny, log):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    ids, mask = _batch(len(tok))
    body, head = machine.param_split(model)
    lora = get_peft_model(models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64,
                                                                   seed=1), tok),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with stages.stage("lora training"):
        lora(input_ids=ids, attention_mask=mask).logits.float().sum().backward()
    (row,) = stages.read(log)
    assert row["flops"] == 4 * body * int(mask.sum()) + 4 * head * ids.numel()


def test_a_stage_counts_its_own_seconds_and_flops_not_those_of_a_stage_inside_it(tiny, log):
    model, tok = tiny
    ids, mask = _batch(len(tok))
    start = time.time()
    with stages.stage("outer"):
        time.sleep(0.05)
        with stages.stage("inner"), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            time.sleep(0.1)
    wall = time.time() - start
    inner, outer = stages.read(log)
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["flops"] > 0 and outer["flops"] == 0
    assert inner["seconds"] >= 0.1 and 0.05 <= outer["seconds"] < 0.1
    assert math.isclose(inner["seconds"] + outer["seconds"], wall, abs_tol=0.01)


def test_without_a_log_a_stage_records_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv(stages.ENV, raising=False)
    model, tok = tiny
    ids, mask = _batch(len(tok))
    with stages.stage("not measured"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert not stages._stack and not list(tmp_path.iterdir())


def _row(name, start, end, seconds=None, worker=False, flops=0.0, precision="", **extra):
    return {"name": name, "pid": 2 if worker else 1, "worker": worker, "start": start, "end": end,
            "seconds": end - start if seconds is None else seconds, "flops": flops, "precision": precision, **extra}


def test_the_wait_for_two_workers_is_divided_among_their_stages_and_the_rest_closes_the_sum():
    rows = [_row("knownness", 0, 10, flops=5e11, precision="bf16"),
            _row("finetuning", 12, 40, worker=True, flops=2e12, precision="bf16"),
            _row("finetuning", 13, 38, worker=True, flops=2e12, precision="bf16"),
            _row("checkpoint evaluation", 40, 44, worker=True, flops=1e11, precision="bf16"),
            _row(stages.WORKERS, 11, 45, workers=2)]
    df = stages.table(rows, notebook_seconds=50.0, peaks={"bf16": 1e11, "fp32": 2.5e10}).set_index("stage")
    assert df.loc["finetuning", "seconds"] == pytest.approx((28 + 25) / 2)
    assert df.loc["finetuning", "worker_seconds"] == pytest.approx(53)
    assert df.loc["checkpoint evaluation", "seconds"] == pytest.approx(2)
    assert df.loc[f"{stages.WORKERS}: idle", "seconds"] == pytest.approx(34 - 57 / 2)  # one worker done early
    assert df.loc[stages.REST, "seconds"] == pytest.approx(50 - 10 - 34)
    assert df.seconds.sum() == pytest.approx(50) and df.share_of_notebook.sum() == pytest.approx(1)
    assert df.loc["knownness", "share_of_peak"] == pytest.approx(5e11 / (10 * 1e11))
    assert df.loc["finetuning", "share_of_peak"] == pytest.approx(4e12 / (26.5 * 1e11))
    assert math.isnan(df.loc[stages.REST, "share_of_peak"])


def test_the_pipeline_replaces_a_notebooks_rows_and_keeps_the_others(tmp_path, monkeypatch):
    from knowinject.core import paths

    from knowinject import pipeline

    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    monkeypatch.setattr(hardware, "peaks", lambda: {"bf16": 1e11, "fp32": 2.5e10})
    nb = paths.NOTEBOOKS / "03_knownness.ipynb"
    pipeline.record_stages(nb, "default", {}, [_row("knownness", 0, 8, flops=1e11, precision="bf16")], 10.0)
    pipeline.record_stages(nb, "default", {"model_name": "gemma3"}, [_row("knownness", 0, 9)], 10.0)
    path = pipeline.record_stages(nb, "default", {}, [_row("knownness", 0, 6, flops=1e11, precision="bf16")], 7.0)
    import pandas as pd
    df = pd.read_csv(path)
    assert sorted(set(df.run)) == ["03_knownness", "03_knownness model_name=gemma3"]
    mine = df[df.run == "03_knownness"].set_index("stage")
    assert mine.loc["knownness", "seconds"] == 6 and mine.seconds.sum() == pytest.approx(7)
    assert path.with_suffix(".provenance.json").exists()


def test_a_damaged_stage_table_or_peak_cache_is_replaced_not_fatal(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from knowinject.core import paths

    from knowinject import pipeline

    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "stages.csv").write_bytes(b"\xff\xfe\x00garbage\n\"unclosed")
    monkeypatch.setattr(hardware, "PEAKS", tmp_path / "peaks.json")
    (tmp_path / "peaks.json").write_text("{not json")
    monkeypatch.setattr(hardware, "matmul_peak", lambda dtype, **kw: 1e11)
    path = pipeline.record_stages(paths.NOTEBOOKS / "03_knownness.ipynb", "smoke", {},
                                  [_row("knownness", 0, 8, flops=1e11, precision="bf16")], 10.0)
    assert "written anew" in capsys.readouterr().err
    assert list(pd.read_csv(path).stage) == ["knownness", stages.REST]
    assert hardware.peaks() == {"bf16": 1e11, "fp32": 1e11}  # measured again, and cached


def test_a_run_on_ones_own_model_or_facts_writes_its_stages_beside_its_results(tmp_path, monkeypatch):
    from knowinject.core import paths

    from knowinject import pipeline

    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    assert pipeline.stages_table("default", {}) == tmp_path / "stages.csv"
    assert pipeline.stages_table("default", {"model_name": "gemma3", "track_names": "smollm2"}) == tmp_path / "stages.csv"
    assert pipeline.stages_table("smoke", {"model_name": "/x/My-Llama"}) == tmp_path / "smoke" / "my-llama" / "stages.csv"
    assert (pipeline.stages_table("smoke", {"facts_path": "/x/popQA-test.tsv"})
            == tmp_path / "smoke" / "smollm2" / "popqa-test" / "stages.csv")
