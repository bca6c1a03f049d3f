"""Study B (Ghosal et al. 2024, "Understanding Finetuning for Factual Knowledge Extraction"): QA-finetuning
on well-known vs lesser-known facts. :mod:`.design` (candidates, pool, test, conditions), :mod:`.compute`
(cached runs) and :mod:`.analysis` (summaries and claims), read in that order.
"""

from knowinject.studies.study_b import analysis, compute, design  # noqa: F401  (study_b.design.split(...))
