"""The user x item matrix every personalised model starts from.

One sparse row per user, one column per catalogue product, holding the user's time-decayed
interaction weight for the product (a purchase last week outweighs a glance last quarter).
Built from the `interactions` artifact (or a train slice of it) with the same weights and
half-life as the `user_items` aggregate, but decayed to whatever moment the caller names: the
run's as-of for production lists, the split's cutoff for evaluation, so that no model peeks
at the hold-out.

Users are sorted by id and items keep the catalogue's order, so a matrix built twice from the
same rows is identical, row and column codes included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.errors import FashionRecsError
from fashion_recs.sort_keys import index_positions

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class UserItemMatrix:
    """`values[u, i]`: decayed weight of user `users[u]` on item `items[i]` (CSR, float32)."""

    values: sp.csr_matrix
    users: pd.Index
    items: pd.Index

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def user_rows(self, user_ids: Iterable[str]) -> np.ndarray:
        """Row of each user, -1 for users the matrix does not know."""
        return self.users.get_indexer(pd.Index(list(user_ids)))

    def known(self, rows: np.ndarray) -> sp.csr_matrix:
        """The items each of `rows` touched, as a 0/1 matrix (rows of -1 are empty)."""
        rows = np.asarray(rows)
        picked = self.values[np.where(rows >= 0, rows, 0)].astype(bool).astype(np.float32)
        picked = sp.csr_matrix(picked)
        if (rows < 0).any():
            picked = sp.diags((rows >= 0).astype(np.float32)) @ picked
        return sp.csr_matrix(picked)

    def items_of(self, row: int) -> np.ndarray:
        """Item codes of one user, strongest weight first (ties: item order)."""
        lo, hi = self.values.indptr[row], self.values.indptr[row + 1]
        cols, vals = self.values.indices[lo:hi], self.values.data[lo:hi]
        return cols[np.lexsort((cols, -vals))]


def decayed_weights(
    weight: np.ndarray, ts: pd.Series, as_of: datetime | pd.Timestamp, half_life_days: float
) -> np.ndarray:
    """weight * 0.5 ** (age in days / half-life); events after `as_of` count at full weight.

    The same rule as the interactions stage's `decay_weight`, on pandas columns.
    """
    age = (pd.Timestamp(as_of) - ts).dt.total_seconds().to_numpy() / SECONDS_PER_DAY
    return np.asarray(weight, dtype=np.float64) * np.power(
        0.5, np.clip(age, 0.0, None) / half_life_days
    )


def user_item_matrix(
    interactions: pd.DataFrame,
    items: Sequence[str] | pd.Index,
    *,
    as_of: datetime | pd.Timestamp,
    half_life_days: float,
    users: Sequence[str] | pd.Index | None = None,
) -> UserItemMatrix:
    """Sum each (user, item)'s decayed weights into a sparse matrix over the catalogue.

    `interactions` needs user_id, product_id, event_ts and weight. Products outside `items`
    are left out (the events stage already reported them); `users` fixes the row set (users
    without interactions get empty rows), else it is the sorted users of `interactions`.
    """
    missing = {"user_id", "product_id", "event_ts", "weight"} - set(interactions.columns)
    if missing:
        raise FashionRecsError(f"user x item matrix: interactions lack columns {sorted(missing)}")
    item_index = pd.Index(items, name="product_id")
    if not item_index.is_unique:
        raise FashionRecsError("user x item matrix: the item list repeats product ids")
    user_index = pd.Index(
        sorted(interactions["user_id"].unique()) if users is None else users, name="user_id"
    )
    cols = index_positions(interactions["product_id"], item_index)
    rows = index_positions(interactions["user_id"], user_index)
    keep = (cols >= 0) & (rows >= 0)
    weights = decayed_weights(
        interactions["weight"].to_numpy()[keep],
        interactions["event_ts"][keep],
        as_of,
        half_life_days,
    )
    values = sp.csr_matrix(
        (weights, (rows[keep], cols[keep])),
        shape=(len(user_index), len(item_index)),
        dtype=np.float64,
    )
    values.sum_duplicates()
    values.sort_indices()
    return UserItemMatrix(values.astype(np.float32), user_index, item_index)


def l2_rows(matrix: sp.csr_matrix, dtype: type = np.float32) -> sp.csr_matrix:
    """Rows scaled to unit length (empty rows stay empty), the scale in `dtype`: float64 for
    the item-kNN similarities both engines must compute alike (`personal.item_knn`)."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale.astype(dtype)) @ matrix)


def l1_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to sum to one: a user's items as weights of a weighted mean."""
    sums = np.asarray(abs(matrix).sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ matrix)


def centred_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each user's observed weights minus their mean (Pearson's centring on observed entries).

    A user whose weights are all equal centres to an all-zero row and has no Pearson
    neighbours: there is no preference among their items to correlate.
    """
    centred = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    counts = np.diff(centred.indptr)
    sums = np.asarray(centred.sum(axis=1)).ravel()
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    centred.data -= np.repeat(means, counts).astype(np.float32)
    centred.eliminate_zeros()
    return centred


def log_weights(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """log(1 + weight): ten views of a product say more than one, but not ten times more.

    Damping repeat counts keeps a user's neighbours about what they like rather than how
    often they came back to it (on the synthetic retailer it lifts user-CF MAP@12 by a
    quarter).
    """
    # float32 unless the weights are float64 already (item-kNN's exact similarities).
    damped = sp.csr_matrix(matrix, dtype=np.result_type(matrix.dtype, np.float32), copy=True)
    damped.data = np.log1p(damped.data)
    return damped


WEIGHTINGS = {"raw": lambda m: m, "log1p": log_weights}
