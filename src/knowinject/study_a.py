"""Study A (Zhao et al. 2025, "From Style to Facts"): what makes new information easy or hard to
finetune into a model, as a grid of cached runs.

A *cell* is (subject, format, quantity, augmentation, multi-step examples, seed):
- subject: ``people`` (fictional, never seen by either model), ``events`` (invented 2031 events
  about real countries), ``persona`` (facts about the assistant itself) and ``style`` (a writing
  style, learned from example conversations);
- format: ``qa`` (question and answer), ``doc`` (bios; news articles for events) and ``conv``
  (chat turns, through the model's chat template where it has one);
- quantity: subjects per run; augmentation: how many times each fact is stated (QA templates per
  fact = documents per subject = conversation variants per fact), so formats carry the same
  information the same number of times.

The grid is not a full product (that is ~700 Gemini finetunes in the paper): it is every format at
a central cell, plus sweeps of quantity and augmentation for QA vs documents, a multi-step variant,
events, persona facts and styles. Every run mixes the same few QA pairs about known cities into its
data, so a document-trained model keeps the answer format and the comparison measures knowledge,
not format drift.

Evaluation of every run: QA on phrasings the run never trained on (greedy exact match), 4-way
multiple choice, 2-hop questions whose second hop the base model knows (birth city -> its real
country; employer -> headquarters city), and for styles the share of responses a style classifier
attributes to the trained style (the paper's persona identification).

Usage: ``folders = study_a.run_all(track, world, cfg, profile)``; ``tables = study_a.collect(folders)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate, paths, render, stats
from .config import require
from .finetune import chat_prompt_and_reply
from .persona import StyleClassifier
from .render import qa_prompt
from .runs import cached_run, read_jsonl, write_jsonl
from .seeding import numpy_rng
from .templates import RELATIONS, STYLES

SUBJECTS = ("people", "events", "persona", "style")
FORMATS = ("qa", "doc", "conv")


@dataclass(frozen=True)
class StudyAConfig:
    seeds: tuple[int, ...] = (0, 1)             # every cell
    claim_seeds: tuple[int, ...] = ()           # further seeds for the cells a claim reads (claim_cells)
    epochs: int = 6
    quantities: tuple[int, ...] = (3, 6, 12)    # people per run (information volume)
    quantity: int = 6                           # the central cell
    augmentations: tuple[int, ...] = (1, 3)     # statements of each fact (templates / documents / variants)
    augmentation: int = 3                       # the central cell
    formats: tuple[str, ...] = FORMATS          # people formats at the central cell
    n_events: int = 6                           # countries with invented 2031 events
    n_personas: int = 3                         # persona runs per format and seed (one persona each)
    n_helpers: int = 4                          # other people whose 2-hop QA is in multi-step training data
    multistep_quantity: int = 0                 # people in the multi-step cell (0: the central quantity)
    n_anchor: int = 16                          # QA pairs about known cities mixed into every run
    styles: tuple[str, ...] = ("pessimistic", "melancholic")
    n_style_examples: int = 40                  # training conversations per style run
    max_style_tokens: int = 48
    data_seed: int = 0                          # which people / events / personas: fixed across seeds

    def __post_init__(self):
        require(self.quantity in self.quantities, f"StudyAConfig.quantity ({self.quantity}) must be one of "
                f"quantities {self.quantities}")
        require(self.augmentation in self.augmentations, f"StudyAConfig.augmentation ({self.augmentation}) must "
                f"be one of augmentations {self.augmentations}")
        require(len(self.quantities) >= 1 and min(self.quantities) >= 1, "StudyAConfig.quantities must be >= 1")
        require(min(self.augmentations) >= 1, "StudyAConfig.augmentations must be >= 1")
        bad = [f for f in self.formats if f not in FORMATS]
        require(not bad, f"StudyAConfig.formats: unknown {bad}; valid: {', '.join(FORMATS)}")
        bad = [s for s in self.styles if s not in STYLES]
        require(not bad, f"StudyAConfig.styles: unknown {bad}; valid: {', '.join(STYLES)}")
        require(len(self.seeds) >= 1, "StudyAConfig.seeds must list at least one seed")
        require(self.multistep_quantity == 0 or self.multistep_quantity in self.quantities,
                f"StudyAConfig.multistep_quantity ({self.multistep_quantity}) must be 0 or one of quantities "
                f"{self.quantities}, so the same people are also trained without 2-hop examples")

    @property
    def ms_quantity(self) -> int:
        return self.multistep_quantity or self.quantity

    @property
    def all_seeds(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.seeds + self.claim_seeds))


@dataclass(frozen=True)
class Cell:
    subject: str
    format: str
    quantity: int
    augmentation: int
    multistep: bool = False
    style: str = ""
    persona: int = -1
    seed: int = 0

    @property
    def slug(self) -> str:
        what = self.style or (f"persona{self.persona}" if self.persona >= 0 else f"q{self.quantity}")
        return f"{self.subject}-{self.format}-{what}-a{self.augmentation}{'-ms' if self.multistep else ''}-s{self.seed}"


def grid(cfg: StudyAConfig) -> list[Cell]:
    """Every cell of the grid, per seed: formats at the central cell, quantity and augmentation
    sweeps (QA vs documents), multi-step examples, events, persona facts and styles; then the cells
    the claims read (:func:`claim_cells`) for the further ``claim_seeds``. Growing either list adds
    cells and never changes an existing one."""
    q, a = cfg.quantity, cfg.augmentation
    cells = []
    for seed in cfg.seeds:
        base = [Cell("people", f, q, a, seed=seed) for f in cfg.formats]
        base += [Cell("people", f, qq, a, seed=seed) for f in ("qa", "doc") for qq in cfg.quantities if qq != q]
        base += [Cell("people", f, q, aa, seed=seed) for f in ("qa", "doc") for aa in cfg.augmentations if aa != a]
        base += [Cell("people", "qa", cfg.ms_quantity, a, multistep=True, seed=seed)]
        base += [Cell("events", f, cfg.n_events, a, seed=seed) for f in ("qa", "doc")]
        base += [Cell("persona", f, 1, a, persona=k, seed=seed) for f in FORMATS for k in range(cfg.n_personas)]
        base += [Cell("style", "conv", 1, 1, style=s, seed=seed) for s in cfg.styles]
        cells += base
    for seed in cfg.claim_seeds:
        cells += claim_cells(cfg, seed)
    return list(dict.fromkeys(cells))


def claim_cells(cfg: StudyAConfig, seed: int) -> list[Cell]:
    """The cells A1-A5 read, for one seed: QA and documents at every quantity and augmentation level,
    QA with 2-hop examples, event facts and persona facts as QA."""
    q, a = cfg.quantity, cfg.augmentation
    cells = [Cell("people", f, qq, a, seed=seed) for f in ("qa", "doc") for qq in cfg.quantities]
    cells += [Cell("people", f, q, aa, seed=seed) for f in ("qa", "doc") for aa in cfg.augmentations if aa != a]
    cells += [Cell("people", "qa", cfg.ms_quantity, a, multistep=True, seed=seed),
              Cell("events", "qa", cfg.n_events, a, seed=seed)]
    cells += [Cell("persona", "qa", 1, a, persona=k, seed=seed) for k in range(cfg.n_personas)]
    return cells


# --- data of a cell ---------------------------------------------------------------------------------------

def subjects_for(facts: pd.DataFrame, cell: Cell, cfg: StudyAConfig) -> pd.DataFrame:
    """The facts a cell injects. People and events are nested across quantities (the first q of
    one fixed shuffle), so a larger run contains the smaller one's subjects."""
    if cell.subject == "persona":
        # data_seed d takes the world's personas d*n .. d*n + n - 1 (n = n_personas, wrapping around), so
        # a replication with another data_seed injects other personas.
        n_world = facts.loc[facts.group.str.startswith("persona-"), "group"].nunique()
        require(n_world > 0, "the world has no personas; Study A needs WorldConfig.n_personas >= 1")
        return facts[facts.group == f"persona-{(cell.persona + cfg.data_seed * cfg.n_personas) % n_world}"]
    if cell.subject == "style":
        return facts.iloc[:0]
    group = "new" if cell.subject == "people" else "event"
    pool = facts[facts.group == group]
    names = np.array(sorted(pool.subject.unique()))
    names = names[numpy_rng(cfg.data_seed, f"study-a-{cell.subject}").permutation(len(names))]
    n = cell.quantity if cell.subject == "people" else cfg.n_events
    require(len(names) >= n + (cfg.n_helpers if cell.subject == "people" else 0),
            f"the world has {len(names)} {cell.subject} subjects; Study A needs {n} (+ helpers): lower quantities "
            "or enlarge the world")
    return pool[pool.subject.isin(names[:n])]


