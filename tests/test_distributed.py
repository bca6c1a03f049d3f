"""Multi-process training: ``accelerate launch`` on 2 CPU processes (DDP over gloo) gives the loss
curve of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from knowinject.train import models

from .conftest import SLOW


@pytest.fixture(scope="module")
def setup(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    tok = small_world.tokenizer()
    model = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=1), tok)
    models.save(model, tok, tmp / "model")
    qa = small_world.table("qa")
    qa = qa[qa.template_split == "train"].head(37)  # 37 rows: the last batch of 8 is uneven (5 rows)
    pd.DataFrame({"prompt": qa.question, "completion": " " + qa.answer + "\n"}).to_json(
        tmp / "train.jsonl", orient="records", lines=True)
    return tmp


def _run(setup, out, processes):
    args = ["-m", "knowinject.train.launch", "--model", str(setup / "model"), "--examples", str(setup / "train.jsonl"),
            "--out", str(setup / out), "--method", "full", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
            "--precision", "fp32", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        # --multi_gpu with ACCELERATE_USE_CPU: accelerate's MULTI_CPU mode, DDP over gloo on this machine.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
        env["ACCELERATE_USE_CPU"] = "true"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600 * SLOW)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    return summary, pd.read_csv(setup / out / "loss_log.csv")


def test_two_process_ddp_matches_one_process(setup):
    one, log1 = _run(setup, "single", 1)
    two, log2 = _run(setup, "ddp", 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["local_rows"] == 2 * 37 and two["local_rows"] == 2 * 19  # process 0 ran its half of every batch
    assert list(log1.step) == list(log2.step) == list(range(1, 11))  # 2 epochs x 5 batches, every step logged
    rel = ((log2.loss - log1.loss).abs() / log1.loss).max()
    assert rel < 1e-4, f"DDP loss curve differs from one process by {rel:.2e}"
    for a, b in zip(one["epoch_loss"], two["epoch_loss"]):
        assert abs(a - b) / a < 1e-4
    assert one["epoch_loss"][1] < one["epoch_loss"][0]  # it trained


def test_cli_says_what_is_wrong(setup):
    r = subprocess.run([sys.executable, "-m", "knowinject.train.launch", "--model", str(setup / "model"),
                        "--examples", str(setup / "nowhere.jsonl")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr
