"""knowinject: the package behind the knowledge-injection compendium.

Notebooks narrate; this package computes, one folder per stage of the pipeline: ``core`` (configs,
paths, cached runs, workers), ``data`` (worlds and facts), ``train`` (models and finetuning), ``eval``
(scoring and knownness), ``studies`` (Study A, Study B and their claims), with ``stats``, ``plots``
and ``pipeline`` beside them; ``bench`` measures the rest and is imported by none of it.

Usage: ``from knowinject.data import world``; ``from knowinject.studies import study_a``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("knowinject")  # pyproject.toml's, as installed (make setup reinstalls on a bump)
except _metadata.PackageNotFoundError:  # imported from src/ without an install
    __version__ = "unknown"
