"""knowinject: the package behind the knowledge-injection compendium.

Notebooks narrate; this package computes. Usage: ``from knowinject import paths, world``.
"""

__version__ = "0.1.0"