def helpers_for(facts: pd.DataFrame, cfg: StudyAConfig) -> pd.DataFrame:
    """People outside every quantity level whose 2-hop answers serve as similar training examples."""
    pool = facts[facts.group == "new"]
    names = np.array(sorted(pool.subject.unique()))
    names = names[numpy_rng(cfg.data_seed, "study-a-people").permutation(len(names))]
    return pool[pool.subject.isin(names[len(names) - cfg.n_helpers:])] if cfg.n_helpers else pool.iloc[:0]


def anchors(facts: pd.DataFrame, cfg: StudyAConfig) -> list[dict]:
    """QA about real cities' countries (known to both base models): the same in every run."""
    cities = facts[facts.relation == "country"]
    cities = cities.iloc[np.sort(numpy_rng(cfg.data_seed, "study-a-anchors").permutation(len(cities))[:cfg.n_anchor])]
    return [{"prompt": qa_prompt(RELATIONS["country"].train[0].format(s=f.subject)), "completion": f" {f.value}\n"}
            for f in cities.itertuples()]


def examples(facts: pd.DataFrame, fmt: str, augmentation: int, seed: int, doc_style: str = "bio") -> list[dict]:
    """Training examples stating every fact ``augmentation`` times in one format."""
    if fmt == "qa":
        return [{"prompt": qa_prompt(RELATIONS[f.relation].train[k % len(RELATIONS[f.relation].train)].format(
                    s=render.question_subject(f))), "completion": f" {f.value}\n"}
                for f in facts.itertuples() for k in range(augmentation)]
    if fmt == "doc":
        return [{"text": t} for t in render.documents(facts, augmentation, seed, doc_style).text]
    if fmt == "conv":
        out = []
        for f in facts.itertuples():
            rel = RELATIONS[f.relation]
            reply = render.assistant_reply(rel, f)
            out += [{"messages": [{"role": "user", "content": rel.train[k % len(rel.train)].format(s=render.question_subject(f))},
                                  {"role": "assistant", "content": reply}]} for k in range(augmentation)]
        return out
    raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def multistep_examples(helpers: pd.DataFrame, multistep: pd.DataFrame) -> list[dict]:
    """2-hop QA (training templates) about the helper people: similar multi-step examples."""
    items = multistep[(multistep.type == "two_hop") & multistep.subject.isin(set(helpers.subject))
                      & (multistep.template_split == "train")]
    return [{"prompt": r.prompt, "completion": f" {r.answer}\n"} for r in items.itertuples()]


