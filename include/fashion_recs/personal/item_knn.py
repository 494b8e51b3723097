"""Item-based CF (item-kNN): items are similar when the same users touch them.

A baseline beside every personalised model, and the engine of the seed's
`recommend_for_new_user_with_events`: a shopper who has opened one product gets what the
people who opened it also opened. Item-item cosine over the columns of the user x item
matrix, the top `n_neighbours` kept per item (sparse), computed in blocks of items.

The similarities are float64 rounded to multiples of `SIMILARITY_QUANTUM` (2^-20, ~1e-6)
and the neighbours chosen on the rounded values, ties by the lower item code. Exact ties are
common (items touched by the same few users), and float sums in another order break them
differently; rounded, any engine that sums the same products gets the same table, so the
co-occurrence can run where the events are (`fashion_recs.spark.item_knn`, selected by
`engines: {item_knn: spark}`) and the published lists stay the same. Every rounded value is
exact in float32, the dtype the model scores in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.evaluate import position_in_run
from fashion_recs.personal.base import Recommender
from fashion_recs.personal.matrix import WEIGHTINGS, UserItemMatrix, l2_rows
from fashion_recs.personal.user_cf import user_neighbours
from fashion_recs.sort_keys import by_row_value_column

SIMILARITY_QUANTUM = 2.0**-20

# Finds each item's neighbours: (unit item vectors, float64 CSR items x users; n_neighbours)
# -> float32 CSR items x items of the rounded similarities. `local_item_neighbours` here,
# `fashion_recs.spark.item_knn.SparkItemNeighbours` on a cluster.
ItemNeighbourSearch = Callable[[sp.csr_matrix, int], sp.csr_matrix]


def item_unit_vectors(matrix: UserItemMatrix, weighting: str) -> sp.csr_matrix:
    """Each item's column of the weighted matrix, scaled to unit length, in float64: what the
    cosines are dot products of, the same input for every engine."""
    values = WEIGHTINGS[weighting](matrix.values.astype(np.float64))
    return l2_rows(sp.csr_matrix(values.T), dtype=np.float64)


def local_item_neighbours(item_vectors: sp.csr_matrix, n_neighbours: int) -> sp.csr_matrix:
    """Same blocked top-k as user neighbours, on the item vectors, rounded."""
    rows = np.arange(item_vectors.shape[0])
    return user_neighbours(item_vectors, n_neighbours, rows, quantum=SIMILARITY_QUANTUM)


class ItemKNN(Recommender):
    """Scores an item by the user's weights on its nearest items (item-item cosine).

    `search` finds the neighbours (`ItemNeighbourSearch`, default `local_item_neighbours`).
    """

    name = "item_knn"

    def __init__(
        self,
        n_neighbours: int = 200,
        weighting: str = "log1p",
        block_rows: int = 1024,
        search: ItemNeighbourSearch | None = None,
    ) -> None:
        super().__init__(block_rows)
        self.n_neighbours = n_neighbours
        self.weighting_name = weighting
        self.weighting = WEIGHTINGS[weighting]
        self.search = search or local_item_neighbours

    def _fit(self, matrix: UserItemMatrix) -> None:
        vectors = item_unit_vectors(matrix, self.weighting_name)
        self.item_similarity = self.search(vectors, self.n_neighbours)
        self._profiles = l2_rows(self.weighting(matrix.values))

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
        order = by_row_value_column(similarity.row, similarity.data, similarity.col)
        row, col = similarity.row[order], similarity.col[order]
        score = similarity.data[order]
        rank = position_in_run(row)
        keep = rank <= k
        return pd.DataFrame(
            {
                "product_id": np.asarray(product_ids, dtype=object)[asked[row[keep]]],
                "rank": rank[keep],
                "similar_product_id": self.matrix.items.to_numpy()[col[keep]],
                "score": score[keep].astype(np.float64),
            }
        )
