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

import functools
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate, grouped, paths, render, runs, stats
from .config import require
from .finetune import chat_prompt_and_reply
from .persona import StyleClassifier
from .render import qa_prompt
from .runs import read_jsonl, write_jsonl
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
        self.world, self.world_name = world, world.folder.name

    @cached_property
    def style_classifier(self) -> StyleClassifier:
        """Trained on the reference replies of every style (training prompts only), once per world."""
        train = self.styles[self.styles.split == "train"]
        return StyleClassifier(0).fit([m[-1]["content"] for m in train.messages], list(train["style"]))


def style_prompts(styles: pd.DataFrame, style: str, tokenizer) -> list[str]:
    held = styles[(styles["style"] == style) & (styles.split == "heldout")]
    return [chat_prompt_and_reply([m[0], {"role": "assistant", "content": ""}], tokenizer)[0] for m in held.messages]


def evaluate_cells(model, tok, members: list[tuple[Cell, int | None]], inp: Inputs, cfg: StudyAConfig,
                   phrasing: str) -> list[dict[str, pd.DataFrame]]:
    """Every evaluation of each member's injected facts (or style), all members in one pass over the
    model: ``members`` are (cell, adapter slot) pairs, the slot routing the member's rows through its
    adapter (:mod:`knowinject.grouped`; ``None`` for every member: the model as it is)."""
    routed = any(slot is not None for _, slot in members)
    out: list[dict[str, pd.DataFrame]] = [{} for _ in members]
    chat = bool(getattr(tok, "chat_template", None))

    # Styles: held-out prompts of each member's style(s), one generation pass, one classifier.
    style_rows = []
    for m, (cell, slot) in enumerate(members):
        if cell.subject == "style":
            for s in [cell.style] if cell.style else list(cfg.styles):
                style_rows += [(m, slot, s, p) for p in style_prompts(inp.styles, s, tok)]
    if style_rows:
        responses = evaluate.generate(model, tok, [r[3] for r in style_rows], cfg.max_style_tokens, batch_size=32,
                                      chat=chat, routes=[r[1] for r in style_rows] if routed else None)
        predicted = inp.style_classifier.predict(responses)
        table = pd.DataFrame({"member": [r[0] for r in style_rows], "target_style": [r[2] for r in style_rows],
                              "response": responses, "predicted": predicted})
        for m, g in table.groupby("member"):
            out[m]["style"] = (g.drop(columns="member").reset_index(drop=True)
                               .assign(identified=lambda d: d.predicted == d.target_style))

    # Facts: QA on unseen phrasings, second hops and 2-hop questions in one generation pass; multiple choice in one.
    parts, asked, mcs = {}, [], []
    for m, (cell, slot) in enumerate(members):
        if cell.subject == "style":
            continue
        facts = subjects_for(inp.facts, cell, cfg)
        items = qa_eval_items(inp.qa, facts.fact_id, phrasing, max(cfg.augmentations))
        two_hop = (multistep_eval_items(inp.multistep, facts, phrasing) if cell.subject == "people"
                   else inp.multistep.iloc[:0])
        second = {f for hops in two_hop.hop_fact_ids for f in hops[1:]}
        hop2 = qa_eval_items(inp.qa, second, phrasing, max(cfg.augmentations))
        parts[m] = (items, two_hop, hop2)
        asked.append(pd.concat([items, hop2, two_hop[["item_id", "prompt", "aliases"]]]).assign(_member=m, _slot=slot))
        mc = inp.mc[inp.mc.fact_id.isin(set(facts.fact_id))]
        if len(mc):
            mcs.append(mc.assign(_member=m, _slot=slot))
    if asked:
        asked = pd.concat(asked, ignore_index=True)
        scored = evaluate.score_qa(model, tok, asked, batch_size=64, routes=list(asked._slot) if routed else None)
        keep = ["item_id", "prediction", "em", "contains"]
        for m, (items, two_hop, hop2) in parts.items():
            sc = scored[scored._member == m]
            out[m]["qa"] = items.merge(sc[keep], on="item_id").drop(columns=["aliases"])
            if len(two_hop):
                hops = hop2.merge(sc[keep], on="item_id")
                ms = two_hop.merge(sc[keep], on="item_id")
                ok = pd.concat([out[m]["qa"], hops]).groupby("fact_id").em.max()
                ms["hop1_em"] = [bool(ok.get(h[0], False)) for h in ms.hop_fact_ids]
                ms["hop2_em"] = [bool(ok.get(h[1], False)) for h in ms.hop_fact_ids]
                out[m]["multistep"] = ms.drop(columns=["aliases"])
    if mcs:
        mcs = pd.concat(mcs, ignore_index=True)
        scored = evaluate.score_multiple_choice(model, tok, mcs, batch_size=64, routes=list(mcs._slot) if routed else None)
        for m, g in scored.groupby("_member"):
            out[m]["mc"] = g[["item_id", "fact_id", "relation", "kind", "acc", "acc_norm"]].reset_index(drop=True)
    return out


