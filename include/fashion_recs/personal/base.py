"""The surface every matrix-based recommender shares: fit on a user x item matrix, then rank.

After benfred/implicit: a model only has to say how it scores a block of users against every
item (`score_block`); ranking, excluding known items, blocking for bounded memory and the
output frame are written once here. A score of -inf means "no evidence" and never makes a
list, so a model with nothing to say about a user leaves that user's list short and the
routing or the blend tops it up from popularity, labelled as such.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.evaluate import position_in_run
from fashion_recs.personal.matrix import UserItemMatrix
from fashion_recs.similar.retrieval import select_top_k
from fashion_recs.sort_keys import by_row_value_column

log = logging.getLogger(__name__)

RECOMMENDATION_COLUMNS = ["user_id", "product_id", "rank", "score"]
# A score block is at most this many float32 cells (256 MiB), whatever the catalogue size.
MAX_BLOCK_CELLS = 64 * 2**20
PROGRESS_EVERY_S = 10.0


def empty_recommendations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=object),
            "product_id": pd.Series([], dtype=object),
            "rank": pd.Series([], dtype=np.int32),
            "score": pd.Series([], dtype=np.float64),
        }
    )


def block_size(requested: int, width: int) -> int:
    """Rows per block so that a dense block of `width` columns stays under the cell budget."""
    return max(1, min(requested, MAX_BLOCK_CELLS // max(width, 1)))


class Recommender(ABC):
    """A model fitted on a `UserItemMatrix` that scores users against every item."""

    name: str = "recommender"
    # Repurchase-style models rank the user's own items and ignore `exclude_known`.
    ranks_known_items: bool = False

    def __init__(self, block_rows: int = 1024) -> None:
        self.block_rows = block_rows
        self._matrix: UserItemMatrix | None = None

    @property
    def matrix(self) -> UserItemMatrix:
        if self._matrix is None:
            raise RuntimeError(f"{self.name}: fit the model before asking it for scores")
        return self._matrix

    def fit(self, matrix: UserItemMatrix) -> Recommender:
        self._matrix = matrix
        self._fit(matrix)
        return self

    def _fit(self, matrix: UserItemMatrix) -> None:  # noqa: B027 - optional hook
        """Precompute what scoring needs (similarities, profiles)."""

    @abstractmethod
    def score_block(self, rows: np.ndarray):  # -> torch.Tensor (len(rows), n_items) float32
        """Scores of known users `rows` (matrix rows) for every item; -inf = no evidence."""

    def sparse_scores(self, rows: np.ndarray) -> sp.csr_matrix | None:
        """The same scores as `score_block` as a sparse matrix whose stored positive entries
        are the only items with evidence, or None when the model has no sparse form.

        Models whose evidence is sparse (neighbour votes, the user's own items) answer here:
        ranking then costs the entries a user has, not the catalogue, so scoring every user
        no longer grows with users x items. Same scores, same tie rule, same lists.
        """
        return None

    def score_factors(self, rows: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix] | None:
        """Sparse (A, B) whose product A @ B is `score_block`'s scores (its positive entries
        the evidence), or None. Ranking then keeps the top entries inside the product
        (sparse_dot_topn) and never materialises a row's full scores."""
        return None

    def top_k_rows(
        self, rows: np.ndarray, k: int, known: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The k best items of each of `rows` found without scoring the whole catalogue (an
        index over item vectors), or None when the model has no such search.

        The answer is what ranking `score_block` would give: (index into `rows`, item
        column, score) grouped by row, best first, ties by column, `known` items (a 0/1 row
        per entry of `rows`, or None) never listed, users without evidence absent. An
        approximate search may differ from the exact lists in which items it finds."""
        return None

    def recommend(
        self, user_ids: Iterable[str], k: int, *, exclude_known: bool = True
    ) -> pd.DataFrame:
        """Top-k items per user as `user_id, product_id, rank, score`, users in the given
        order; users the matrix does not know get no rows (routing handles them)."""
        matrix = self.matrix
        users = pd.Index(list(dict.fromkeys(user_ids)))
        rows = matrix.user_rows(users)
        known_users = np.nonzero(rows >= 0)[0]
        position, cols, scores = self.recommend_rows(rows[known_users], k, exclude_known)
        if len(position) == 0:
            return empty_recommendations()
        # Ranks count the kept items only, so a short list still starts at 1.
        frame = pd.DataFrame(
            {
                "user_id": users.to_numpy()[known_users[position]],
                "product_id": matrix.items.to_numpy()[cols],
                "score": scores.astype(np.float64),
            }
        )
        frame["rank"] = (frame.groupby("user_id", sort=False).cumcount() + 1).astype(np.int32)
        return frame[RECOMMENDATION_COLUMNS].reset_index(drop=True)

    def recommend_rows(
        self, rows: np.ndarray, k: int, exclude_known: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of the matrix rows `rows` as integer arrays, grouped by row, best first:
        (index into `rows`, item column, score). What `recommend` and the ranker's candidate
        sources share, without turning codes into ids."""
        matrix = self.matrix
        rows = np.asarray(rows, dtype=np.int64)
        kk = min(k, matrix.n_items)
        empty = np.zeros(0, dtype=np.int64)
        if kk == 0 or len(rows) == 0:
            return empty, empty, np.zeros(0, dtype=np.float32)
        exclude = exclude_known and not self.ranks_known_items
        step = block_size(self.block_rows, matrix.n_items)
        # Blocks of users with similar counts of known items: a sparse product keeps each
        # row's k best plus the block's largest known count, so one heavy user in a block of
        # light ones would make every row of it carry hundreds of entries to drop.
        order = np.arange(len(rows))
        if exclude:
            order = np.argsort(np.diff(matrix.values.indptr)[np.maximum(rows, 0)], kind="stable")
        started = last_report = time.perf_counter()
        parts = []
        for lo in range(0, len(rows), step):
            which = order[lo : lo + step]
            known = matrix.known(rows[which]) if exclude else None
            position, cols, scores = self._block_top_k(rows[which], kk, known)
            parts.append((which[position], cols, scores))
            if time.perf_counter() - last_report > PROGRESS_EVERY_S:
                last_report = time.perf_counter()
                done = min(lo + step, len(rows))
                rate = done / (last_report - started)
                log.info(
                    "%s: %d/%d users ranked (%.0f users/s, ~%.0f s left)",
                    self.name,
                    done,
                    len(rows),
                    rate,
                    (len(rows) - done) / rate,
                )
        position, cols, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
        if exclude:
            # Back to the order of `rows`, each row's items still best first.
            back = np.argsort(position, kind="stable")
            position, cols, scores = position[back], cols[back], scores[back]
        return position, cols, scores

    def _block_top_k(
        self, rows: np.ndarray, k: int, known: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One block's lists from the cheapest form the model offers: a search, sparse
        factors, sparse scores, else the dense score block."""
        found = self.top_k_rows(rows, k, known)
        if found is not None:
            return found
        factors = self.score_factors(rows)
        if factors is not None:
            return top_k_product(*factors, k, known)
        sparse = self.sparse_scores(rows)
        if sparse is not None:
            return top_k_sparse(sparse, k, known)
        return top_k_block(self.score_block(rows), k, known)


def top_k_block(
    block, k: int, known: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best finite scores of each row of a dense score block (a torch tensor), `known`
    cells excluded, ties by column (`select_top_k`), as (row, column, score) arrays grouped
    by row, best first."""
    import torch

    if known is not None and known.nnz:
        coo = sp.csr_matrix(known).tocoo()
        block[torch.from_numpy(coo.row), torch.from_numpy(coo.col)] = -math.inf
    k = min(k, block.shape[1])
    cols, scores = select_top_k(block, k)
    keep = np.isfinite(scores)
    position = np.repeat(np.arange(block.shape[0]), k).reshape(block.shape[0], k)
    return position[keep], cols[keep], scores[keep]


def top_k_product(
    left: sp.csr_matrix, right: sp.csr_matrix, k: int, known: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`top_k_sparse` of `left @ right`, the product and the selection in sparse_dot_topn's
    multi-threaded kernel: each row keeps its k best plus as many as it has known items (so k
    are left once those are dropped), whatever the width of the catalogue."""
    import os

    from sparse_dot_topn import sp_matmul_topn

    extra = int(np.diff(known.indptr).max()) if known is not None and known.nnz else 0
    found = sp_matmul_topn(
        sp.csr_matrix(left, dtype=np.float32),
        sp.csr_matrix(right, dtype=np.float32),
        top_n=min(k + extra, right.shape[1]),
        threshold=0.0,
        n_threads=os.cpu_count() or 1,
    )
    return top_k_sparse(found, k, known)


def top_k_sparse(
    scores: sp.csr_matrix, k: int, known: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best positive entries of each row, best first, ties by column: what
    `select_top_k` returns from the dense block of the same scores (non-positive cells and
    `known` cells being -inf there), as (row, column, score) arrays grouped by row."""
    coo = sp.csr_matrix(scores, dtype=np.float32).tocoo()
    row, col, value = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    keep = value > 0
    if known is not None and known.nnz:
        known = sp.csr_matrix(known)
        # An entry is known when its (row, col) key is among the known matrix's keys.
        width = np.int64(scores.shape[1])
        known_coo = known.tocoo()
        known_keys = np.sort(known_coo.row.astype(np.int64) * width + known_coo.col)
        keys = row * width + col
        found = np.searchsorted(known_keys, keys)
        found = np.minimum(found, len(known_keys) - 1)
        keep &= known_keys[found] != keys
    row, col, value = row[keep], col[keep], value[keep]
    order = by_row_value_column(row, value, col)
    row, col, value = row[order], col[order], value[order]
    best = position_in_run(row) <= k
    return row[best], col[best], value[best]
