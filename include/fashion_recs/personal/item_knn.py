"""Item-based CF (item-kNN): items are similar when the same users touch them.

A baseline beside every personalised model, and the engine of the seed's
`recommend_for_new_user_with_events`: a shopper who has opened one product gets what the
people who opened it also opened. Item-item cosine over the columns of the user x item
matrix, the top `n_neighbours` kept per item (sparse), computed in blocks of items.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.personal.base import Recommender
from fashion_recs.personal.matrix import WEIGHTINGS, UserItemMatrix, l2_rows
from fashion_recs.personal.user_cf import user_neighbours


class ItemKNN(Recommender):
    """Scores an item by the user's weights on its nearest items (item-item cosine)."""

    name = "item_knn"

    def __init__(
        self, n_neighbours: int = 200, weighting: str = "log1p", block_rows: int = 1024
    ) -> None:
        super().__init__(block_rows)
        self.n_neighbours = n_neighbours
        self.weighting = WEIGHTINGS[weighting]

    def _fit(self, matrix: UserItemMatrix) -> None:
        values = self.weighting(matrix.values)
        item_vectors = l2_rows(sp.csr_matrix(values.T))
        rows = np.arange(matrix.n_items)
        # Same blocked top-k as user neighbours, on the transposed matrix.
        self.item_similarity = user_neighbours(item_vectors, self.n_neighbours, rows)
        self._profiles = l2_rows(values)

    def score_factors(self, rows: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        return self._profiles[rows], self.item_similarity

    def score_block(self, rows: np.ndarray):
        import torch

        scores = (self._profiles[rows] @ self.item_similarity).toarray().astype(np.float32)
        block = torch.from_numpy(scores)
        block[block <= 0] = -math.inf
        return block

    def similar_items(self, product_ids: list[str], k: int) -> pd.DataFrame:
        """`product_id, rank, similar_product_id, score`: the items co-touched with each."""
        codes = self.matrix.items.get_indexer(pd.Index(product_ids))
        asked = np.flatnonzero(codes >= 0)
        similarity = self.item_similarity[codes[asked]].tocoo()
        # Best score first, ties by item order, k per product, products in the order asked.
        order = np.lexsort((similarity.col, -similarity.data, similarity.row))
        row, col = similarity.row[order], similarity.col[order]
        score = similarity.data[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        keep = rank < k
        return pd.DataFrame(
            {
                "product_id": np.asarray(product_ids, dtype=object)[asked[row[keep]]],
                "rank": rank[keep] + 1,
                "similar_product_id": self.matrix.items.to_numpy()[col[keep]],
                "score": score[keep].astype(np.float64),
            }
        )
