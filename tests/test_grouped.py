"""Reference tests for concurrent LoRA training (knowinject.train.grouped): k runs trained side by side over one
frozen base give the losses and adapters of the same k runs trained alone with finetune(), and their
checkpoints evaluated in one routed pass give what each adapter gives alone. A mutation (one row routed
to a neighbour's adapter) must fail the comparison."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokmodels
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from knowinject.core import runs

from knowinject.train import grouped, kernels
from knowinject.train.finetune import FinetuneConfig, finetune

from knowinject.eval import evaluate, mechanism

FP32 = {"rtol": 1e-5, "atol": 1e-5}
# bf16: the base's matmuls over 2-4 runs' rows at once take other kernel paths than over one run's rows,
# so per-row results may round differently (on SmolLM2 a prompt's log-probability moves by up to ~0.02
# nats between a batch of 1 and a batch of 8 identical rows); the runs must still agree to bf16 precision.
BF16 = {"loss_rtol": 2e-2, "adapter_cos": 0.99}


def _tokenizer():
    chars = ["<pad>", "<s>", "</s>"] + [chr(ord("a") + i) for i in range(26)] + [" ", "?", ":", "\n", "Q", "A"]
    tk = Tokenizer(tokmodels.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.padding_side = "left"
    return tok


TOK = _tokenizer()


def _base():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    return model


def _data(seed: int, n: int) -> list[dict]:
    r = random.Random(seed)
    return [{"prompt": "Q: " + "".join(r.choice("abcdefgh") for _ in range(r.randint(3, 9))) + "?\nA:",
             "completion": " " + "".join(r.choice("xyz") for _ in range(r.randint(1, 4))) + "\n"} for _ in range(n)]


def _jobs(precision: str) -> list[grouped.Job]:
    """Four runs of unequal size, length and schedule; two ask for mid-training checkpoints."""
    specs = [(0, 10, 3, (1, 3)), (1, 7, 2, ()), (2, 13, 3, (2, 3)), (3, 5, 4, ())]
    return [grouped.Job(_data(seed, n), FinetuneConfig(method="lora", epochs=e, lr=1e-2, batch_size=4,
                                                       precision=precision, lora_r=4, lora_alpha=8, seed=seed,
                                                       lora_targets=("q_proj", "v_proj", "o_proj"), log_every=1), ck)
            for seed, n, e, ck in specs]


PROBE = _data(99, 9)


def _measure(model, routes=None, copies: int = 1):
    """What the studies evaluate: log-probabilities, greedy answers, multiple-choice scores, attention."""
    prompts = [e["prompt"] for e in PROBE] * copies
    conts = [e["completion"] for e in PROBE] * copies
    lp = evaluate.continuation_logprobs(model, TOK, prompts, conts, batch_size=5, routes=routes)
    gen = evaluate.generate(model, TOK, prompts, max_new_tokens=4, batch_size=5, routes=routes)
    mc = evaluate.option_logprobs(model, TOK, prompts, [["x", "yz", "zzy"]] * len(prompts), batch_size=5, routes=routes)
    import pandas as pd
    items = pd.DataFrame({"item_id": range(len(prompts)), "prompt": prompts, "subject": [p[3:6] for p in prompts]})
    att = mechanism.attention_to_subject(model, TOK, items, routes).subject_attention.to_numpy()
    return lp, gen, np.concatenate(mc), att


def _solo(jobs, precision):
    out = {}
    for j, job in enumerate(jobs):
        want = set(job.checkpoints or (job.cfg.epochs,))

        def at_epoch(epoch, m, j=j, want=want):
            if epoch in want:
                out[(j, epoch)] = (kernels.adapter_state(m), _measure(m))

        base = _base().to(torch.bfloat16) if precision == "bf16" else _base()
        _, result = finetune(base, TOK, job.examples, job.cfg, progress=False, on_epoch_end=at_epoch)
        out[j] = result
    return out


def _grouped(jobs, slots: int):
    out = {}

    def evaluate_all(model, checkpoints):
        routes = [c.slot for c in checkpoints for _ in PROBE]
        lp, gen, mc, att = _measure(model, routes, len(checkpoints))
        n, n_mc = len(PROBE), 3 * len(PROBE)
        for i, c in enumerate(checkpoints):
            out[(c.job, c.epoch)] = (kernels.slot_state(model, c.slot),
                                     (lp[i * n:(i + 1) * n], gen[i * n:(i + 1) * n], mc[i * n_mc:(i + 1) * n_mc],
                                      att[i * n:(i + 1) * n]))

    results = grouped.train(_base(), TOK, jobs, evaluate_all, grouped.GroupConfig(slots=slots, evaluate_every=3))
    out.update(enumerate(results))
    return out


def _key(name: str) -> str:
    return name.replace("base_model.model.", "")


def _compare_fp32(solo, got, jobs):
    for j in range(len(jobs)):
        a, b = solo[j], got[j]
        assert list(a.log.step) == list(b.log.step)
        np.testing.assert_allclose(b.log.loss, a.log.loss, **FP32, err_msg=f"job {j}: loss at every step")
        np.testing.assert_allclose(b.epoch_loss, a.epoch_loss, **FP32)
    checkpoints = sorted(k for k in solo if isinstance(k, tuple))
    assert checkpoints == sorted(k for k in got if isinstance(k, tuple))
    for k in checkpoints:
        (wa, ma), (wb, mb) = solo[k], got[k]
        wa = {_key(n): v for n, v in wa.items()}
        assert set(wa) == {_key(n) for n in wb} and len(wa) == 2 * 3 * 2  # A, B x 3 targets x 2 layers
        for n, v in wb.items():
            torch.testing.assert_close(v, wa[_key(n)], **FP32, msg=f"{k}: adapter {n}")
        np.testing.assert_allclose(mb[0], ma[0], **FP32, err_msg=f"{k}: log-probabilities")
        assert mb[1] == ma[1], f"{k}: greedy answers"
        np.testing.assert_allclose(mb[2], ma[2], **FP32, err_msg=f"{k}: multiple-choice scores")
        np.testing.assert_allclose(mb[3], ma[3], **FP32, err_msg=f"{k}: attention")


@pytest.fixture(scope="module")
def solo_fp32():
    return _solo(_jobs("fp32"), "fp32")


@pytest.mark.parametrize("slots", [2, 4])
def test_concurrent_runs_equal_solo_runs_in_fp32(solo_fp32, slots):
    """Every loss, every adapter and every evaluation of every checkpoint, to 1e-5; with 2 slots the
    four runs also take turns (a finished run's slot goes to the next)."""
    jobs = _jobs("fp32")
    got = _grouped(jobs, slots)
    _compare_fp32(solo_fp32, got, jobs)
    assert got[0].group_runs > 1  # the runs did share steps


def test_concurrent_runs_agree_with_solo_runs_in_bf16():
    jobs = _jobs("bf16")
    solo, got = _solo(jobs, "bf16"), _grouped(jobs, 4)
    for j in range(len(jobs)):
        np.testing.assert_allclose(got[j].log.loss, solo[j].log.loss, rtol=BF16["loss_rtol"])
    for k in (k for k in solo if isinstance(k, tuple)):
        wa = {_key(n): v for n, v in solo[k][0].items()}
        for n, v in got[k][0].items():
            cos = torch.nn.functional.cosine_similarity(v.flatten(), wa[_key(n)].flatten(), dim=0)
            assert v.dtype == torch.float32 and cos > BF16["adapter_cos"], (k, n, float(cos))


def test_a_row_routed_to_the_wrong_adapter_fails_the_comparison(solo_fp32, monkeypatch):
    """Mutation check: the last row of every batch goes through its neighbour's adapter."""
    real = kernels.segments

    def misrouted(routes):
        routes = [int(r) for r in routes]
        if len(set(routes)) > 1:
            other = next(r for r in routes if r != routes[-1])
            routes[-1] = other
        return real(routes)

    monkeypatch.setattr(kernels, "segments", misrouted)
    jobs = _jobs("fp32")
    with pytest.raises(AssertionError):
        _compare_fp32(solo_fp32, _grouped(jobs, 4), jobs)


def test_slots_run_only_plain_lora_runs_and_say_why():
    job = _jobs("fp32")[0]
    full = grouped.Job(job.examples, FinetuneConfig(method="full", epochs=1))
    with pytest.raises(ValueError, match="grouped training is for LoRA runs"):
        grouped.train(_base(), TOK, [job, full])
    dropout = grouped.Job(job.examples, FinetuneConfig(method="lora", epochs=1, lora_dropout=0.1))
    with pytest.raises(ValueError, match="lora_dropout=0"):
        grouped.train(_base(), TOK, [dropout])
    other = grouped.Job(job.examples, FinetuneConfig(method="lora", epochs=1, lora_r=8, lora_targets=job.cfg.lora_targets))
    with pytest.raises(ValueError, match="differ from job 0"):
        grouped.train(_base(), TOK, [job, other])
    with pytest.raises(ValueError, match="checkpoints"):
        grouped.train(_base(), TOK, [grouped.Job(job.examples, job.cfg, (7,))])


def test_a_routed_layer_outside_a_routing_says_so():
    jobs = _jobs("fp32")[:1]

    def evaluate_without_routes(model, checkpoints):
        evaluate.generate(model, TOK, ["Q: abc?\nA:"], max_new_tokens=2)

    with pytest.raises(RuntimeError, match="outside kernels.routed"):
        grouped.train(_base(), TOK, jobs, evaluate_without_routes)


# --- the grids: a batch of runs side by side gives the tables of the same runs one at a time ------------------

def _grid_tables(folders):
    import pandas as pd
    out = {}
    for f in folders:
        for p in sorted(f.glob("*.jsonl")) + sorted(f.glob("loss_log.csv")):
            out[(f.name, p.name)] = pd.read_json(p, lines=True) if p.suffix == ".jsonl" else pd.read_csv(p)
    return out


def _assert_same_tables(a: dict, b: dict) -> None:
    import pandas as pd
    assert a.keys() == b.keys() and a
    for key, x in a.items():
        y = b[key]
        floats = [c for c in x.columns if x[c].dtype.kind == "f" and c != "seconds"]
        pd.testing.assert_frame_equal(x.drop(columns=floats + ["seconds"], errors="ignore"),
                                      y.drop(columns=floats + ["seconds"], errors="ignore"), obj=str(key))
        np.testing.assert_allclose(y[floats].to_numpy(float), x[floats].to_numpy(float), **FP32, err_msg=str(key))


@pytest.fixture(scope="module")
def lora_track(small_world, tmp_path_factory):
    """A small random Llama with the small world's tokenizer, as a LoRA track in fp32."""
    from knowinject.train import tracks

    from tests.conftest import small_llama
    folder = small_llama(small_world, tmp_path_factory.mktemp("lora-base") / "model", seed=5)
    return tracks.Track(name="smollm2", model=str(folder), method="lora", lr=1e-2, batch_size=4, precision="fp32",
                        lora_r=4, unseen_phrasing="heldout")


def test_a_study_a_grid_side_by_side_writes_the_tables_of_one_run_at_a_time(lora_track, small_world, tmp_path,
                                                                          monkeypatch):
    from knowinject.core import paths

    from knowinject.studies import study_a

    from tests.test_studies import CFG_A

    monkeypatch.setenv("KNOWINJECT_WORKERS", "1")
    Cell = study_a.design.Cell
    cells = ([Cell("people", "base", 4, 0)] + [Cell("people", "qa", 2, 2, seed=s) for s in (0, 1, 2)]
             + [Cell("people", "qa", 4, 1, multistep=True), Cell("style", "conv", 1, 1, style="pirate")])
    inp = study_a.design.Inputs(small_world)
    tables = {}
    for slots in (1, 3):
        monkeypatch.setattr(paths, "RUNS", tmp_path / f"runs-{slots}")
        folders = study_a.compute.run_cells(lora_track, cells, inp, CFG_A,
                                            grouped.GroupConfig(slots=slots, evaluate_every=2), progress=False)
        assert all((f / "provenance.json").exists() for f in folders)
        tables[slots] = _grid_tables(folders)
    _assert_same_tables(tables[1], tables[3])
    summaries = [json.loads((tmp_path / "runs-3" / f / "train_summary.json").read_text())
                 for f in os.listdir(tmp_path / "runs-3") if "base" not in f and f != runs.LEDGER]
    assert max(s["group_runs"] for s in summaries) > 1  # side by side, under the same cache keys


def test_a_study_b_grid_side_by_side_writes_the_tables_of_one_run_at_a_time(lora_track, small_world, tmp_path,
                                                                          monkeypatch):
    from knowinject.core import paths

    from knowinject.studies import study_b

    from tests.test_studies import CFG_B

    monkeypatch.setenv("KNOWINJECT_WORKERS", "1")
    facts = small_world.table("facts")
    cands = facts[facts.relation.isin(CFG_B.relations) & (facts.group == "known")].copy()
    cands["popularity"] = cands.exposure.astype(float)
    cands["level"] = "all"
    cands["known_score"] = np.linspace(0, 1, len(cands))
    cands["base_known"] = False
    pool, test = study_b.design.split(cands[study_b.design.COLUMNS], CFG_B)
    design = study_b.compute.make_design(lora_track, small_world, pool, test, small_world.table("qa"), CFG_B)
    tables = {}
    for slots in (1, 4):
        monkeypatch.setattr(paths, "RUNS", tmp_path / f"runs-{slots}")
        folders = study_b.compute.run_jobs(lora_track, design, study_b.design.all_jobs(CFG_B),
                                           grouped.GroupConfig(slots=slots, evaluate_every=3), progress=False)
        tables[slots] = _grid_tables(folders)
    _assert_same_tables(tables[1], tables[4])


def test_a_step_takes_the_longest_waiting_run_and_others_about_as_wide_within_the_budget():
    from types import SimpleNamespace

    def run(slot, width, rows=8, last=0):
        return SimpleNamespace(slot=slot, width=width, batch=(1, list(range(rows))), last_step=last)

    qa = [run(s, 20 + s, last=5) for s in range(4)]
    doc, waited = run(4, 300, last=5), run(5, 22, last=1)
    chosen = grouped.choose(qa + [doc, waited], max_tokens=4096)
    assert chosen == qa + [waited]  # slot order; the document waits for rows as wide as its own
    assert [r.slot for r in chosen] == sorted(r.slot for r in chosen)
    assert grouped.choose([doc, run(6, 280, last=7), run(7, 290, last=9)], max_tokens=4096) == [doc]  # 2 x 8 x 290 > budget
    lonely = run(8, 300, last=0)
    assert grouped.choose(qa + [lonely], max_tokens=4096)[0] is lonely  # the longest-waiting run always steps
