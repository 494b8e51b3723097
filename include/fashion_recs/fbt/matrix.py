"""Baskets as a sparse basket x item incidence matrix, the input every mining engine shares.

Items are numbered in sorted product-id order, so an itemset written as sorted item indices is
also sorted by product id: every engine's output can be compared without a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class BasketMatrix:
    """`X[b, i] = 1` when basket b holds item `item_ids[i]`; rows are baskets, deduplicated."""

    X: sp.csr_matrix
    item_ids: np.ndarray

    @property
    def n_baskets(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.X.shape[1])

    def item_counts(self) -> np.ndarray:
        """How many baskets hold each item."""
        return np.diff(self.X.tocsc().indptr).astype(np.int64)

    def basket_sizes(self) -> np.ndarray:
        return np.diff(self.X.indptr).astype(np.int64)

    def transactions(self) -> list[list[int]]:
        """Baskets as lists of item indices (for engines that take Python iterables)."""
        indptr, indices = self.X.indptr, self.X.indices
        return [indices[indptr[b] : indptr[b + 1]].tolist() for b in range(self.n_baskets)]

    def keep_items(self, keep: np.ndarray) -> BasketMatrix:
        """Only the items where `keep` is true; every basket row stays (supports divide by
        the basket count, so dropping items must not drop baskets)."""
        cols = np.nonzero(keep)[0]
        return BasketMatrix(self.X[:, cols].tocsr(), self.item_ids[cols])

    def take_baskets(self, rows: np.ndarray) -> BasketMatrix:
        return BasketMatrix(self.X[rows].tocsr(), self.item_ids)


def basket_matrix(basket: np.ndarray, product: np.ndarray) -> BasketMatrix:
    """Build the matrix from parallel arrays (basket code, product id), duplicates collapsed.

    Basket codes are renumbered densely in sorted order; baskets are the distinct codes given.
    """
    if len(basket) != len(product):
        raise ValueError("basket and product arrays differ in length")
    item_ids, item_code = np.unique(
        np.asarray(product, dtype=object).astype(str), return_inverse=True
    )
    return coded_basket_matrix(basket, item_code, item_ids.astype(object))


def coded_basket_matrix(
    basket: np.ndarray, item_code: np.ndarray, item_ids: np.ndarray
) -> BasketMatrix:
    """`basket_matrix` from item codes already made (positions in the sorted `item_ids`)."""
    basket_ids, basket_code = np.unique(np.asarray(basket), return_inverse=True)
    data = np.ones(len(item_code), dtype=np.int32)
    X = sp.csr_matrix(
        (data, (basket_code, np.asarray(item_code, dtype=np.int64))),
        shape=(len(basket_ids), len(item_ids)),
        dtype=np.int32,
    )
    X.sum_duplicates()
    X.data[:] = 1
    X.sort_indices()
    return BasketMatrix(X, np.asarray(item_ids, dtype=object))


def from_transactions(baskets: list[list[str]]) -> BasketMatrix:
    """Matrix from lists of product ids (tests, benchmarks); empty baskets are kept as rows."""
    sizes = np.fromiter((len(b) for b in baskets), dtype=np.int64, count=len(baskets))
    rows = np.repeat(np.arange(len(baskets)), sizes)
    items = np.asarray([i for b in baskets for i in b], dtype=object)
    if len(items) == 0:
        X = sp.csr_matrix((len(baskets), 0), dtype=np.int32)
        return BasketMatrix(X, np.asarray([], dtype=object))
    item_ids, item_code = np.unique(items.astype(str), return_inverse=True)
    X = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, item_code)),
        shape=(len(baskets), len(item_ids)),
    )
    X.sum_duplicates()
    X.data[:] = 1
    X.sort_indices()
    return BasketMatrix(X, item_ids.astype(object))