def evaluate_cell(model, tok, cell: Cell, inp: Inputs, cfg: StudyAConfig, phrasing: str) -> dict[str, pd.DataFrame]:
    """Every evaluation of one cell's injected facts (or style), on ``model`` as it is."""
    return evaluate_cells(model, tok, [(cell, None)], inp, cfg, phrasing)[0]


def run_key(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> dict:
    """What a run's folder is hashed from. How runs were grouped for training is not part of it: a run
    trained beside others is the run trained alone (the reference test in tests/test_grouped.py)."""
    return {"study": "A", "track": track.key, "world": inp.world_name, "cell": asdict(cell), "epochs": cfg.epochs,
            "augmentations_max": max(cfg.augmentations), "n_helpers": cfg.n_helpers, "n_anchor": cfg.n_anchor,
            "data_seed": cfg.data_seed, "n_events": cfg.n_events, "n_style_examples": cfg.n_style_examples,
            # v2: multiple choice scores options from the question's key/value cache (other roundings in bf16)
            "max_style_tokens": cfg.max_style_tokens, "eval": "v2"}


def spec(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> runs.Spec:
    return runs.Spec(f"study-a-{track.name}-{cell.slug}", run_key(track, cell, inp, cfg), cell.seed)


def run_cell(track, cell: Cell, inp: Inputs, cfg: StudyAConfig, profile: str | None = None) -> Path:
    """One cached run: finetune the track's base model on the cell's data, then evaluate it."""
    return run_cells(track, [cell], inp, cfg, profile, progress=False)[0]


def run_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, profile: str | None = None,
              progress: bool = True, grouping: grouped.GroupConfig | None = None) -> list[Path]:
    """The cached run of every cell, in order; the missing ones are computed in batches by the executor's
    workers (LoRA runs of a batch train side by side over one base, ``grouping``'s slots at a time)."""
    from . import executor

    folders, tasks = plan_cells(track, cells, inp, cfg, profile, grouping)
    if progress and len(tasks) and sum(1 for f in folders if runs.is_done(f)):
        print(f"study A {track.name}: {sum(1 for f in folders if runs.is_done(f))} of {len(folders)} runs cached")
    executor.run_tasks(tasks, desc=f"study A {track.name}", progress=progress, gpu=executor.needs_gpu(track))
    return folders


def plan_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, profile: str | None = None,
               grouping: grouped.GroupConfig | None = None) -> tuple[list[Path], list[tuple]]:
    """(the run folder of every cell, the tasks that compute the missing ones: (callable, cost) pairs)."""
    import functools

    grouping = grouping or grouped.config(profile)
    folders = [spec(track, c, inp, cfg).folder(paths.RUNS) for c in cells]
    todo = list(dict.fromkeys(c for c, f in zip(cells, folders) if not runs.is_done(f)))
    tasks = [(functools.partial(_compute_batch, track, inp.world, cfg, profile, grouping, batch), weight)
             for batch, weight in batch_cells(track, todo, inp, cfg, grouping.slots)]
    return folders, tasks


def cost(track, cell: Cell, inp: Inputs, cfg: StudyAConfig) -> float:
    """Rough seconds of a run on one core, only to start the longest tasks first: characters of training
    text times epochs, at a rate measured for each track (evaluation-only runs: a few seconds)."""
    if cell.format == "base":
        return 5.0
    per_char_epoch = 2.5e-4 if track.method == "lora" else 5e-5
    return float(sum(len(json.dumps(e)) for e in training_examples(cell, inp, cfg))) * cfg.epochs * per_char_epoch


FAMILIES = {"qa": "short rows", "doc": "long rows", "conv": "chat rows", "base": "evaluation only"}


def batch_cells(track, cells: list[Cell], inp: Inputs, cfg: StudyAConfig, slots: int) -> list[tuple[list[Cell], float]]:
    """Cells in batches for the workers (:func:`grouped.batches`), with each batch's cost: LoRA runs by
    the length of their rows (format), full finetunes (one at a time anyway) all together."""
    def family(c: Cell) -> str:
        return FAMILIES[c.format] if track.method == "lora" or c.format == "base" else "full finetunes"

    return grouped.batches(cells, family, lambda c: cost(track, c, inp, cfg), slots)


