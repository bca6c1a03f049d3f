"""Shared fixtures: a small world built once per test session in a temporary folder."""

from __future__ import annotations

import pytest

from knowinject.data import geo, world, worldfiles

SMALL_WORLD = dict(seed=3, n_people=60, n_new_people=12, n_orgs=6, n_cities=6, n_event_countries=6, n_personas=2,
                   max_exposure=20, world_exposure=5, vocab_size=600, doc_paraphrases=2)
SMALL_REAL = dict(min_country_population=50_000_000, n_cities=30)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return worldfiles.build(world.WorldConfig(**SMALL_WORLD), geo.RealWorldConfig(**SMALL_REAL), "test", root=root)


def small_llama(small_world, folder, seed: int):
    """A 2-layer random Llama with the small world's tokenizer (left padding, eager attention), saved in
    ``folder`` as a local model the tracks can load."""
    from knowinject.train import models
    tok = small_world.tokenizer()
    tok.padding_side = "left"
    model = models.tiny_model(models.TinyModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed), tok)
    model.config._attn_implementation = "eager"
    models.save(model, tok, folder)
    return folder
