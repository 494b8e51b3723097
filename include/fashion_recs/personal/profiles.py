"""Embedding profiles: a user is the weighted mean of the items they touched.

The seed built users from FashionCLIP item embeddings; any model of the similar-products
registry works the same way (TF-IDF + one-hot vectors by default, since they exist on every
run; an encoder's embeddings when its weights are present). The profile is the user's
decayed weights (as weights of a mean) times the item vectors, L2-normalised, and items are
ranked by cosine to it: the same blocked exact search and tie rule as the similar-products
retrieval layer.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fashion_recs.errors import FashionRecsError
from fashion_recs.personal.base import Recommender
from fashion_recs.personal.matrix import UserItemMatrix, l1_rows, l2_rows
from fashion_recs.similar.retrieval import DENSE_MAX_DIM


class EmbeddingProfile(Recommender):
    """Cosine between a user's profile and every item's vector."""

    def __init__(
        self,
        item_vectors: np.ndarray | sp.spmatrix,
        vector_model: str = "text_tfidf",
        block_rows: int = 1024,
    ) -> None:
        super().__init__(block_rows)
        self.item_vectors = item_vectors
        self.vector_model = vector_model
        self.name = f"embedding_profile_{vector_model}"

    def _fit(self, matrix: UserItemMatrix) -> None:
        if self.item_vectors.shape[0] != matrix.n_items:
            raise FashionRecsError(
                f"{self.name}: {self.item_vectors.shape[0]} item vectors for a catalogue of "
                f"{matrix.n_items} products; vectors must be aligned to the matrix's items"
            )
        weights = l1_rows(matrix.values)
        item_vectors = self.item_vectors
        # Narrow sparse vectors (TF-IDF over short titles plus one-hots) make dense profiles:
        # scoring them as dense BLAS is the same cosine at a fraction of the sparse cost.
        if sp.issparse(item_vectors) and item_vectors.shape[1] <= DENSE_MAX_DIM:
            item_vectors = item_vectors.toarray()
        if sp.issparse(item_vectors):
            vectors = l2_rows(sp.csr_matrix(item_vectors, dtype=np.float32))
            self._profiles = l2_rows(sp.csr_matrix(weights @ vectors))
            self._items_t = sp.csr_matrix(vectors.T)
        else:
            dense = np.asarray(item_vectors, dtype=np.float32)
            norms = np.linalg.norm(dense, axis=1, keepdims=True)
            dense = np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)
            profiles = np.asarray(weights @ dense, dtype=np.float32)
            norms = np.linalg.norm(profiles, axis=1, keepdims=True)
            self._profiles = np.divide(
                profiles, norms, out=np.zeros_like(profiles), where=norms > 0
            )
            self._items_t = np.ascontiguousarray(dense.T)

    def score_block(self, rows: np.ndarray):
        import torch

        profiles = self._profiles[rows]
        scores = profiles @ self._items_t
        if sp.issparse(scores):
            scores = scores.toarray()
        block = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        empty = torch.from_numpy(_empty_rows(profiles))
        block[empty] = -float("inf")  # a user with no profile has no evidence
        return block


def _empty_rows(profiles: np.ndarray | sp.csr_matrix) -> np.ndarray:
    if sp.issparse(profiles):
        return np.diff(profiles.indptr) == 0
    return ~np.any(profiles != 0, axis=1)
