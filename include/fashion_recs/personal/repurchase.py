"""The repurchase baseline: a user's own items, strongest recent interest first.

Fashion shoppers come back to what they looked at, hearted and bagged; on real fashion data
"show them their own recent items" is one of the strongest lists there is, so every model is
measured against it and the blend starts from it. The ranking is the time-decayed weight in the
user x item matrix (recent and strong first), which is what the matrix already holds.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from fashion_recs.personal.base import Recommender


class Repurchase(Recommender):
    """Ranks only the items the user already touched, by decayed weight."""

    name = "repurchase"
    ranks_known_items = True

    def sparse_scores(self, rows: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.matrix.values[rows], dtype=np.float32)

    def score_block(self, rows: np.ndarray):
        import torch

        scores = self.matrix.values[rows].toarray().astype(np.float32)
        block = torch.from_numpy(scores)
        block[block <= 0] = -math.inf
        return block
