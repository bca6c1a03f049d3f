"""knowinject: the package behind the knowledge-injection compendium.

Notebooks narrate; this package computes, one folder per stage of the pipeline: ``core`` (configs,
paths, cached runs, workers), ``data`` (worlds and facts), ``train`` (models and finetuning), ``eval``
(scoring and knownness), ``studies`` (Study A, Study B and their claims), with ``stats``, ``plots``
and ``pipeline`` beside them; ``bench`` measures the rest and is imported by none of it.

Usage: ``from knowinject.data import world``; ``from knowinject.studies import study_a``.
"""

__version__ = "0.1.0"
