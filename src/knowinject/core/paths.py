"""Every repository path the compendium reads or writes, anchored on this file, never on the cwd.

Usage: ``from knowinject.core.paths import RESULTS; RESULTS / "bench.csv"``.
"""

from __future__ import annotations

import os
from pathlib import Path

# src/knowinject/core/paths.py -> the repository root is three levels above this folder.
ROOT = Path(__file__).resolve().parents[3]

NOTEBOOKS = ROOT / "notebooks"
PARAMS = NOTEBOOKS / "params"
# Executed notebook copies go here (git-ignored): papermill never executes in place.
EXECUTED = ROOT / "build" / "notebooks"

# KNOWINJECT_DATA lets tests and users point every generated artefact at another folder
# (a temp dir, a bigger disk) without touching the committed results.
DATA = Path(os.environ.get("KNOWINJECT_DATA", ROOT / "data")).resolve()
WORLDS = DATA / "worlds"      # generated fact tables and renderings, one folder per config hash
MODELS = DATA / "models"      # converted / pretrained base models (git-ignored)
RUNS = DATA / "runs"          # finetuning and evaluation runs, one folder per config hash
RESULTS = DATA / "results"    # small tidy tables the figures are drawn from (committed)

FIGURES = Path(os.environ.get("KNOWINJECT_FIGURES", ROOT / "figures")).resolve()


def ensure(path: Path) -> Path:
    """Create ``path`` (a folder) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


DEFAULT_MODEL = "smollm2"  # the slug of the pretrained track's committed model; any other gets its own subfolder


def _subfolder(root: Path, profile: str, model_slug: str | None, facts_slug: str | None = None,
               create: bool = True) -> Path:
    if facts_slug:  # a fact set of the user's: always below its profile and model, never beside the committed tables
        folder = root / profile / (model_slug or DEFAULT_MODEL) / facts_slug
    elif model_slug and model_slug != DEFAULT_MODEL:
        folder = root / profile / model_slug  # data/results/<profile>/<slug>/, default profile included
    else:
        folder = root if profile == "default" else root / profile
    return ensure(folder) if create else folder


def figures_dir(profile: str, model_slug: str | None = None, facts_slug: str | None = None, create: bool = True) -> Path:
    """Committed figures come from the default profile and SmolLM2; other profiles write beside them
    (``figures/<profile>/``), and another pretrained model below that (``.../<model-slug>/``, the slug
    from :func:`knowinject.train.models.slug`)."""
    return _subfolder(FIGURES, profile, model_slug, facts_slug, create)


def results_dir(profile: str, model_slug: str | None = None, facts_slug: str | None = None, create: bool = True) -> Path:
    """Committed result tables come from the default profile and SmolLM2; another profile writes to
    ``data/results/<profile>/``, another pretrained model to ``data/results/<profile>/<model-slug>/``
    (``data/results/default/<model-slug>/`` for the default profile), never over SmolLM2's tables; Study B
    on a fact set of one's own (``facts_slug``, :mod:`knowinject.data.facts`) to
    ``data/results/<profile>/<model-slug>/<facts-slug>/``, SmolLM2 included. ``create``: make it if missing."""
    return _subfolder(RESULTS, profile, model_slug, facts_slug, create)


def show(path: Path) -> str:
    """A path as a user should read it: relative to the repository when inside it."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
