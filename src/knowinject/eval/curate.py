"""Knownness of any fact table, and Study B's curation rule as a command: keep the facts the model knows.

``python -m knowinject.eval.curate --model M --facts F --out scored.jsonl [--keep known|unknown]``
scores every fact of ``F`` (any layout :mod:`knowinject.data.facts` reads) with the measure notebook 03
uses: zero-shot and few-shot greedy exact match, the probability of the gold answer, and the SliCK
category from ``n_sets`` exemplar sets (exemplars: other subjects of the same relation, in the table's
own wording). A fact is *known* when greedy decoding answers it with at least one exemplar set
(HighlyKnown or MaybeKnown). Multiple-choice tables (MMLU) are scored in one of two forms (``--mc-form``):
``lettered``, as their benchmark is (known when the model puts the highest probability on the correct option's
letter), or ``cloze``, OLMES's form for small base models (each option's text scored as the continuation of the
question's QA prompt; known when the correct option has the highest log-likelihood per byte, ``acc_norm``).

``--facts geonames`` scores the compendium's own 1,244 GeoNames facts through notebook 03's cached run
(its questions and exemplars come from the world's templates), so its SliCK counts are notebook 03's.

Facts are scored in chunks, each a cached run keyed by the model, the fact file's hash, the chunk and
the settings: an interrupted scoring resumes at the chunk it stopped in. A progress bar with an ETA
counts facts. ``<out>.provenance.json`` records the model's identity (weights' sha256), the fact file's
hash and the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from knowinject.core import paths, stages
from knowinject.core.config import ConfigError
from knowinject.core.provenance import provenance
from knowinject.core.runs import cached_table, write_jsonl
from knowinject.core.seeding import numpy_rng

from knowinject.data import facts as factfiles
from knowinject.data import render

from knowinject.train import models

from knowinject.eval import evaluate, knownness

CHUNK = 128  # facts per cached piece: what an interruption can cost
KNOWN = ("HighlyKnown", "MaybeKnown")


def world_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(facts, qa) in the shape :func:`knownness.measure` reads, from a QA fact table: each fact's own
    question is its test prompt, and the same questions of other subjects are the exemplars."""
    answers = [[a, *al] for a, al in zip(table.answer, table.aliases)]
    facts = pd.DataFrame({"fact_id": table.fact_id, "subject": table.subject, "relation": table.relation,
                          "kind": "fact", "value": table.answer, "aliases": answers,
                          "popularity": table.popularity, "exposure": np.nan})
    qa = pd.concat([table.assign(template_split=split, prompt=[render.qa_prompt(q) for q in table.question])
                    [["fact_id", "subject", "relation", "question", "answer", "template_split", "prompt"]]
                    for split in ("heldout", "train")], ignore_index=True)
    return facts, qa


def mc_prompt(question: str, options: list[str]) -> str:
    return question + "".join(f"\n{letter}. {o}" for letter, o in zip(factfiles.LETTERS, options)) + "\nAnswer:"


MC_FORMS = ("lettered", "cloze")


def mc_question(question: str, options: list[str], form: str) -> str:
    """A multiple-choice question's prompt in ``form``: lettered (the options listed, ``Answer:``) or cloze (the
    compendium's QA prompt; the options are scored as its continuations)."""
    return mc_prompt(question, options) if form == "lettered" else render.qa_prompt(question)


def mc_targets(options: list[str], form: str) -> list[str]:
    """What a multiple-choice answer is written as, per option: its letter (lettered) or its text (cloze)."""
    return list(factfiles.LETTERS[:len(options)]) if form == "lettered" else list(options)


def mc_answer(row, form: str) -> str:
    """A multiple-choice row's right answer as the model writes it in ``form``: its letter, or its option's text."""
    return mc_targets(row.options, form)[factfiles.LETTERS.index(row.answer_letter)]


def per_byte(scores, targets: list[str]) -> np.ndarray:
    """Each option's summed log-likelihood divided by the length in bytes of its continuation ``" {target}"``."""
    return np.asarray(scores) / [len(f" {t}".encode()) for t in targets]


