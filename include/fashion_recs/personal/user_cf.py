"""User-based collaborative filtering: the seed's `recommend_for_existing_user`.

A user's neighbours are the `n_neighbours` users whose item vectors are most similar (cosine,
or Pearson: cosine of mean-centred observed weights); an item's score is the similarity-weighted
sum of the neighbours' (unit-length) weights on it, and the user's own items are left out
unless repurchase is allowed.

The seed computed a dense users x users similarity matrix; at 100k users that is 40 GB. Here
similarities are computed for one block of users at a time by a sparse product that keeps only
the top neighbours as it goes (sparse_dot_topn), the neighbours are a sparse matrix with
`n_neighbours` entries per row, and item scores are one more sparse product per block. Memory
is bounded by the block, never by users squared (bench/personal.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Literal

import numpy as np
import scipy.sparse as sp

from fashion_recs.evaluate import position_in_run
from fashion_recs.personal.base import Recommender
from fashion_recs.personal.matrix import WEIGHTINGS, UserItemMatrix, centred_rows, l2_rows
from fashion_recs.sort_keys import by_row_value_column

log = logging.getLogger(__name__)

Similarity = Literal["cosine", "pearson"]
PROGRESS_EVERY_S = 10.0


def user_neighbours(
    vectors: sp.csr_matrix,
    n_neighbours: int,
    rows: np.ndarray,
    block_rows: int = 10_000,
    n_threads: int | None = None,
    transposed: sp.csr_matrix | None = None,
    quantum: float | None = None,
) -> sp.csr_matrix:
    """Top-`n_neighbours` most similar other rows of each of `rows` (unit-length `vectors`).

    Returns a sparse (len(rows), n_rows) float32 matrix of similarities; only positive
    similarities are kept (a user who shares nothing with anyone has an empty row). The
    product and the selection run together in sparse_dot_topn's multi-threaded kernel, which
    never holds more than `n_neighbours + 1` results per row: with power-law item popularity
    a block of users is similar to almost half of all users, so densifying it (or scipy's
    two-pass product) costs ten times more (bench/personal.py). `transposed` is `vectors.T`
    in the product's dtype as CSR, for callers that ask block after block: transposing every
    time costs users x blocks.

    `quantum`: the similarities are rounded to multiples of it and the neighbours chosen on
    the rounded values (ties by the lower row), in float64 throughout: a result any engine
    that sums the same float64 products in another order reproduces exactly (`quantize`).
    The kernel keeps a few more than asked; a row whose last kept value rounds like its
    `n_neighbours`-th may have lost a tie, and is recomputed in full.
    """
    from sparse_dot_topn import sp_matmul_topn

    n = vectors.shape[0]
    kk = min(n_neighbours, max(n - 1, 0))
    if kk == 0 or len(rows) == 0:
        return sp.csr_matrix((len(rows), n), dtype=np.float32)
    threads = n_threads or os.cpu_count() or 1
    dtype = np.float32 if quantum is None else np.float64
    left = vectors if vectors.dtype == dtype else sp.csr_matrix(vectors, dtype=dtype)
    right = transposed if transposed is not None else sp.csr_matrix(left.T)
    top_n = kk + 1 + (0 if quantum is None else QUANTUM_SLACK)
    started = last_report = time.perf_counter()
    blocks = []
    for lo in range(0, len(rows), block_rows):
        which = np.asarray(rows[lo : lo + block_rows])
        found = sp_matmul_topn(
            left[which], right, top_n=top_n, threshold=0.0, n_threads=threads
        ).tocoo()
        if quantum is None:
            blocks.append(_best_others(found.row, found.col, found.data, which, kk, n))
        else:
            blocks.append(_best_quantized(found, which, kk, n, quantum, left, right, top_n))
        done = min(lo + block_rows, len(rows))
        if time.perf_counter() - last_report < PROGRESS_EVERY_S and done < len(rows):
            continue
        last_report = time.perf_counter()
        rate = done / max(last_report - started, 1e-9)
        log.info(
            "neighbours: %d/%d rows (%.0f rows/s, ~%.0f s left)",
            done,
            len(rows),
            rate,
            (len(rows) - done) / rate,
        )
    return sp.csr_matrix(sp.vstack(blocks, format="csr"))


# How many more results than asked the quantized search keeps per row, so that a row needs
# its full product only when more than this many values round like its last neighbour.
QUANTUM_SLACK = 8


def quantize(values: np.ndarray, quantum: float) -> np.ndarray:
    """`values` to the nearest multiple of `quantum` (halves up). With a power-of-two quantum
    every step is exact in float64, so Spark's `floor(x / q + 0.5) * q` gives the same bits."""
    return np.floor(values / quantum + 0.5) * quantum


def _best_others(
    r: np.ndarray, c: np.ndarray, v: np.ndarray, which: np.ndarray, kk: int, n: int
) -> sp.csr_matrix:
    """Never yourself; then the best kk others, ties by the lower column (deterministic).

    The kernel's results are ordered by `by_row_value_column` (its three-key lexsort took
    18 s of the 10x retailer's user-CF step).
    """
    others = c != which[r]
    r, c, v = r[others], c[others], v[others]
    order = by_row_value_column(r, v, c)
    r, c, v = r[order], c[order], v[order]
    keep = position_in_run(r) <= kk
    return sp.csr_matrix((v[keep], (r[keep], c[keep])), shape=(len(which), n), dtype=np.float32)


