"""Study A (Zhao et al. 2025, "From Style to Facts"): what makes new information easy or hard to
finetune into a model. :mod:`.design` (cells, data, items), :mod:`.compute` (cached runs) and
:mod:`.analysis` (summaries and claims), read in that order.
"""

from knowinject.studies.study_a import analysis, compute, design  # noqa: F401  (study_a.design.grid(...))