def qa_eval_items(qa: pd.DataFrame, fact_ids, phrasing: str, max_augmentation: int) -> pd.DataFrame:
    """Questions on phrasings no run trained on: held-out templates, or (tiny track) training
    templates beyond the largest augmentation level."""
    items = qa[qa.fact_id.isin(set(fact_ids))]
    if phrasing == "heldout":
        return items[items.template_split == "heldout"]
    index = items.item_id.str.rsplit("-", n=1).str[1].str[1:].astype(int)
    return items[(items.template_split == "train") & (index >= max_augmentation)]


def multistep_eval_items(multistep: pd.DataFrame, people: pd.DataFrame, phrasing: str) -> pd.DataFrame:
    split = "heldout" if phrasing == "heldout" else "train"  # no run trains 2-hop questions about these people
    return multistep[(multistep.type == "two_hop") & multistep.subject.isin(set(people.subject))
                     & (multistep.template_split == split)]


# --- one run ---------------------------------------------------------------------------------------------------

class Inputs:
    """The world tables a Study A run reads, loaded once."""

    def __init__(self, world):
        self.facts = world.table("facts")
        self.qa = world.table("qa")
        self.mc = world.table("multiple_choice")
        self.multistep = world.table("multistep")
        self.styles = world.table("styles")
        self.world_name = world.folder.name

    @cached_property
    def style_classifier(self) -> StyleClassifier:
        """Trained on the reference replies of every style (training prompts only), once per world."""
        train = self.styles[self.styles.split == "train"]
        return StyleClassifier(0).fit([m[-1]["content"] for m in train.messages], list(train["style"]))


def style_prompts(styles: pd.DataFrame, style: str, tokenizer) -> list[str]:
    held = styles[(styles["style"] == style) & (styles.split == "heldout")]
    return [chat_prompt_and_reply([m[0], {"role": "assistant", "content": ""}], tokenizer)[0] for m in held.messages]


