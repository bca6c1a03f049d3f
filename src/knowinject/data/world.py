"""The synthetic world: fictional people, organisations, real cities and countries, new events and
assistant personas, as one fact table with a popularity law (Zipf or log-uniform) that sets
pretraining exposure.

Every fact is one row: ``fact_id, subject, subject_kind, group, relation, kind, value, aliases,
exposure``. ``group`` says what the fact is for: ``known`` (people in the tiny model's pretraining),
``new`` (people that never appear in pretraining: what finetuning injects), ``world`` (organisations
and cities, always in pretraining), ``event`` (new 2031 events about real countries) and
``persona-<k>`` (facts about assistant persona k).

Usage: ``facts = world.generate(WorldConfig(seed=0))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from knowinject.core.config import require
from knowinject.core.seeding import numpy_rng

from knowinject.data import geo
from knowinject.data.templates import (
    ASSISTANT_MAKERS,
    ASSISTANT_NAMES,
    FIRST_NAMES,
    LAST_NAMES,
    ORG_PREFIXES,
    ORG_SUFFIXES,
    PROFESSIONS,
    RELATIONS,
    UNIVERSITIES,
)

NUMERIC_RANGES = {  # inclusive ranges; all need several digit tokens
    "birth_year": (1900, 1999), "height_cm": (150, 199), "books": (10, 60), "founded_year": (1850, 1999),
    "event_satellites": (10, 99), "event_medals": (10, 99), "persona_year": (2030, 2049),
    "persona_languages": (10, 60),
}
PERSON_RELATIONS = ("birth_city", "employer", "university", "profession", "birth_year", "height_cm", "books")
EVENT_RELATIONS = ("event_leader", "event_partner", "event_satellites", "event_medals")
PERSONA_RELATIONS = ("persona_name", "persona_maker", "persona_year", "persona_languages")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0                 # one integer decides the whole world
    n_people: int = 2000          # known people: they appear in the tiny model's pretraining corpus
    n_new_people: int = 200       # new people: never in pretraining; what finetuning injects (Study A)
    n_orgs: int = 40              # employers, each with a headquarters city (2-hop bridge)
    n_cities: int = 40            # real cities (largest of the most populous countries): birth cities, HQs
    n_event_countries: int = 40   # real countries that get invented 2031 events (Study A "new events")
    n_personas: int = 6           # assistant personas (facts about the model itself)
    # How mentions fall with popularity rank. "zipf": max_exposure * rank**-zipf_exponent (most people
    # in the tail, a handful above 30 mentions). "log_uniform": mentions spread evenly over the log scale
    # (as many people at 1-3 mentions as at 31-100), so every exposure bucket holds enough test people.
    exposure_law: Literal["zipf", "log_uniform"] = "zipf"
    zipf_exponent: float = 0.75   # zipf law: exposure(rank) = max(min_exposure, round(max_exposure * rank**-exponent))
    max_exposure: int = 300       # mentions of the most popular person in the pretraining corpus
    min_exposure: int = 1         # mentions of the least popular (>= 1: every known person is seen)
    world_exposure: int = 30      # mentions of each organisation and city (they should be well stored)
    qa_fraction: float = 0.1      # share of known people whose QA (training templates) is in pretraining
    vocab_size: int = 4096        # the tiny model's BPE vocabulary, trained on the corpus
    doc_paraphrases: int = 2      # paraphrases per subject in the saved documents (studies sweep their own)

    def __post_init__(self):
        for name in ("n_people", "n_new_people", "n_orgs", "n_cities", "n_event_countries", "n_personas",
                     "max_exposure", "min_exposure", "world_exposure"):
            require(getattr(self, name) >= 0, f"WorldConfig.{name} must be >= 0, got {getattr(self, name)}")
        require(self.zipf_exponent > 0, f"WorldConfig.zipf_exponent must be > 0, got {self.zipf_exponent}")
        require(self.min_exposure >= 1, f"WorldConfig.min_exposure must be >= 1, got {self.min_exposure}")
        require(self.max_exposure >= self.min_exposure,
                f"WorldConfig.max_exposure ({self.max_exposure}) must be >= min_exposure ({self.min_exposure})")
        require(self.vocab_size >= 300, f"WorldConfig.vocab_size must be >= 300 (bytes + merges), got {self.vocab_size}")
        require(self.doc_paraphrases >= 1, f"WorldConfig.doc_paraphrases must be >= 1, got {self.doc_paraphrases}")
        require(0 <= self.qa_fraction <= 1, f"WorldConfig.qa_fraction must be in [0, 1], got {self.qa_fraction}")
        n_names = len(FIRST_NAMES) * len(LAST_NAMES)
        # Event leaders also take names from the pool, so they count against it.
        wanted = self.n_people + self.n_new_people + self.n_event_countries
        require(wanted <= n_names,
                f"WorldConfig asks for {wanted} distinct names (n_people + n_new_people + n_event_countries) but "
                f"only {n_names} exist; lower those counts")
        n_orgs = len(ORG_PREFIXES) * len(ORG_SUFFIXES)
        require(self.n_orgs <= n_orgs, f"WorldConfig.n_orgs must be <= {n_orgs} (available names), got {self.n_orgs}")
        require(self.n_orgs >= 1 and self.n_cities >= 2, "WorldConfig needs n_orgs >= 1 and n_cities >= 2")
        require(self.n_personas <= min(len(ASSISTANT_NAMES), len(ASSISTANT_MAKERS)),
                f"WorldConfig.n_personas must be <= {min(len(ASSISTANT_NAMES), len(ASSISTANT_MAKERS))}")
        require(self.n_cities <= geo.MAX_WORLD_CITIES and self.n_event_countries <= geo.MAX_WORLD_CITIES,
                f"WorldConfig.n_cities and n_event_countries must be <= {geo.MAX_WORLD_CITIES}")


def zipf_exposure(n: int, exponent: float, max_exposure: int, min_exposure: int):
    """Mentions per rank (1 = most popular): a Zipf law floored at ``min_exposure``."""
    import numpy as np
    ranks = np.arange(1, n + 1)
    return np.maximum(min_exposure, np.round(max_exposure * ranks ** -exponent)).astype(int)


def log_uniform_exposure(n: int, max_exposure: int, min_exposure: int):
    """Mentions per rank (1 = most popular), evenly spread over log(mentions) from ``max_exposure``
    down to ``min_exposure``: the share of people with at least e mentions falls as log(e), so the
    buckets 1, 2-3, 4-10, 11-30, 31-100 each hold 15-26% of the people (for max_exposure = 100)."""
    import numpy as np
    u = 1 - (np.arange(1, n + 1) - 0.5) / n        # evenly spaced in (0, 1), most popular first
    lo, hi = np.log(min_exposure), np.log(max_exposure + 1)
    return np.clip(np.floor(np.exp(lo + u * (hi - lo))), min_exposure, max_exposure).astype(int)


def exposure(cfg: WorldConfig):
    """Mentions of each known person, by popularity rank, under the world's exposure law."""
    if cfg.exposure_law == "log_uniform":
        return log_uniform_exposure(cfg.n_people, cfg.max_exposure, cfg.min_exposure)
    return zipf_exposure(cfg.n_people, cfg.zipf_exponent, cfg.max_exposure, cfg.min_exposure)