@functools.lru_cache(maxsize=4)
def _inputs(world) -> Inputs:
    return Inputs(world)


def _compute_batch(track, world, cfg: StudyAConfig, profile: str | None, grouping: grouped.GroupConfig,
                   cells: list[Cell]) -> None:  # a task of :func:`plan_cells`, run in a worker
    """Compute a batch of runs in this worker: base evaluations in one pass; LoRA runs trained side by side
    and evaluated together (:func:`grouped.train`); full finetunes one after another."""
    from .finetune import finetune
    from .tracks import load_base

    inp = _inputs(world)
    with runs.Batch(paths.RUNS, [spec(track, c, inp, cfg) for c in cells], profile) as batch:
        if not batch.todo:
            return
        phrasing = track.unseen_phrasing
        model, tok = load_base(track)
        base = [i for i in batch.todo if cells[i].format == "base"]
        if base:
            for i, out in zip(base, evaluate_cells(model, tok, [(cells[i], None) for i in base], inp, cfg, phrasing)):
                _write_tables(batch.tmp(i), out)
                batch.finish(i)
        trained = [i for i in batch.todo if cells[i].format != "base"]
        data = {i: training_examples(cells[i], inp, cfg) for i in trained}
        settings = {i: track.finetune_config(cfg.epochs, cells[i].seed, max_length=384) for i in trained}
        if trained and grouped.concurrent(track.method, grouping):
            jobs = [grouped.Job(data[i], settings[i]) for i in trained]

            def evaluate_checkpoints(m, checkpoints):
                outs = evaluate_cells(m, tok, [(cells[trained[c.job]], c.slot) for c in checkpoints], inp, cfg, phrasing)
                for c, out in zip(checkpoints, outs):
                    i = trained[c.job]
                    _write_training(batch.tmp(i), c.result, len(data[i]))
                    _write_tables(batch.tmp(i), out)
                    batch.finish(i)

            grouped.train(model, tok, jobs, evaluate_checkpoints, grouping)
            return
        for i in trained:
            model, tok = load_base(track)  # a full finetune changes the model: a fresh base for every run
            model, result = finetune(model, tok, data[i], settings[i], progress=False)
            _write_training(batch.tmp(i), result, len(data[i]))
            _write_tables(batch.tmp(i), evaluate_cell(model, tok, cells[i], inp, cfg, phrasing))
            batch.finish(i)


def _write_training(tmp: Path, result, n_examples: int) -> None:
    result.log.to_csv(tmp / "loss_log.csv", index=False)
    (tmp / "train_summary.json").write_text(json.dumps({"n_examples": n_examples, **result.summary()}, indent=2))


def _write_tables(tmp: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        write_jsonl(table, tmp / f"{name}.jsonl")


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


def design_cells(cfg: StudyAConfig, claims_only: bool = False) -> list[Cell]:
    """The base evaluations and every cell of the grid (``claims_only``: the cells the claims read, for
    every seed: how a replication re-measures the claims)."""
    cells = [c for s in cfg.all_seeds for c in claim_cells(cfg, s)] if claims_only else grid(cfg)
    return base_cells(cfg) + list(dict.fromkeys(cells))


def run_all(track, world, cfg: StudyAConfig, profile: str | None = None, progress: bool = True,
            claims_only: bool = False) -> list[Path]:
    """The base evaluations and every cell of the grid (``claims_only``: the cells the claims read,
    for every seed: how a replication re-measures the claims)."""
    return run_cells(track, design_cells(cfg, claims_only), Inputs(world), cfg, profile, progress)


def run_designs(designs: list[tuple], profile: str | None = None, progress: bool = True) -> list[list[Path]]:
    """Several designs, each ``(track, world, cfg, claims_only)``, computed by one pool of workers (so no
    worker waits at the end of one design while the next could start); their folders, design by design."""
    from . import executor

    plans = [plan_cells(track, design_cells(cfg, claims_only), Inputs(world), cfg, profile)
             for track, world, cfg, claims_only in designs]
    executor.run_tasks([t for _, tasks in plans for t in tasks], desc="study A",
                       progress=progress, gpu=any(executor.needs_gpu(d[0]) for d in designs))
    return [folders for folders, _ in plans]


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
                                                "tokens": s["tokens"],
                                                # seconds of a run trained beside others are its group's wall
                                                # time while it trained: shared with group_runs runs on average
                                                "group_runs": s.get("group_runs", 1.0)}]))
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