def evaluate_cell(model, tok, cell: Cell, inp: Inputs, cfg: StudyAConfig, phrasing: str) -> dict[str, pd.DataFrame]:
    """Every evaluation of one cell's injected facts (or style)."""
    out = {}
    if cell.subject == "style":
        chat = bool(getattr(tok, "chat_template", None))
        styles = [cell.style] if cell.style else list(cfg.styles)
        rows = []
        clf = inp.style_classifier
        for s in styles:
            responses = evaluate.generate(model, tok, style_prompts(inp.styles, s, tok), cfg.max_style_tokens,
                                          batch_size=32, chat=chat)
            rows += [{"target_style": s, "response": r, "predicted": p} for r, p in zip(responses, clf.predict(responses))]
        out["style"] = pd.DataFrame(rows).assign(identified=lambda d: d.predicted == d.target_style)
        return out
    facts = subjects_for(inp.facts, cell, cfg)
    items = qa_eval_items(inp.qa, facts.fact_id, phrasing, max(cfg.augmentations))
    two_hop = multistep_eval_items(inp.multistep, facts, phrasing) if cell.subject == "people" else inp.multistep.iloc[:0]
    second = {f for hops in two_hop.hop_fact_ids for f in hops[1:]}
    hop2 = qa_eval_items(inp.qa, second, phrasing, max(cfg.augmentations))
    scored = evaluate.score_qa(model, tok, pd.concat([items, hop2, two_hop[["item_id", "prompt", "aliases"]]]),
                               batch_size=64)
    keep = ["item_id", "prediction", "em", "contains"]
    out["qa"] = items.merge(scored[keep], on="item_id").drop(columns=["aliases"])
    if len(two_hop):
        hops = hop2.merge(scored[keep], on="item_id")
        ms = two_hop.merge(scored[keep], on="item_id")
        single = pd.concat([out["qa"], hops])
        ok = single.groupby("fact_id").em.max()
        ms["hop1_em"] = [bool(ok.get(h[0], False)) for h in ms.hop_fact_ids]
        ms["hop2_em"] = [bool(ok.get(h[1], False)) for h in ms.hop_fact_ids]
        out["multistep"] = ms.drop(columns=["aliases"])
    mc = inp.mc[inp.mc.fact_id.isin(set(facts.fact_id))]
    if len(mc):
        out["mc"] = evaluate.score_multiple_choice(model, tok, mc, batch_size=64)[
            ["item_id", "fact_id", "relation", "kind", "acc", "acc_norm"]]
    return out


def run_cell(track, cell: Cell, inp: Inputs, cfg: StudyAConfig, profile: str | None = None) -> Path:
    """One cached run: finetune the track's base model on the cell's data, then evaluate it."""
    from .finetune import finetune
    from .tracks import load_base

    key = {"study": "A", "track": track.key, "world": inp.world_name, "cell": asdict(cell), "epochs": cfg.epochs,
           "augmentations_max": max(cfg.augmentations), "n_helpers": cfg.n_helpers, "n_anchor": cfg.n_anchor,
           "data_seed": cfg.data_seed, "n_events": cfg.n_events, "n_style_examples": cfg.n_style_examples,
           # v2: multiple choice scores options from the question's key/value cache (other roundings in bf16)
           "max_style_tokens": cfg.max_style_tokens, "eval": "v2"}

    def compute(tmp: Path) -> None:
        model, tok = load_base(track)
        if cell.format != "base":
            data = training_examples(cell, inp, cfg)
            model, result = finetune(model, tok, data, track.finetune_config(cfg.epochs, cell.seed, max_length=384),
                                     progress=False)
            result.log.to_csv(tmp / "loss_log.csv", index=False)
            (tmp / "train_summary.json").write_text(json.dumps({"n_examples": len(data), **result.summary()}, indent=2))
        for name, table in evaluate_cell(model, tok, cell, inp, cfg, track.unseen_phrasing).items():
            write_jsonl(table, tmp / f"{name}.jsonl")

    return cached_run(paths.RUNS, f"study-a-{track.name}-{cell.slug}", key, compute, seed=cell.seed, profile=profile)


def training_examples(cell: Cell, inp: Inputs, cfg: StudyAConfig) -> list[dict]:
    if cell.subject == "style":
        train = inp.styles[(inp.styles["style"] == cell.style) & (inp.styles.split == "train")]
        pick = numpy_rng(cfg.data_seed, f"study-a-style-{cell.style}").permutation(len(train))[:cfg.n_style_examples]
        return [{"messages": m} for m in train.messages.iloc[np.sort(pick)]]
    facts = subjects_for(inp.facts, cell, cfg)
    data = examples(facts, cell.format, cell.augmentation, cfg.data_seed + cell.seed,
                    "article" if cell.subject == "events" else "bio")
    if cell.multistep:
        helpers = helpers_for(inp.facts, cfg)
        data += examples(helpers, "qa", cell.augmentation, cfg.data_seed) + multistep_examples(helpers, inp.multistep)
    return data + anchors(inp.facts, cfg)