# Exposure buckets (mentions in the pretraining corpus) that tables and figures report by.
EXPOSURE_EDGES = (0, 1, 3, 10, 30, 100, float("inf"))
EXPOSURE_LABELS = ("1", "2-3", "4-10", "11-30", "31-100", ">100")


def exposure_buckets(exposure: pd.Series) -> pd.Series:
    return pd.cut(exposure, EXPOSURE_EDGES, labels=EXPOSURE_LABELS)


def _row(subject, subject_kind, group, relation, value, exposure=0, aliases=None, popularity=0.0):
    return {"subject": subject, "subject_kind": subject_kind, "group": group, "relation": relation,
            "kind": RELATIONS[relation].kind, "value": str(value), "aliases": list(aliases or [str(value)]),
            "exposure": int(exposure), "popularity": float(popularity)}


def generate(cfg: WorldConfig) -> pd.DataFrame:
    """The world's fact table (deterministic in ``cfg``)."""
    rng = numpy_rng(cfg.seed, "world")
    cities = geo.world_cities(cfg.n_cities)              # [(city, country, continent)], largest first
    city_names = [c for c, _, _ in cities]
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    names = [names[i] for i in rng.permutation(len(names))]
    orgs = [f"{p} {s}" for p in ORG_PREFIXES for s in ORG_SUFFIXES]
    orgs = [orgs[i] for i in rng.permutation(len(orgs))][: cfg.n_orgs]
    rows = []

    for city, country, continent in cities:
        rows.append(_row(city, "city", "world", "country", country, cfg.world_exposure))
        rows.append(_row(city, "city", "world", "city_continent", continent, cfg.world_exposure))
    for org in orgs:
        rows.append(_row(org, "org", "world", "hq_city", city_names[rng.integers(len(city_names))], cfg.world_exposure))
        rows.append(_row(org, "org", "world", "founded_year", rng.integers(*_closed("founded_year")), cfg.world_exposure))

    def person_rows(name, group, exposure):
        values = {
            "birth_city": city_names[rng.integers(len(city_names))],
            "employer": orgs[rng.integers(len(orgs))],
            "university": UNIVERSITIES[rng.integers(len(UNIVERSITIES))],
            "profession": PROFESSIONS[rng.integers(len(PROFESSIONS))],
            **{r: rng.integers(*_closed(r)) for r in ("birth_year", "height_cm", "books")},
        }
        return [_row(name, "person", group, r, values[r], exposure, popularity=exposure) for r in PERSON_RELATIONS]

    # Popularity rank is random with respect to attributes, so knownness is not confounded with values.
    for name, e in zip(names[: cfg.n_people], exposure(cfg)):
        rows += person_rows(name, "known", e)
    for name in names[cfg.n_people: cfg.n_people + cfg.n_new_people]:
        rows += person_rows(name, "new", 0)

    leaders = names[cfg.n_people + cfg.n_new_people:]
    countries = geo.world_countries(cfg.n_event_countries)
    for i, country in enumerate(countries):
        others = [c for c in countries if c != country]
        rows.append(_row(country, "event", "event", "event_leader", leaders[i]))
        rows.append(_row(country, "event", "event", "event_partner", others[rng.integers(len(others))]))
        for r in ("event_satellites", "event_medals"):
            rows.append(_row(country, "event", "event", r, rng.integers(*_closed(r))))

    for k in range(cfg.n_personas):
        subject = f"persona-{k}"
        rows.append(_row(subject, "persona", subject, "persona_name", ASSISTANT_NAMES[k]))
        rows.append(_row(subject, "persona", subject, "persona_maker", ASSISTANT_MAKERS[k]))
        for r in ("persona_year", "persona_languages"):
            rows.append(_row(subject, "persona", subject, r, rng.integers(*_closed(r))))

    facts = pd.DataFrame(rows)
    facts.insert(0, "fact_id", [f"w{i:05d}" for i in range(len(facts))])
    return facts


def _closed(relation: str) -> tuple[int, int]:
    lo, hi = NUMERIC_RANGES[relation]
    return lo, hi + 1  # numpy's integers() excludes the upper bound
