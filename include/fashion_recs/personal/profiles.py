"""Embedding profiles: a user is the weighted mean of the items they touched.

The seed built users from FashionCLIP item embeddings; any model of the similar-products
registry works the same way (TF-IDF + one-hot vectors by default, since they exist on every
run; an encoder's embeddings when its weights are present). The profile is the user's
decayed weights (as weights of a mean) times the item vectors, L2-normalised, and items are
ranked by cosine to it.

Ranking every user against every item costs users x items. Above `exact_max_items` items
(dense vectors) the profiles search a faiss IVF index over the item vectors instead: each
user scans `nprobe` k-means cells, so the cost per user stops growing with the catalogue's
width. Users the search leaves short of k items are ranked exactly, and every call measures
the search's recall@k against exact ranking on a sample of its users (`search_info`). Small
catalogues and sparse vectors wider than `DENSE_MAX_DIM` keep the blocked exact search with
the similar-products retrieval layer's tie rule.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import position_in_run
from fashion_recs.personal.base import Recommender, top_k_block
from fashion_recs.personal.matrix import UserItemMatrix, l1_rows, l2_rows
from fashion_recs.similar.retrieval import DENSE_MAX_DIM, Neighbors, ivf_index, recall_at_k
from fashion_recs.sort_keys import by_row_value_column, isin

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "faiss_ivf")
# Default cells of the index: this many times the square root of the catalogue size.
NLIST_PER_SQRT_ITEMS = 4.0


@dataclass
class ProfileSearch:
    """How items are ranked against profiles. `auto`: exact up to `exact_max_items` items
    (and for sparse vectors wider than DENSE_MAX_DIM), faiss IVF above. `nlist` cells (None:
    4 x sqrt(items)), `nprobe` of them scanned per user; recall@k against exact ranking is
    measured on `recall_sample` users of each call (0: not measured)."""

    method: str = "auto"
    exact_max_items: int = 10_000
    nlist: int | None = None
    nprobe: int = 32
    recall_sample: int = 500
    seed: int = 42
    # k-means trains on at most this many items per cell (a seeded sample), this many rounds.
    train_points_per_list: int = 32
    train_iterations: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FashionRecsError(f"profile search method {self.method!r}; known: {METHODS}")


class EmbeddingProfile(Recommender):
    """Cosine between a user's profile and every item's vector."""

    def __init__(
        self,
        item_vectors: np.ndarray | sp.spmatrix,
        vector_model: str = "text_tfidf",
        block_rows: int = 1024,
        search: ProfileSearch | None = None,
    ) -> None:
        super().__init__(block_rows)
        self.item_vectors = item_vectors
        self.vector_model = vector_model
        self.search = search or ProfileSearch()
        self.name = f"embedding_profile_{vector_model}"
        self._index: Any = None
        self._exact_filled = 0
        # How the last fit ranks items (method, index settings) and the recall measured on
        # the last call's users.
        self.search_info: dict[str, Any] = {}

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
        self._index = None
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
        self._has_profile = ~_empty_rows(self._profiles)
        method = self._method(sp.issparse(item_vectors), matrix.n_items)
        self.search_info.clear()  # one dict per model: callers may hold it across fits
        self.search_info.update(method=method, items=matrix.n_items)
        if method == "faiss_ivf":
            self._index, info = build_ivf_index(self._items_t.T, self.search)
            self.search_info.update(info)
            log.info(
                "%s: faiss IVF over %d items (%d cells, %d scanned per user) in %.1f s",
                self.name,
                matrix.n_items,
                info["nlist"],
                info["nprobe"],
                info["build_seconds"],
            )

    def _method(self, sparse: bool, n_items: int) -> str:
        method = self.search.method
        if method == "auto":
            return "exact" if sparse or n_items <= self.search.exact_max_items else "faiss_ivf"
        if method == "faiss_ivf" and sparse:
            log.warning(
                "%s: sparse vectors wider than %d columns have no IVF index; ranking exactly",
                self.name,
                DENSE_MAX_DIM,
            )
            return "exact"
        return method if n_items > 0 else "exact"

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

    def top_k_rows(
        self, rows: np.ndarray, k: int, known: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self._index is None:
            return None
        n_items = self.matrix.n_items
        asked = np.flatnonzero(self._has_profile[rows])
        empty = np.zeros(0, dtype=np.int64)
        if len(asked) == 0:
            return empty, empty, np.zeros(0, dtype=np.float32)
        n_known = np.diff(known.indptr)[asked] if known is not None else np.zeros_like(asked)
        # Each user's k best plus room for the known items the search may find (dropped).
        width = min(k + int(n_known.max()), n_items)
        scores, cols = self._index.search(self._profiles[rows[asked]], width)
        row = np.repeat(asked, width)
        col, value = cols.ravel().astype(np.int64), scores.ravel()
        keep = col >= 0  # -1: the scanned cells held fewer items than asked
        if known is not None and known.nnz and keep.any():
            keep[keep] = np.asarray(known[row[keep], col[keep]]).ravel() == 0
        row, col, value = row[keep], col[keep], value[keep]
        order = by_row_value_column(row, value, col)  # best first, ties by column
        row, col, value = row[order], col[order], value[order]
        best = position_in_run(row) <= k
        row, col, value = row[best], col[best], value[best]
        # Users left short of what exact ranking lists (k, or every item they do not know)
        # are ranked exactly.
        listed = np.bincount(row, minlength=len(rows))[asked]
        short = asked[listed < np.minimum(k, n_items - n_known)]
        if len(short):
            self._exact_filled += len(short)
            fill = isin(row, short)
            row, col, value = row[~fill], col[~fill], value[~fill]
            sub_known = known[short] if known is not None else None
            at, at_col, at_value = top_k_block(self.score_block(rows[short]), k, sub_known)
            row = np.concatenate([row, short[at]])
            col = np.concatenate([col, at_col])
            value = np.concatenate([value, at_value])
            order = np.argsort(row, kind="stable")
            row, col, value = row[order], col[order], value[order]
        return row, col, value.astype(np.float32)

    def recommend_rows(
        self, rows: np.ndarray, k: int, exclude_known: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._exact_filled = 0
        found = super().recommend_rows(rows, k, exclude_known)
        if self._index is not None:
            self.search_info.update(
                exact_filled_users=self._exact_filled,
                **self._measured_recall(np.asarray(rows, dtype=np.int64), k, exclude_known, found),
            )
            log.info(
                "%s: recall@%d %.4f against exact ranking on %d users",
                self.name,
                k,
                self.search_info["recall_at_k"],
                self.search_info["recall_users"],
            )
        return found

    def _measured_recall(
        self,
        rows: np.ndarray,
        k: int,
        exclude_known: bool,
        found: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> dict[str, Any]:
        """recall@k of the lists `found` for `rows` against exact ranking, on a seeded
        sample of the users with a profile."""
        profiled = np.flatnonzero(self._has_profile[rows])
        size = min(self.search.recall_sample, len(profiled))
        kk = min(k, self.matrix.n_items)
        if size == 0 or kk == 0:
            return {"recall_at_k": float("nan"), "k": k, "recall_users": 0}
        rng = np.random.default_rng(self.search.seed)
        sample = np.sort(rng.choice(profiled, size, replace=False))
        known = self.matrix.known(rows[sample]) if exclude_known else None
        exact = top_k_block(self.score_block(rows[sample]), kk, known)
        position, cols, _ = found
        picked = isin(position, sample)
        approx = (np.searchsorted(sample, position[picked]), cols[picked])
        recall = recall_at_k(_padded(*approx, size, kk), _padded(*exact[:2], size, kk), kk)
        return {"recall_at_k": round(recall, 5), "k": kk, "recall_users": int(size)}


def build_ivf_index(vectors: np.ndarray, search: ProfileSearch) -> tuple[Any, dict[str, Any]]:
    """The retrieval layer's faiss IVF-Flat inner-product index over L2-normalised rows (the
    inner product is their cosine), sized and trained as `search` says."""
    started = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    nlist = search.nlist or max(1, int(NLIST_PER_SQRT_ITEMS * math.sqrt(x.shape[0])))
    index = ivf_index(
        x,
        nlist,
        search.nprobe,
        search.seed,
        search.train_points_per_list,
        search.train_iterations,
    )
    seconds = round(time.perf_counter() - started, 3)
    return index, {
        "nlist": int(index.nlist),
        "nprobe": int(index.nprobe),
        "build_seconds": seconds,
    }


def _padded(position: np.ndarray, cols: np.ndarray, n: int, k: int) -> Neighbors:
    """Lists grouped by position as `Neighbors` rows (padded with -1) for `recall_at_k`."""
    indices = np.full((n, k), -1, dtype=np.int64)
    rank = position_in_run(position) - 1
    indices[position, rank] = cols
    return Neighbors(indices, np.zeros((n, k), dtype=np.float32))


def _empty_rows(profiles: np.ndarray | sp.csr_matrix) -> np.ndarray:
    if sp.issparse(profiles):
        return np.diff(profiles.indptr) == 0
    return ~np.any(profiles != 0, axis=1)