def norm_choice(scores, targets: list[str]) -> int:
    """The option with the highest log-likelihood per byte (:func:`per_byte`, lm-evaluation-harness's ``acc_norm``).
    For letters, all of one length, it is the most probable letter."""
    return int(np.argmax(per_byte(scores, targets)))


def measure_mc(model, tok, chunk: pd.DataFrame, table: pd.DataFrame, cfg: knownness.KnownnessConfig,
               form: str = "lettered") -> pd.DataFrame:
    """Multiple choice: ``k_shot`` solved questions of the same relation (others than this one), then the
    question, in ``form`` (:data:`MC_FORMS`); each option's letter or text scored; known when the correct option is
    the ``acc_norm`` choice (:func:`norm_choice`; for letters, the most probable). ``gold_prob``: the correct option's
    share of the options' per-byte likelihoods, which breaks ties between known facts."""
    rng = numpy_rng(cfg.seed, "knownness-mc-shots")
    by_relation = dict(tuple(table.groupby("relation")))
    prompts = []
    for r in chunk.itertuples():
        pool = by_relation[r.relation]
        pool = pool[pool.fact_id != r.fact_id]
        shots = pool.iloc[rng.choice(len(pool), min(cfg.k_shot, len(pool)), replace=False)] if cfg.k_shot else pool[:0]
        prompts.append("".join(f"{mc_question(s.question, s.options, form)} {mc_answer(s, form)}\n\n" for s in shots.itertuples())
                       + mc_question(r.question, r.options, form))
    targets = [mc_targets(o, form) for o in chunk.options]
    gold = [factfiles.LETTERS.index(a) for a in chunk.answer_letter]
    lp = evaluate.option_logprobs(model, tok, prompts, targets, batch_size=cfg.batch_size)
    norm = [per_byte(s, ts) for s, ts in zip(lp, targets)]
    out = chunk.copy()
    out["option_probs"] = [list(np.exp(s - np.logaddexp.reduce(s))) for s in norm]
    out["gold_prob"] = [p[g] for p, g in zip(out.option_probs, gold)]
    out["known"] = [int(np.argmax(s)) == g for s, g in zip(norm, gold)]
    out["slick"] = np.where(out.known, "Known", "Unknown")
    return out


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()


def score(model_name: str, facts_path: str | Path, cfg: knownness.KnownnessConfig, facts_format: str | None = None,
          progress: bool = True, chunk: int = CHUNK, mc_form: str = "lettered") -> pd.DataFrame:
    """Every fact of the file, scored; chunks computed only where not cached (the model is loaded only then).
    ``mc_form``: a multiple-choice table's form (:data:`MC_FORMS`)."""
    import torch
    from tqdm.auto import tqdm

    from knowinject.train.finetune import resolve_precision

    if mc_form not in MC_FORMS:
        raise ConfigError(f"mc_form must be one of {', '.join(MC_FORMS)}, got {mc_form!r}")
    table = factfiles.load(facts_path, facts_format)
    mc = "options" in table
    precision = resolve_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    ident, facts_sha = models.identity(model_name), file_hash(Path(facts_path))
    base_key = {"model": models.content_key(model_name), "facts": facts_sha,
                "format": facts_format, "chunk": chunk, "knownness": {**asdict(cfg), "precision": precision},
                "measure": ("multiple-choice-v1" if mc_form == "lettered" else "multiple-choice-cloze-v1") if mc else "qa-v1"}
    loaded = {}

    def model():
        if not loaded:
            loaded["m"] = models.load(model_name, dtype=torch.bfloat16 if precision == "bf16" else None)
        return loaded["m"]

    facts_all, qa_all = (None, None) if mc else world_tables(table)
    parts = []
    with tqdm(total=len(table), desc="knownness", unit="fact", disable=not progress) as bar:
        for start in range(0, len(table), chunk):
            piece = table.iloc[start:start + chunk]

            def make(piece=piece, start=start):
                with stages.stage("knownness"):
                    m, tok = model()
                    if mc:
                        return measure_mc(m, tok, piece, table, cfg, mc_form)
                    scored = knownness.measure(m, tok, facts_all.iloc[start:start + chunk], qa_all, cfg)
                    return piece.merge(scored.drop(columns=["subject", "relation", "aliases", "popularity"]),
                                       on="fact_id")

            parts.append(cached_table(paths.RUNS, "knownness-facts", {**base_key, "start": start}, make,
                                      "knownness.jsonl", seed=cfg.seed, verbose=False))
            bar.update(len(piece))
    out = pd.concat(parts, ignore_index=True)
    if not mc:
        out["known"] = out.slick.isin(KNOWN)
    out.attrs.update(model_identity=ident, facts_sha256=facts_sha)  # for the provenance: hashed once
    return out


