"""The seed's text/attribute model: TF-IDF of a product's combined text stacked with one-hot
attributes.

The seed joined title, target audience, colour, department and the original description,
vectorised it with TF-IDF (max_features 5000) and stacked a one-hot encoding of colour,
target audience and department. Here each block is L2-normalised and weighted (config)
before stacking, and rows are normalised again, so a cosine between two products is a
weighted mix of their text and attribute similarity rather than whichever block happens to
have the larger norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder, normalize

TEXT_COLUMNS = ["title", "target_audience", "color", "department", "original_description"]
ATTRIBUTE_COLUMNS = ["color", "target_audience", "department"]
MISSING = "unknown"


def combined_text(products: pd.DataFrame) -> pd.Series:
    """One string per product: the seed's text columns joined by spaces, missing ones skipped."""
    parts = products[TEXT_COLUMNS].astype("string").fillna("")
    text = parts.agg(" ".join, axis=1).str.replace(r"\s+", " ", regex=True).str.strip()
    return text.astype(str)


@dataclass
class TextModel:
    """A fitted TF-IDF + one-hot featuriser; `transform` maps new text onto the same space
    (the robustness check noises text and re-embeds it with the fitted model)."""

    tfidf: TfidfVectorizer
    onehot: OneHotEncoder
    text_weight: float
    attribute_weight: float

    def transform(self, products: pd.DataFrame, text: pd.Series | None = None) -> sp.csr_matrix:
        text = combined_text(products) if text is None else text
        words = normalize(self.tfidf.transform(text.tolist()))
        attributes = self.onehot.transform(
            products[ATTRIBUTE_COLUMNS].astype("string").fillna(MISSING).to_numpy(dtype=object)
        )
        attributes = normalize(sp.csr_matrix(attributes, dtype=np.float64))
        stacked = sp.hstack(
            [self.text_weight * words, self.attribute_weight * attributes], format="csr"
        )
        return normalize(stacked).astype(np.float32)

    @property
    def dim(self) -> int:
        return len(self.tfidf.vocabulary_) + sum(len(c) for c in self.onehot.categories_)


def fit_text_model(
    products: pd.DataFrame,
    *,
    max_features: int = 5000,
    text_weight: float = 1.0,
    attribute_weight: float = 1.0,
    ngram_max: int = 1,
) -> TextModel:
    """Fit the vocabulary, IDF and attribute categories on the catalogue."""
    tfidf = TfidfVectorizer(
        max_features=max_features,
        stop_words="english",
        ngram_range=(1, ngram_max),
        sublinear_tf=True,
        dtype=np.float32,
    )
    text = combined_text(products)
    tfidf.fit(text.tolist() if text.str.len().gt(0).any() else ["empty"])
    onehot = OneHotEncoder(handle_unknown="ignore")
    onehot.fit(products[ATTRIBUTE_COLUMNS].astype("string").fillna(MISSING).to_numpy(dtype=object))
    return TextModel(tfidf, onehot, text_weight, attribute_weight)


def noised_text(text: pd.Series, drop_rate: float, seed: int) -> pd.Series:
    """Text with a share of its words dropped and one character of some words swapped,
    as a shopper's or a supplier's sloppy copy would be."""
    rng = np.random.default_rng(seed)
    out = []
    for doc in text.tolist():
        words = [w for w in doc.split() if rng.random() >= drop_rate] or doc.split()[:1]
        for i, w in enumerate(words):
            if len(w) > 3 and rng.random() < drop_rate:
                j = int(rng.integers(len(w) - 1))
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        out.append(" ".join(words))
    return pd.Series(out, index=text.index)
