"""Shared fixtures: a small world built once per test session in a temporary folder."""

from __future__ import annotations

import pytest

from knowinject import geo, world, worldfiles

SMALL_WORLD = dict(seed=3, n_people=60, n_new_people=12, n_orgs=6, n_cities=6, n_event_countries=6, n_personas=2,
                   max_exposure=20, world_exposure=5, vocab_size=600, doc_paraphrases=2)
SMALL_REAL = dict(min_country_population=50_000_000, n_cities=30)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return worldfiles.build(world.WorldConfig(**SMALL_WORLD), geo.RealWorldConfig(**SMALL_REAL), "test", root=root)