def _best_quantized(
    found: sp.coo_matrix,
    which: np.ndarray,
    kk: int,
    n: int,
    quantum: float,
    left: sp.csr_matrix,
    right: sp.csr_matrix,
    top_n: int,
) -> sp.csr_matrix:
    """`_best_others` on the rounded positive similarities, exact whatever the kernel cut
    off: a row the kernel filled (`top_n` results) whose `kk`-th neighbour and last result
    round alike may have lost an equal one, so its full product replaces it (rare: it takes
    a tie of more than `QUANTUM_SLACK` values)."""
    r, c, v = found.row, found.col, quantize(found.data, quantum)
    filled = np.bincount(r, minlength=len(which)) >= top_n
    lowest = np.full(len(which), np.inf)
    np.minimum.at(lowest, r, v)
    positive = v > 0
    best = _best_others(r[positive], c[positive], v[positive], which, kk, n)
    # The kk-th neighbour of each row that has kk: the smallest it kept (rounded values are
    # exact in float32).
    sizes = np.diff(best.indptr)
    smallest = np.full(len(which), np.inf)
    np.minimum.at(smallest, np.repeat(np.arange(len(which)), sizes), best.data)
    nth = np.where(sizes == kk, smallest, -np.inf)
    redo = filled & (nth <= lowest)
    if not redo.any():
        return best
    rows = np.flatnonzero(redo)
    product = (left[which[rows]] @ right).tocoo()
    values = quantize(product.data, quantum)
    positive = values > 0
    again = _best_others(
        rows[product.row][positive], product.col[positive], values[positive], which, kk, n
    )
    kept = sp.csr_matrix(sp.diags((~redo).astype(np.float32)) @ best)
    kept.eliminate_zeros()
    return sp.csr_matrix(kept + again)


def cap_rows(matrix: sp.csr_matrix, limit: int) -> tuple[sp.csr_matrix, int]:
    """Each row's `limit` largest entries (ties: lower column first), and how many rows
    were cut.

    Applied to the item x user side of the neighbour search: finding neighbours costs the
    sum over a user's items of the users who touched each, and a popular item's users grow
    with the user base, so the exact search grows with users squared. Through an item, a
    user is compared with at most the `limit` users who weigh it most; below that (every
    item of the demo retailer but its 1 % most popular) the search is exact.
    """
    matrix = sp.csr_matrix(matrix)
    lengths = np.diff(matrix.indptr)
    capped = int((lengths > limit).sum())
    if capped == 0:
        return matrix, 0
    coo = matrix.tocoo()
    order = by_row_value_column(coo.row, coo.data, coo.col)
    row, col, value = coo.row[order], coo.col[order], coo.data[order]
    keep = np.arange(len(row)) - matrix.indptr[row] < limit
    kept = sp.csr_matrix((value[keep], (row[keep], col[keep])), shape=matrix.shape)
    kept.sort_indices()
    return kept, capped


class UserCF(Recommender):
    """User-based CF with cosine or Pearson similarity, neighbours found in blocks."""

    def __init__(
        self,
        similarity: Similarity = "cosine",
        n_neighbours: int = 200,
        weighting: str = "log1p",
        block_rows: int = 1024,
        max_item_users: int | None = None,
    ) -> None:
        super().__init__(block_rows)
        self.weighting = WEIGHTINGS[weighting]
        self.max_item_users = max_item_users
        if similarity not in ("cosine", "pearson"):
            raise ValueError(f"similarity must be cosine or pearson, got {similarity!r}")
        self.similarity = similarity
        self.n_neighbours = n_neighbours
        self.name = f"user_cf_{similarity}"

    def _fit(self, matrix: UserItemMatrix) -> None:
        values = self.weighting(matrix.values)
        base = centred_rows(values) if self.similarity == "pearson" else values
        self._similarity_vectors = sp.csr_matrix(l2_rows(base), dtype=np.float32)
        self._transposed = sp.csr_matrix(self._similarity_vectors.T)
        if self.max_item_users is not None:
            self._transposed, capped = cap_rows(self._transposed, self.max_item_users)
            if capped:
                log.info(
                    "%s: neighbours searched through at most %d users per item (%d of %d "
                    "items capped)",
                    self.name,
                    self.max_item_users,
                    capped,
                    self._transposed.shape[0],
                )
        # Neighbours vote with their unit-length weights, so a heavy user is not a louder one.
        self._votes = l2_rows(values)

    def neighbours(self, rows: np.ndarray) -> sp.csr_matrix:
        return user_neighbours(
            self._similarity_vectors, self.n_neighbours, rows, transposed=self._transposed
        )

    def score_factors(self, rows: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        return self.neighbours(rows), self._votes

    def score_block(self, rows: np.ndarray):
        import torch

        scores = (self.neighbours(rows) @ self._votes).toarray().astype(np.float32)
        block = torch.from_numpy(scores)
        block[block <= 0] = -math.inf  # no neighbour touched it: no evidence
        return block
