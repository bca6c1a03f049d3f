"""Study A's design: the grid of cells, the data each cell trains on and the items it is asked.

Study A (Zhao et al. 2025, "From Style to Facts"): what makes new information easy or hard to
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

Usage: ``cells = design.design_cells(cfg)``; ``examples = design.training_examples(cell, design.Inputs(world), cfg)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from knowinject.core.config import require
from knowinject.core.seeding import numpy_rng

from knowinject.data import render
from knowinject.data.render import qa_prompt
from knowinject.data.templates import RELATIONS, STYLES

from knowinject.eval.persona import StyleClassifier

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
        # The multi-step cell may hold more people than any quantity level: A3 compares first hops with
        # 2-hop questions inside the same runs, so it needs no twin trained without 2-hop examples, and
        # its items grow with its people (the base evaluation covers them, base_cells).
        require(self.multistep_quantity >= 0, f"StudyAConfig.multistep_quantity must be >= 0 (0: the central "
                f"quantity), got {self.multistep_quantity}")

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


def training_examples(cell: Cell, inp: Inputs, cfg: StudyAConfig) -> list[dict]:
    """What a cell's run trains on: its facts in its format and augmentation (plus the 2-hop helpers' QA and
    similar 2-hop examples in the multi-step cell, and the anchors every run shares), or a style's
    training conversations. Examples are ``prompt``/``completion``, ``text`` or ``messages`` records."""
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
    q = max(*cfg.quantities, cfg.ms_quantity)
    return ([Cell("people", "base", q, 0), Cell("events", "base", cfg.n_events, 0), Cell("style", "base", 1, 0)]
            + [Cell("persona", "base", 1, 0, persona=k) for k in range(cfg.n_personas)])


def design_cells(cfg: StudyAConfig, claims_only: bool = False) -> list[Cell]:
    """The base evaluations and every cell of the grid (``claims_only``: the cells the claims read, for
    every seed: how a replication re-measures the claims)."""
    cells = [c for s in cfg.all_seeds for c in claim_cells(cfg, s)] if claims_only else grid(cfg)
    return base_cells(cfg) + list(dict.fromkeys(cells))