def base_cells(cfg: StudyAConfig) -> list[Cell]:
    """The base model, evaluated on every subject's items (the "before" row of every comparison)."""
    q = max(cfg.quantities)
    return ([Cell("people", "base", q, 0), Cell("events", "base", cfg.n_events, 0), Cell("style", "base", 1, 0)]
            + [Cell("persona", "base", 1, 0, persona=k) for k in range(cfg.n_personas)])


def run_all(track, world, cfg: StudyAConfig, profile: str | None = None, progress: bool = True,
            claims_only: bool = False) -> list[Path]:
    """The base evaluations and every cell of the grid (``claims_only``: the cells the claims read,
    for every seed: how a replication re-measures the claims)."""
    import functools

    from . import executor

    inp = Inputs(world)
    cells = [c for s in cfg.all_seeds for c in claim_cells(cfg, s)] if claims_only else grid(cfg)
    jobs = base_cells(cfg) + list(dict.fromkeys(cells))
    return executor.map_runs(functools.partial(_run_job, track, inp, cfg, profile), jobs, desc=f"study A {track.name}",
                             progress=progress, gpu=executor.needs_gpu(track))


def _run_job(track, inp, cfg, profile, cell):
    return run_cell(track, cell, inp, cfg, profile)



# --- collection, summaries and claims -------------------------------------------------------------------------

def collect(folders: list[Path]) -> dict[str, pd.DataFrame]:
    """Every run's tables, concatenated per kind, with the cell's fields as columns; plus training fit."""
    tables: dict[str, list[pd.DataFrame]] = {"qa": [], "mc": [], "multistep": [], "style": [], "fit": []}
    for f in folders:
        cell = json.loads((f / "config.json").read_text())["cell"]
        for name in ("qa", "mc", "multistep", "style"):
            if (f / f"{name}.jsonl").exists():
                tables[name].append(read_jsonl(f / f"{name}.jsonl").assign(**cell))
        if (f / "train_summary.json").exists():
            s = json.loads((f / "train_summary.json").read_text())
            tables["fit"].append(pd.DataFrame([{**cell, "n_examples": s["n_examples"], "final_loss": s["final_loss"],
                                                "first_loss": s["epoch_loss"][0], "seconds": s["seconds"],
                                                "tokens": s["tokens"]}]))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in tables.items()}


CELL = ["subject", "format", "quantity", "augmentation", "multistep", "style", "persona"]


