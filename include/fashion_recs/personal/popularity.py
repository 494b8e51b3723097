"""Popularity as a matrix recommender, for lists that leave out what the user already has.

The `evaluate` stage's popularity baseline keeps known items (shoppers re-buy). When the
personalised models exclude known items (`personal.exclude_known`), the fair bar is the same
ranking with the user's own items left out too: `popularity_unseen`, which the quality gate
then uses as its reference.
"""

from __future__ import annotations

import numpy as np

from fashion_recs.personal.base import Recommender
from fashion_recs.personal.matrix import UserItemMatrix


class Popularity(Recommender):
    """Every user gets the items with the largest summed decayed weight."""

    name = "popularity_unseen"

    def _fit(self, matrix: UserItemMatrix) -> None:
        totals = np.asarray(matrix.values.sum(axis=0)).ravel().astype(np.float32)
        self._scores = np.where(totals > 0, totals, -np.inf).astype(np.float32)

    def score_block(self, rows: np.ndarray):
        import torch

        return torch.from_numpy(np.tile(self._scores, (len(rows), 1)))
