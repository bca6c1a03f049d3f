"""The one seeding function: every random source a run touches, from one integer.

Usage: ``seed_everything(cfg.seed)``; ``rng = numpy_rng(seed, "world")`` for an independent stream.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch, so a run is a function of its config."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # plotting code never imports torch
        return
    torch.manual_seed(seed)


def numpy_rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per named stream, so adding draws to one stream leaves others unchanged."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