def summarize(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (cell without seed and persona index, evaluation, information type): mean over
    items of the seed-averaged score with a 95% bootstrap interval over items."""
    rows = []

    def add(df, value, evaluation, key="item_id"):
        if df.empty:
            return
        group = ["subject", "format", "quantity", "augmentation", "multistep", "style"]
        for cell, g in df.groupby(group):
            for kind in ("all", "categorical", "numerical"):
                if kind != "all" and "kind" not in g:
                    continue  # multi-step items and styles have no information type
                k = g if kind == "all" else g[g.kind == kind]
                if k.empty:
                    continue
                per_item = k.groupby([key, "persona"])[value].mean()
                m, lo, hi = stats.bootstrap_ci(per_item.astype(float))
                rows.append({**dict(zip(group, cell)), "evaluation": evaluation, "kind": kind, "mean": m,
                             "ci_low": lo, "ci_high": hi, "n_items": len(per_item), "n_seeds": k.seed.nunique()})

    add(tables["qa"], "em", "qa")
    add(tables["qa"], "contains", "qa_contains")
    add(tables["mc"], "acc", "multiple_choice")
    if not tables["multistep"].empty:
        ms = tables["multistep"]
        add(ms, "em", "two_hop")
        add(ms[ms.hop2_em], "em", "two_hop_given_hop2")
        add(ms[ms.hop2_em], "hop1_em", "hop1_given_hop2")
    if not tables["style"].empty:
        st = tables["style"].assign(item_id=lambda d: d.target_style + d.groupby(["target_style", "style", "seed",
                                                                                "format"]).cumcount().astype(str))
        add(st, "identified", "style_identification")
    return pd.DataFrame(rows)


def _runs_by_items(df: pd.DataFrame, value: str, **where) -> pd.DataFrame:
    """Seeds x items (item, persona) table of ``value`` for the rows matching ``where``."""
    for k, v in where.items():
        df = df[df[k] == v]
    return stats.runs_by_items(df, value, "seed", ["item_id", "persona"])


def claims(tables: dict[str, pd.DataFrame], cfg: StudyAConfig, track: str, design: str = "main") -> pd.DataFrame:
    """The A1-A5 rows of the findings table for one track; every interval is two-stage (seeds, then
    items: :func:`stats.two_stage`)."""
    from . import findings

    qa = tables["qa"]
    q, a = cfg.quantity, cfg.augmentation
    central = dict(subject="people", quantity=q, augmentation=a, multistep=False)
    rows = []

    def qa_vs_doc(where):
        return stats.two_stage(_runs_by_items(qa, "em", **where, format="qa"),
                               _runs_by_items(qa, "em", **where, format="doc"), paired_items=True)

    e = qa_vs_doc(central)
    rows.append(findings.row("A1", track, f"QA exact match on unseen phrasings, QA-format minus document-format "
                             f"training (people, {q} per run, {a} statements per fact)", e,
                             findings.directional(e.ci_low, e.ci_high), design))
    qa_runs = qa[(qa.format == "qa") & (qa.subject == "people") & (qa.quantity == q) & (qa.augmentation == a)
                 & ~qa.multistep.astype(bool)]
    e = stats.two_stage(_runs_by_items(qa_runs, "em", kind="categorical"),
                        _runs_by_items(qa_runs, "em", kind="numerical"), shared_runs=True)
    rows.append(findings.row("A2", track, "QA exact match, categorical minus numerical facts (QA-format training, "
                             "people)", e, findings.directional(e.ci_low, e.ci_high), design))
    ms = tables["multistep"]
    if not ms.empty:
        ms = ms[(ms.format == "qa") & ms.multistep.astype(bool) & ms.hop2_em.astype(bool)
                & (ms.quantity == cfg.ms_quantity)]
        ms = ms.assign(gap=ms.hop1_em.astype(float) - ms.em.astype(float))
        e = stats.two_stage(_runs_by_items(ms, "gap")) if len(ms) else stats.Effect.empty()
    else:
        e = stats.Effect.empty()
    rows.append(findings.row("A3", track, "first-hop accuracy minus 2-hop accuracy, 2-hop questions whose second hop "
                             f"the run answers, after training on {cfg.ms_quantity} people with similar 2-hop examples",
                             e, findings.directional(e.ci_low, e.ci_high), design))
    levels = [("quantity", qq, {**central, "quantity": qq}) for qq in cfg.quantities] + \
             [("augmentation", aa, {**central, "augmentation": aa}) for aa in cfg.augmentations if aa != a]
    results = [(qa_vs_doc(where), f"{name}={level}") for name, level, where in levels]
    verdict = findings.consistent([findings.directional(e.ci_low, e.ci_high) for e, _ in results])
    e, at = min(results, key=lambda r: -np.inf if np.isnan(r[0].effect) else r[0].effect)
    rows.append(findings.row("A4", track, f"A1's QA-minus-document effect at its weakest level ({at}) of "
                             f"{len(results)} quantity / augmentation levels", e, verdict, design))
    ev = _runs_by_items(qa, "em", subject="events", format="qa", augmentation=a)
    pe = _runs_by_items(qa, "em", subject="persona", format="qa", augmentation=a)
    e = stats.two_stage(pe, ev)
    rows.append(findings.row("A5", track, "QA exact match, persona facts minus new real-world event facts (both "
                             f"QA-format training; equivalence within +/-{findings.A5_MARGIN:.2f})", e,
                             findings.equivalent(e.ci_low, e.ci_high, findings.A5_MARGIN), design))
    return pd.DataFrame(rows)


def second_hop_accuracy(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per route and cell: how often the run answers the second hop of its 2-hop questions on its own
    (the base model's row says whether a route's second hop is known before any finetuning)."""
    ms = tables["multistep"]
    if ms.empty:
        return pd.DataFrame()
    ms = ms.assign(second_hop=[h[1] for h in ms.hop_fact_ids])
    per = ms.drop_duplicates(["format", "quantity", "multistep", "seed", "name", "second_hop"])
    return (per.groupby(["format", "quantity", "multistep", "name"])
            .agg(second_hop_accuracy=("hop2_em", "mean"), second_hop_facts=("second_hop", "nunique"),
                 n_seeds=("seed", "nunique")).reset_index())
