"""Stage 1, the data: the synthetic world, real-world facts from GeoNames, the question templates, every
rendering of a fact (QA, documents, conversations, multiple choice, 2-hop questions) and the pretraining
corpus, cached on disk as a world folder (notebook 01)."""
