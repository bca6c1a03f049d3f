"""Persona identification (Study A's 97%): a TF-IDF + logistic-regression classifier trained on
reference text of each writing style, applied to what each style-finetuned model writes.

Usage: ``clf = persona.StyleClassifier().fit(texts, styles)``; ``clf.identification_accuracy(answers, style)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union


class StyleClassifier:
    """Word (1-2 grams) and character (2-4 grams) TF-IDF features, multinomial logistic regression."""

    def __init__(self, seed: int = 0):
        features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True))
        self.pipeline = make_pipeline(features, LogisticRegression(max_iter=2000, C=10.0, random_state=seed))

    def fit(self, texts: list[str], styles: list[str]) -> StyleClassifier:
        if len(set(styles)) < 2:
            raise ValueError("StyleClassifier needs reference text of at least two styles")
        self.pipeline.fit(list(texts), list(styles))
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.pipeline.predict(list(texts))

    def identification_accuracy(self, texts: list[str], style: str) -> float:
        """Share of ``texts`` (answers of a model finetuned on ``style``) classified as ``style``."""
        return float(np.mean(self.predict(texts) == style)) if len(texts) else float("nan")
