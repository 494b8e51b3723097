"""The seed's text/attribute model: TF-IDF of a product's combined text stacked with one-hot
attributes.

The seed joined title, target audience, colour, department and the original description,
vectorised it with TF-IDF (max_features 5000) and stacked a one-hot encoding of colour,
target audience and department. Here the text and every attribute column are blocks of
their own, each L2-normalised and weighted before stacking, and rows are normalised again,
so a cosine between two products is a weighted mix of their text and per-attribute
agreement rather than whichever block happens to have the larger norm.

`attribute_weight` is the whole attribute part's weight; `attribute_weights` splits it
across columns (relative, 1 each by default: the seed's equal one-hot). A catalogue whose
department is coarse ("tops") says little about what a product is; `product_type` derives
a type column from the title (`last_word`: "Slim Stretch Denim Jeans" is "jeans") that
becomes one more attribute block, and `extra_attributes` adds any other product column.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder, normalize

TEXT_COLUMNS = ["title", "target_audience", "color", "department", "original_description"]
ATTRIBUTE_COLUMNS = ["color", "target_audience", "department"]
PRODUCT_TYPE = "product_type"
PRODUCT_TYPE_RULES = ("none", "last_word")
MISSING = "unknown"


def product_type(titles: pd.Series, rule: str = "last_word") -> pd.Series:
    """A product type read from each title: its last word of letters, lower case (sizes,
    numbers and punctuation after it are skipped); missing when the title has none."""
    if rule not in PRODUCT_TYPE_RULES or rule == "none":
        raise ValueError(f"unknown product type rule {rule!r}; choose 'last_word'")
    words = titles.astype("string").str.lower().str.findall(r"[a-z]{2,}")
    return words.map(lambda w: w[-1] if isinstance(w, list) and w else pd.NA).astype("string")


def attribute_frame(
    products: pd.DataFrame, columns: list[str], type_rule: str = "none"
) -> pd.DataFrame:
    """The attribute columns as strings, missing ones "unknown"; `product_type` derived from
    the title when the rule asks for it."""
    frame = pd.DataFrame(index=products.index)
    for column in columns:
        if column == PRODUCT_TYPE and PRODUCT_TYPE not in products:
            frame[column] = product_type(products["title"], type_rule)
        else:
            frame[column] = products[column].astype("string")
    return frame.fillna(MISSING).astype(object)


def combined_text(products: pd.DataFrame) -> pd.Series:
    """One string per product: the seed's text columns joined by spaces, missing ones skipped."""
    parts = products[TEXT_COLUMNS].astype("string").fillna("")
    # Column-wise concatenation: a row-wise join costs a Python call per product.
    joined = parts[TEXT_COLUMNS[0]].str.cat([parts[c] for c in TEXT_COLUMNS[1:]], sep=" ")
    text = joined.str.replace(r"\s+", " ", regex=True).str.strip()
    return text.astype(str)


@dataclass
class TextModel:
    """A fitted TF-IDF + per-attribute one-hot featuriser; `transform` maps new text onto the
    same space (the robustness check noises text and re-embeds it with the fitted model)."""

    tfidf: TfidfVectorizer
    encoders: dict[str, OneHotEncoder]
    text_weight: float
    column_weights: dict[str, float]
    type_rule: str = "none"

    def transform(self, products: pd.DataFrame, text: pd.Series | None = None) -> sp.csr_matrix:
        text = combined_text(products) if text is None else text
        blocks = [self.text_weight * normalize(self.tfidf.transform(text.tolist()))]
        attributes = attribute_frame(products, list(self.encoders), self.type_rule)
        for column, encoder in self.encoders.items():
            onehot = encoder.transform(attributes[[column]].to_numpy(dtype=object))
            block = normalize(sp.csr_matrix(onehot, dtype=np.float64))
            blocks.append(self.column_weights[column] * block)
        return normalize(sp.hstack(blocks, format="csr")).astype(np.float32)

    def text_block(self, products: pd.DataFrame) -> sp.csr_matrix:
        """The unweighted, L2-normalised TF-IDF block (rows of empty text stay zero)."""
        return normalize(self.tfidf.transform(combined_text(products).tolist())).tocsr()

    def attribute_codes(self, products: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each attribute block as one integer code a product (equal codes: cosine 1 in
        that block, else 0), for scoring block weights without re-embedding."""
        attributes = attribute_frame(products, list(self.encoders), self.type_rule)
        return {
            column: pd.factorize(attributes[column], use_na_sentinel=False)[0]
            for column in self.encoders
        }

    def with_weights(self, text_weight: float, weights: dict[str, float]) -> TextModel:
        """The same vocabulary and categories with other block weights."""
        return replace(self, text_weight=text_weight, column_weights=dict(weights))

    @property
    def dim(self) -> int:
        return len(self.tfidf.vocabulary_) + sum(
            len(e.categories_[0]) for e in self.encoders.values()
        )


def column_weights(attribute_weight: float, relative: dict[str, float]) -> dict[str, float]:
    """Each attribute block's weight as the cosine sees it: the relative weights scaled to
    unit length, times the attribute part's weight."""
    norm = float(np.sqrt(sum(w * w for w in relative.values()))) or 1.0
    return {c: attribute_weight * w / norm for c, w in relative.items()}


def fit_text_model(
    products: pd.DataFrame,
    *,
    max_features: int = 5000,
    text_weight: float = 1.0,
    attribute_weight: float = 1.0,
    ngram_max: int = 1,
    attribute_weights: dict[str, float] | None = None,
    product_type: str = "none",
    extra_attributes: list[str] | None = None,
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
    columns = list(ATTRIBUTE_COLUMNS)
    if product_type != "none":
        columns.append(PRODUCT_TYPE)
    columns += [c for c in extra_attributes or [] if c not in columns]
    relative = {c: (attribute_weights or {}).get(c, 1.0) for c in columns}
    weights = column_weights(attribute_weight, relative)
    attributes = attribute_frame(products, columns, product_type)
    encoders = {}
    for column in columns:
        encoders[column] = OneHotEncoder(handle_unknown="ignore").fit(
            attributes[[column]].to_numpy(dtype=object)
        )
    return TextModel(tfidf, encoders, text_weight, weights, product_type)


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
