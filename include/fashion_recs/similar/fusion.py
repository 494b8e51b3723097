"""Fusion: the seed's TF-IDF + MobileNet concatenation, generalised to any weighted blocks.

Each block (one model's product vectors) is L2-normalised on its own and multiplied by its
weight before concatenation, and the result is normalised again; the cosine of two fused
vectors is then the weight-squared-share-weighted mean of the blocks' cosines, so a
5000-dimensional TF-IDF block does not drown a 1280-dimensional image block by size alone.
A product missing from a block (no readable image) keeps a zero block there: its fused
vector is its other blocks' (text-only fallback).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.preprocessing import normalize


def fuse(blocks: list[tuple[np.ndarray | sp.spmatrix, float]]) -> np.ndarray:
    """Weighted concatenation of row-aligned blocks (rows of zeros mean "missing")."""
    if not blocks:
        raise ValueError("fusion needs at least one block")
    n = blocks[0][0].shape[0]
    parts = []
    for matrix, weight in blocks:
        if matrix.shape[0] != n:
            raise ValueError(
                f"fusion blocks must have one row per product ({n}), got {matrix.shape[0]}"
            )
        dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        parts.append(weight * normalize(dense.astype(np.float32)))
    return normalize(np.hstack(parts)).astype(np.float32)