def score_geonames(model_name: str, profile: str = "default") -> pd.DataFrame:
    """The GeoNames facts through notebook 03's own cached measurement: the profile's world, templates and
    knownness settings (notebook 03's parameters), so the SliCK counts are notebook 03's."""
    from knowinject.core.config import build, notebook_params, stage_params

    from knowinject.data import geo, world, worldfiles

    world_cfg = build(world.WorldConfig, stage_params(profile, "world"), "world")
    w = worldfiles.build(world_cfg, build(geo.RealWorldConfig, stage_params(profile, "realworld"), "realworld"),
                         profile)
    cfg, subset = knownness.notebook_settings(notebook_params(profile, "03_knownness"), world_cfg.seed)
    out = knownness.measure_run(model_name, "realworld", w, cfg, profile, subset=subset)
    out["known"] = out.slick.isin(KNOWN)
    out.attrs["knownness"] = asdict(cfg)  # the settings it was scored with (the provenance's), not the CLI's
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knowinject.eval.curate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="smollm2, a local model folder, or a Hugging Face id")
    ap.add_argument("--facts", required=True, help="a fact file or folder (see knowinject.data.facts), or 'geonames'")
    ap.add_argument("--format", default=None, help=f"the layout, where the name does not say: {', '.join(factfiles.FORMATS)}")
    ap.add_argument("--out", required=True, help="scored facts, JSON Lines")
    ap.add_argument("--keep", choices=["known", "unknown"], help="write only these facts (Study B's advice: known)")
    ap.add_argument("--mc-form", choices=MC_FORMS, default="lettered",
                    help="a multiple-choice table's form: lettered (MMLU's), or cloze (each option's text, acc_norm)")
    ap.add_argument("--k-shot", type=int, default=3)
    ap.add_argument("--n-sets", type=int, default=2)
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="default", help="with --facts geonames: whose notebook 03 to reproduce")
    args = ap.parse_args(argv)
    try:
        cfg = knownness.KnownnessConfig(k_shot=args.k_shot, n_sets=args.n_sets, n_samples=args.n_samples, seed=args.seed)
        if args.facts == "geonames":
            # notebook 03's settings, not the options above: the point is to reproduce its table
            scored = score_geonames(args.model, args.profile)
            source = f"geonames (notebook 03's world and settings, profile {args.profile})"
        else:
            scored = score(args.model, args.facts, cfg, args.format, mc_form=args.mc_form)
            source = str(Path(args.facts).resolve())
    except (factfiles.FactTableError, models.ModelNotFound, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kept = scored if args.keep is None else scored[scored.known == (args.keep == "known")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    write_jsonl(kept.reset_index(drop=True), tmp)
    tmp.replace(out)  # whole or not at all
    counts = scored.slick.value_counts().to_dict()
    meta = {**provenance(seed=args.seed), "model": scored.attrs.get("model_identity") or models.identity(args.model),
            "facts": source, "facts_sha256": scored.attrs.get("facts_sha256"),
            "knownness": scored.attrs.get("knownness") or asdict(cfg), "n_facts": len(scored), "n_known": int(scored.known.sum()),
            "slick_counts": counts, "kept": args.keep or "all", "n_written": len(kept)}
    out.with_name(out.stem + ".provenance.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(f"{len(scored)} facts scored ({int(scored.known.sum())} known; SliCK {counts}); wrote {len(kept)} "
          f"to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
