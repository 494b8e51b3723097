"""A two-tower retrieval model: the seed report's "two-tower model", trained to rank.

A user tower and an item tower each map their side to an L2-normalised vector, and a user's
recommendations are the items whose vectors have the largest dot product with theirs. The
seed regressed that dot product onto the interaction weight of observed pairs (MSE, no
negatives), which cannot rank: see `TwoTowerParams.loss`. Here the default is an in-batch
sampled softmax with the logQ popularity correction of Yi et al. (RecSys 2019), the standard
way to train retrieval towers from implicit feedback.

Decisions a reader will want to know about:

- **Examples.** One per (user, item) pair of the fit part of the train interactions, its
  loss multiplied by the pair's summed interaction weight (divided by the mean weight, so the
  learning rate means the same on every data set). Weighting the loss rather than sampling
  pairs by weight keeps every pair in every epoch and keeps the in-batch item distribution
  equal to the pair shares the logQ correction subtracts.
- **History feature.** The user tower sees the masked mean of the *item-id embeddings* (the
  item tower's own table, shared) of the user's `history_len` most recent distinct items.
  Item-tower outputs would cost one item-tower pass per history slot per example and chase a
  moving target; the shared table is cheap, lives in the item space from the start, and is
  trained from both sides. During training the target item is left out of its own user's
  history, or the model would learn "recommend what is already in the history", which the
  serving filter of known items then throws away.
- **Unknown values.** Index 0 of every vocabulary means "unknown": users without fit pairs,
  missing demographics or item attributes, items without fit pairs. Index 0 is learned,
  and `id_dropout` replaces a share of user and item ids by 0 during training, so the towers
  learn to place a new user from demographics and history and a new item from its attributes
  and content.
- **Validation.** The last `val_fraction` of train events by time is held out (see
  `validation_split`); each epoch scores recall@`val_k` of those pairs against the whole
  catalogue, the same way `recommend` does, with `fashion_recs.evaluate.recall_at_k`. The
  best epoch's weights are kept. They are not refitted on the held-out events, which still
  serve as history and as known items when recommending.
- **Refit.** The published model is not the early-stopped one: `refit` trains a fresh model
  on all interactions for exactly the best epoch count the early stopping found, with no
  validation split (`TwoTowerParams.for_refit`), so the latest days, and the users and
  products that only appear in them, get their own embeddings. Early stopping needs a
  future to score against, which a model trained on everything does not have; its epoch
  count is the best estimate of how long to train.
- **Determinism.** Training runs inside a context that seeds a forked torch RNG, enables
  deterministic algorithms and (optionally) fixes the thread count, restoring all three on
  exit, so two fits on the same inputs and machine give bit-identical vectors and nothing
  leaks into the caller's torch settings.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fashion_recs.artifacts import read_json, replace_dir, write_json
from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import ITEM, RANK, TS, USER, WEIGHT, recall_at_k
from fashion_recs.sort_keys import isin

log = logging.getLogger(__name__)

USER_FEATURES = ("age_group", "region")
ITEM_FEATURES = ("department", "color", "target_audience")
# Users scored at once when recommending: the score block is BLOCK x n_items floats.
BLOCK = 1024
PROGRESS_EVERY_S = 10.0
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TwoTowerParams:
    """How to build and train the towers; every field is plain data from the config.

    `loss` chooses the training objective:

    - `"sampled_softmax"` (default): each positive pair competes with the other items of its
      batch; `temperature` sharpens the softmax over cosine scores, and with
      `popularity_correction` the log of each item's share of training pairs is subtracted
      from its logits, because popular items are negatives in many more batches and would
      otherwise be pushed down for being popular rather than for being irrelevant.
    - `"bpr"`: each positive pair against one item drawn uniformly from the catalogue,
      ranking loss `-log sigmoid((s_pos - s_neg) / temperature)`.
    - `"mse"`: the seed's objective, kept only to compare against: the dot product is
      regressed onto the pair's weight (scaled to (0, 1]) on observed pairs only. With no
      negatives it never learns to rank unobserved items below observed ones; the cheapest
      fit puts every vector close to every other and every score collapses towards the mean
      weight, so its lists drift towards whatever the towers' features happen to favour.

    Added beyond the seed: `id_dropout` (share of user and item ids replaced by "unknown"
    during training, for cold start), `val_max_users` (validation users are sampled down to
    this many, seeded, so an epoch's check stays cheap on big data), `max_examples_per_epoch`
    (an epoch trains on a fresh seeded sample of at most this many pairs, so its cost is
    bounded whatever the retailer's size: at 10x the demo an epoch over every pair took two
    minutes, and early stopping, the comparison loss and the refit run many), `num_threads`
    (torch threads while fitting; None keeps the caller's setting).
    """

    dim: int = 32
    hidden: int = 64
    history_len: int = 10
    loss: Literal["sampled_softmax", "bpr", "mse"] = "sampled_softmax"
    temperature: float = 0.1
    popularity_correction: bool = True
    batch_size: int = 512
    learning_rate: float = 0.01
    weight_decay: float = 1e-6
    max_epochs: int = 30
    patience: int = 3
    val_fraction: float = 0.1
    val_k: int = 12
    seed: int = 42
    id_dropout: float = 0.1
    val_max_users: int | None = 10_000
    max_examples_per_epoch: int | None = 1_000_000
    num_threads: int | None = None

    def for_refit(self, epochs: int) -> TwoTowerParams:
        """The same model trained for exactly `epochs` epochs on every event given to `fit`.

        `val_fraction` 0 means no validation split, so nothing is held out, nothing stops the
        training early and the last epoch is kept; everything else, the seed included, stays.
        """
        return replace(self, max_epochs=epochs, val_fraction=0.0)

    def __post_init__(self) -> None:
        positive = {
            "dim": self.dim,
            "hidden": self.hidden,
            "history_len": self.history_len,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "val_k": self.val_k,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TwoTowerParams.{name} must be a positive integer, got {value!r}")
        if self.loss not in ("sampled_softmax", "bpr", "mse"):
            raise ValueError(
                f"TwoTowerParams.loss must be sampled_softmax, bpr or mse, got {self.loss!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"TwoTowerParams.temperature must be > 0, got {self.temperature}")
        if not self.learning_rate > 0:
            raise ValueError(f"TwoTowerParams.learning_rate must be > 0, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TwoTowerParams.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(
                f"TwoTowerParams.val_fraction must be in [0, 1), got {self.val_fraction}"
            )
        if not 0 <= self.id_dropout < 1:
            raise ValueError(f"TwoTowerParams.id_dropout must be in [0, 1), got {self.id_dropout}")
        for name, value in (
            ("val_max_users", self.val_max_users),
            ("max_examples_per_epoch", self.max_examples_per_epoch),
            ("num_threads", self.num_threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TwoTowerParams.{name} must be None or >= 1, got {value!r}")


@dataclass
class TrainingHistory:
    """What a fit did, for the run report: one entry per epoch run, and the totals.

    `val_recall` holds NaN for every epoch when there was nothing to validate on (then the
    last epoch is kept). `best_epoch` is 1-based. `examples_per_s` counts training examples
    only, over the time spent in training steps.
    """

    train_loss: list[float] = field(default_factory=list)
    val_recall: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    examples_per_s: float = 0.0
    seconds: float = 0.0
    n_pairs: int = 0
    examples_per_epoch: int = 0
    n_fit_events: int = 0
    n_val_pairs: int = 0
    n_val_users: int = 0
    n_dropped_unknown_items: int = 0
    n_dropped_nonpositive_pairs: int = 0

    @property
    def best_val_recall(self) -> float:
        return self.val_recall[self.best_epoch - 1] if self.best_epoch else math.nan


# --- data preparation -----------------------------------------------------------------------


def validation_split(
    interactions: pd.DataFrame,
    val_fraction: float,
    *,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split train interactions into a fit part and the validation truth for early stopping.

    The last `val_fraction` of events by `event_ts` (a stable sort, so equal times keep their
    input order) are held out: like the real hold-out, validation asks about the future.
    The truth is the unique (user, item) pairs of held-out events whose user has fit events
    (a warm user, so the pair tests the model, not cold start) and who did not already have
    the item in the fit part (those are excluded from the lists, so they could never be hit).
    With `max_users`, a seeded sample of that many truth users is kept. Returns
    `(fit, truth)`; `fit` keeps all input columns, `truth` holds `user_id, product_id`.
    """
    n_val = math.ceil(len(interactions) * val_fraction) if val_fraction > 0 else 0
    if n_val == 0:
        empty = interactions[[USER, ITEM]].iloc[:0].reset_index(drop=True)
        return interactions.reset_index(drop=True), empty
    order = np.argsort(_timestamps(interactions), kind="stable")
    fit_rows = np.sort(order[: len(order) - n_val])
    held_rows = np.sort(order[len(order) - n_val :])
    fit = interactions.iloc[fit_rows].reset_index(drop=True)
    # (user, item) as one integer per event: warm users and pairs already seen are set
    # lookups on integers, not on millions of pairs of strings.
    user = pd.factorize(interactions[USER])[0].astype(np.int64)
    item = pd.factorize(interactions[ITEM])[0].astype(np.int64)
    pair = user * (int(item.max(initial=0)) + 1) + item
    _, first = np.unique(pair[held_rows], return_index=True)
    held = held_rows[np.sort(first)]  # each held-out pair once, at its first event
    warm = np.zeros(int(user.max(initial=0)) + 1, dtype=bool)
    warm[user[fit_rows]] = True
    # The fit events on a held-out pair (a hash of the few held-out pairs, probed by every fit
    # event), then which held-out pairs they are.
    fit_pairs = pair[fit_rows]
    on_held = fit_pairs[pd.Series(fit_pairs).isin(pair[held]).to_numpy()]
    keep = warm[user[held]] & ~isin(pair[held], on_held)
    truth = interactions.iloc[held[keep]][[USER, ITEM]]
    if max_users is not None and truth[USER].nunique() > max_users:
        users = np.sort(truth[USER].unique())
        kept = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
        truth = truth[truth[USER].isin(kept)]
    truth = truth.sort_values([USER, ITEM], kind="mergesort").reset_index(drop=True)
    return fit, truth


def _vocabulary(values: pd.Series) -> pd.Index:
    """Sorted distinct non-missing values as strings; position + 1 is the code, 0 unknown."""
    return pd.Index(sorted(values.dropna().astype(str).unique()), dtype=object)


def _codes(vocabulary: pd.Index, values: pd.Series | np.ndarray) -> np.ndarray:
    series = pd.Series(values, dtype=object)
    present = series.notna().to_numpy()
    codes = np.zeros(len(series), dtype=np.int64)
    if present.any():
        codes[present] = vocabulary.get_indexer(series[present].astype(str)) + 1
    return codes


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FashionRecsError(
            f"two-tower: {what} lacks columns {missing}; it has {list(frame.columns)}"
        )


def _item_rows(
    interactions: pd.DataFrame, item_ids: pd.Index, what: str
) -> tuple[pd.DataFrame, int]:
    """Interactions with an `item_row` column, those on products not in the catalogue dropped."""
    _require(interactions, [USER, ITEM, TS], what)
    for column in (USER, ITEM, TS):
        n_missing = int(interactions[column].isna().sum())
        if n_missing:
            raise FashionRecsError(
                f"two-tower: {what} has {n_missing} of {len(interactions)} rows with a missing "
                f"{column!r}; fix or drop them upstream"
            )
    if not pd.api.types.is_datetime64_any_dtype(interactions[TS]):
        raise FashionRecsError(
            f"two-tower: {what} column {TS!r} has dtype {interactions[TS].dtype}, expected "
            "timestamps"
        )
    rows = item_ids.get_indexer(interactions[ITEM].astype(str))
    known = rows >= 0
    n_dropped = int((~known).sum())
    if n_dropped:
        log.warning(
            "two-tower: dropped %d of %d %s rows on products missing from the items frame",
            n_dropped,
            len(interactions),
            what,
        )
    kept = interactions.loc[known].reset_index(drop=True)
    kept[USER] = kept[USER].astype(str)
    kept[ITEM] = kept[ITEM].astype(str)
    kept["item_row"] = rows[known]
    return kept, n_dropped


def _user_item_keys(events: pd.DataFrame) -> tuple[np.ndarray, int, pd.Index]:
    """One integer per event for its (user, item row) pair, ordered like (user id, item
    row): `user code x width + item row`, the user codes into the sorted distinct user ids
    (one hash pass, no per-row string comparison). Returns (keys, width, user ids)."""
    codes, ids = pd.factorize(events[USER], sort=True)
    rows = events["item_row"].to_numpy(np.int64)
    width = int(rows.max(initial=0)) + 1
    keys = codes.astype(np.int64) * width + rows
    return keys, width, pd.Index(np.asarray(ids, dtype=object), dtype=object)


def _summed_pairs(
    events: pd.DataFrame, keys: tuple[np.ndarray, int, pd.Index] | None = None
) -> pd.DataFrame:
    """`user_id, item_row, weight`: each (user, item) pair's summed weight, sorted by user
    id then item row. `keys`: `_user_item_keys(events)` when the caller has them."""
    key, width, ids = keys or _user_item_keys(events)
    # pandas' grouped sum (compensated, in event order) as before, on an integer key.
    summed = pd.Series(events[WEIGHT].to_numpy(np.float64)).groupby(key).sum()
    pair = summed.index.to_numpy(np.int64)
    return pd.DataFrame(
        {
            USER: pd.Series(ids.take(pair // width), dtype=object),
            "item_row": pair % width,
            WEIGHT: summed.to_numpy(),
        }
    )


def _timestamps(events: pd.DataFrame) -> np.ndarray:
    """Event times as int64 (UTC for tz-aware columns), for sorting without Timestamp objects."""
    return pd.DatetimeIndex(events[TS]).asi8


@dataclass(frozen=True)
class _UserState:
    """What interactions tell about users: recent items (history) and every item (known).

    `history[r]` holds user `ids[r]`'s most recent distinct item rows, newest first, -1
    padded; known items are a CSR matrix (`indptr`, `indices`) over item rows.
    """

    ids: pd.Index
    history: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        history_len: int,
        keys: tuple[np.ndarray, int, pd.Index] | None = None,
    ) -> _UserState:
        """`keys`: `_user_item_keys(events)` when the caller has them."""
        key, width, ids = keys or _user_item_keys(events)
        # Each (user, item)'s latest event: events sorted by the pair as one integer, the
        # largest time of each run of equal pairs (sorting and reducing arrays, where a
        # grouped max over millions of rows costs several times more).
        order = np.argsort(key, kind="stable")
        key_sorted = key[order]
        change = np.ones(len(key_sorted), dtype=bool)
        change[1:] = key_sorted[1:] != key_sorted[:-1]
        starts = np.flatnonzero(change)
        pair = key_sorted[starts]
        u, i = pair // width, pair % width
        ts = np.maximum.reduceat(_timestamps(events)[order], starts) if len(starts) else pair
        counts = np.bincount(u, minlength=len(ids))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indices = i

        # Newest first per user, ties by item row (the pairs' order): two stable sorts, by
        # time and then by user; the first `history_len` of each user.
        by_time = np.argsort(-ts, kind="stable")
        recent = by_time[np.argsort(u[by_time], kind="stable")]
        ru = u[recent]
        position = np.arange(len(ru)) - indptr[ru]
        keep = position < history_len
        history = np.full((len(ids), history_len), -1, dtype=np.int64)
        history[ru[keep], position[keep]] = i[recent][keep]
        return cls(ids, history, indptr, indices)

    def rows(self, user_ids: Sequence[str]) -> np.ndarray:
        return self.ids.get_indexer(pd.Index(list(user_ids), dtype=object).astype(str))

    def known_pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `rows`, item row) of every known item of the given state rows."""
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        starts = np.where(valid, self.indptr[safe], 0)
        lengths = np.where(valid, self.indptr[safe + 1], 0) - starts
        positions = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return positions, self.indices[np.repeat(starts, lengths) + offsets]


@dataclass(frozen=True)
class _Demographics:
    """Age group and region codes of the users a users frame describes."""

    ids: pd.Index
    codes: np.ndarray  # (n_users, len(USER_FEATURES)) int64, 0 = unknown

    @classmethod
    def from_frame(cls, users: pd.DataFrame, vocabularies: dict[str, pd.Index]) -> _Demographics:
        _require(users, [USER, *USER_FEATURES], "users")
        if users[USER].isna().any():
            raise FashionRecsError(
                f"two-tower: users has {int(users[USER].isna().sum())} rows without a user_id"
            )
        duplicated = users[USER].astype(str).duplicated()
        if duplicated.any():
            raise FashionRecsError(
                f"two-tower: users has {int(duplicated.sum())} duplicate user_id values (first: "
                f"{users.loc[duplicated.to_numpy(), USER].iloc[0]!r}); a user needs one row"
            )
        codes = np.stack(
            [_codes(vocabularies[c], users[c].to_numpy()) for c in USER_FEATURES], axis=1
        ).reshape(len(users), len(USER_FEATURES))
        return cls(pd.Index(users[USER].astype(str).to_numpy(), dtype=object), codes)

    def lookup(self, user_ids: Sequence[str]) -> np.ndarray:
        rows = self.ids.get_indexer(pd.Index(list(user_ids), dtype=object).astype(str))
        codes = np.zeros((len(rows), len(USER_FEATURES)), dtype=np.int64)
        codes[rows >= 0] = self.codes[rows[rows >= 0]]
        return codes


@dataclass(frozen=True)
class _UserInputs:
    """Tower inputs for a list of users: id code, feature codes, history item-id codes."""

    ids: torch.Tensor  # (n,)
    features: torch.Tensor  # (n, len(USER_FEATURES))
    history: torch.Tensor  # (n, history_len), item-id codes, 0 = empty slot

    def take(self, rows: torch.Tensor) -> _UserInputs:
        return _UserInputs(self.ids[rows], self.features[rows], self.history[rows])


@dataclass(frozen=True)
class _ItemInputs:
    """Tower inputs for the whole catalogue, in `items` row order."""

    ids: torch.Tensor  # (n_items,) item-id codes, 0 = no fit pairs
    features: torch.Tensor  # (n_items, len(ITEM_FEATURES))
    content: torch.Tensor | None  # (n_items, c) float32


# --- the towers -----------------------------------------------------------------------------


def _mlp(n_in: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class _Towers(nn.Module):
    """Both towers; every embedding has `dim` columns and row 0 for "unknown"."""

    def __init__(self, sizes: dict[str, int], content_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        # The id tables grow with the users and the catalogue: their gradients are sparse so a
        # batch costs the rows it touches, not the whole table (see `_Optimizer`).
        self.user_id = nn.Embedding(sizes["user_id"] + 1, dim, sparse=True)
        self.user_features = nn.ModuleList(nn.Embedding(sizes[c] + 1, dim) for c in USER_FEATURES)
        self.item_id = nn.Embedding(sizes["item_id"] + 1, dim, sparse=True)
        self.item_features = nn.ModuleList(nn.Embedding(sizes[c] + 1, dim) for c in ITEM_FEATURES)
        self.content = nn.Linear(content_dim, dim) if content_dim else None
        for embedding in (self.user_id, self.item_id, *self.user_features, *self.item_features):
            nn.init.normal_(embedding.weight, std=0.1)
        self.user_mlp = _mlp((2 + len(USER_FEATURES)) * dim, hidden, dim)
        n_item_parts = 1 + len(ITEM_FEATURES) + (1 if content_dim else 0)
        self.item_mlp = _mlp(n_item_parts * dim, hidden, dim)

    @torch.no_grad()
    def warm_from(
        self,
        other: _Towers,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        same_features: bool,
    ) -> None:
        """Take `other`'s weights: user id row `i + 1` from `other`'s row `user_rows[i]`
        (0: unknown there, kept fresh), item id rows by `item_rows` (new code -> old code,
        0: fresh), the "unknown" rows, and, when the feature vocabularies are the same
        (`same_features`), the feature tables, the content layer and both MLPs."""
        for mine, theirs, rows in (
            (self.user_id, other.user_id, user_rows),
            (self.item_id, other.item_id, item_rows),
        ):
            mine.weight[0] = theirs.weight[0]
            known = np.flatnonzero(rows > 0)
            mine.weight[torch.from_numpy(known + 1)] = theirs.weight[torch.from_numpy(rows[known])]
        if not same_features:
            return
        for mine, theirs in (
            (self.user_features, other.user_features),
            (self.item_features, other.item_features),
            (self.user_mlp, other.user_mlp),
            (self.item_mlp, other.item_mlp),
            (self.content, other.content),
        ):
            if mine is not None and theirs is not None:
                mine.load_state_dict(theirs.state_dict())

    def users(self, inputs: _UserInputs, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors; `leave_out` (item-id codes) drops each user's target from its history."""
        mask = inputs.history > 0
        if leave_out is not None:
            mask = mask & (inputs.history != leave_out[:, None])
        weights = mask.to(torch.float32)
        history = (self.item_id(inputs.history) * weights[..., None]).sum(1)
        history = history / weights.sum(1, keepdim=True).clamp(min=1.0)
        parts = [self.user_id(inputs.ids), history]
        parts += [emb(inputs.features[:, j]) for j, emb in enumerate(self.user_features)]
        return F.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=1)

    def items(
        self, ids: torch.Tensor, features: torch.Tensor, content: torch.Tensor | None
    ) -> torch.Tensor:
        parts = [self.item_id(ids)]
        parts += [emb(features[:, j]) for j, emb in enumerate(self.item_features)]
        if self.content is not None and content is not None:
            parts.append(self.content(content))
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=1)


class _Optimizer:
    """Lazy Adam for the id tables, AdamW for everything else.

    A dense optimizer reads and writes every row of the user and item tables on every batch,
    so an epoch's cost grew with users x catalogue (1,400 examples/s at 200k users and 50k
    items against 41,000 at the demo's size). Sparse Adam updates only the rows a batch
    touched; the id tables get no weight decay (1e-6 by default, immaterial next to the loss).
    """

    def __init__(self, towers: _Towers, learning_rate: float, weight_decay: float) -> None:
        tables = {"user_id.weight", "item_id.weight"}
        named = list(towers.named_parameters())
        self.sparse = torch.optim.SparseAdam([p for n, p in named if n in tables], lr=learning_rate)
        self.dense = torch.optim.AdamW(
            [p for n, p in named if n not in tables], lr=learning_rate, weight_decay=weight_decay
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()


@contextmanager
def _deterministic_torch(seed: int, num_threads: int | None) -> Iterator[None]:
    """Seeded, deterministic torch for the block; the caller's RNG and settings come back."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
            torch.set_num_threads(threads)


def top_k_by_dot(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    excluded: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    block: int = BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top k items per user by dot product, ties to the smaller item row.

    Any embedding recommender needs this, so it takes plain arrays. It scores `block` users
    at a time, so memory is block x n_items floats whatever the number of users, and picks
    exactly: the k-th best score is found with `torch.topk`, and among items tied with it the
    ones with the smaller row win, so the lists never depend on topk's internal order.
    `excluded` is (user row, item row) pairs that may not be recommended; a user left with
    fewer than k items gets fewer. Returns (user row, item row, rank 1..k int32, score
    float64), grouped by user in input order and ranked within each user.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    items = torch.tensor(np.asarray(item_vectors, dtype=np.float32))
    n_users, n_items = len(user_vectors), len(items)
    # Finite vectors give finite scores: no pass over every score to replace NaNs.
    finite = bool(torch.isfinite(items).all()) and bool(
        np.isfinite(np.asarray(user_vectors, dtype=np.float32)).all()
    )
    kk = min(int(k), n_items)
    if excluded is not None:
        # Sorted by user once, so each block finds its pairs by bisection instead of a scan
        # of every pair (which costs blocks x pairs, i.e. grows with users squared).
        by_user = np.argsort(excluded[0], kind="stable")
        excluded = (excluded[0][by_user], excluded[1][by_user])
    out_users, out_items, out_ranks, out_scores = [], [], [], []
    # One score buffer for every block, and the items transposed once: a fresh block x
    # n_items tensor per block is mostly page faults (scoring took 40 % longer that way).
    items_t = items.T.contiguous()
    buffer = torch.empty((min(block, n_users), n_items), dtype=torch.float32)
    started = last_report = time.monotonic()
    for start in range(0, n_users, block):
        stop = min(start + block, n_users)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            last_report = time.monotonic()
            rate = start / (last_report - started)
            log.info(
                "top-k by dot product: %d/%d users against %d items (%.0f users/s, ~%.0f s left)",
                start,
                n_users,
                n_items,
                rate,
                (n_users - start) / rate,
            )
        users = torch.tensor(np.asarray(user_vectors[start:stop], dtype=np.float32))
        scores = torch.matmul(users, items_t, out=buffer[: stop - start])
        if not finite:
            scores = torch.nan_to_num(scores, nan=-math.inf)
        if excluded is not None:
            lo, hi = np.searchsorted(excluded[0], [start, stop])
            scores[
                torch.tensor(excluded[0][lo:hi] - start, dtype=torch.int64),
                torch.tensor(excluded[1][lo:hi], dtype=torch.int64),
            ] = -math.inf
        columns, values = _block_top_k(scores, kk)
        kept = torch.isfinite(values).numpy()
        positions = np.broadcast_to(np.arange(start, stop)[:, None], kept.shape)
        ranks = np.broadcast_to(np.arange(1, kk + 1, dtype=np.int32), kept.shape)
        out_users.append(positions[kept])
        out_items.append(columns.numpy()[kept])
        out_ranks.append(ranks[kept])
        out_scores.append(values.numpy()[kept].astype(np.float64))
    if not out_users:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int32), empty.astype(np.float64)
    return (
        np.concatenate(out_users),
        np.concatenate(out_items),
        np.concatenate(out_ranks),
        np.concatenate(out_scores),
    )


def _block_top_k(scores: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's kk best columns and scores, best first, ties to the smaller column.

    `torch.topk` of kk + 1 settles every row whose kk-th and (kk+1)-th scores differ: its kk
    best are exactly topk's, only put in order. The rare rows with a tie across that boundary
    (identical item vectors, or fewer than kk + 1 finite scores) take the exact path, which
    passes over every score of the row three more times."""
    if kk >= scores.shape[1]:
        return _exact_top_k(scores, kk)
    top = torch.topk(scores, kk + 1, dim=1)
    columns, order = torch.sort(top.indices[:, :kk], dim=1)
    values = top.values[:, :kk].gather(1, order)
    best = torch.sort(values, dim=1, descending=True, stable=True).indices
    columns, values = columns.gather(1, best), values.gather(1, best)
    tie = (top.values[:, kk] == top.values[:, kk - 1]).nonzero()[:, 0]
    if len(tie):
        columns[tie], values[tie] = _exact_top_k(scores[tie], kk)
    return columns, values


def _exact_top_k(scores: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_block_top_k` by brute force: the kk-th best score is the threshold, and among the
    columns tied with it the smaller ones win."""
    threshold = torch.topk(scores, kk, dim=1).values[:, -1:]
    above = scores > threshold
    tied = scores == threshold
    needed = kk - above.sum(1, keepdim=True)
    taken = above | (tied & (tied.cumsum(1) <= needed))
    # nonzero walks row-major, so each row's kk columns come out in column order and a
    # stable sort by score keeps ties in that order.
    columns = taken.nonzero()[:, 1].view(len(scores), kk)
    values = scores.gather(1, columns)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return columns.gather(1, order), values.gather(1, order)


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """What `TwoTowerModel.prepare` derived from the interactions, users and items before any
    training: read only, so models that agree on `key` share it. `seconds`: what preparing
    took (part of each model's `history.seconds`)."""

    key: tuple
    item_ids: pd.Index
    content_dim: int
    vocabularies: dict[str, pd.Index]
    demographics: _Demographics
    truth: pd.DataFrame
    pairs: pd.DataFrame
    user_vocabulary: pd.Index
    item_id_codes: np.ndarray
    sizes: dict[str, int]
    item_inputs: _ItemInputs
    fit_state: _UserState
    state: _UserState
    n_fit_events: int
    n_dropped_unknown_items: int
    n_dropped_nonpositive_pairs: int
    seconds: float

    @staticmethod
    def key_of(params: TwoTowerParams) -> tuple:
        """The parameters preparation depends on: the validation split and history length."""
        return (params.val_fraction, params.val_max_users, params.seed, params.history_len)


class TwoTowerModel:
    """A fitted two-tower model: towers, vocabularies, and what it knows about users.

    Build one with `fit` or `load`. `item_vectors`, `user_vectors` and `recommend` only read
    the model; the history and known items of the users seen in training come from all the
    train interactions given to `fit` (fit part and validation part).
    """

    def __init__(
        self,
        params: TwoTowerParams,
        towers: _Towers,
        item_ids: pd.Index,
        item_vectors: np.ndarray,
        item_id_codes: np.ndarray,
        vocabularies: dict[str, pd.Index],
        demographics: _Demographics,
        state: _UserState,
        history: TrainingHistory,
    ) -> None:
        self.params = params
        self._towers = towers.eval()
        self._item_ids = item_ids
        self._item_vectors = item_vectors
        self._item_id_codes = item_id_codes
        self._vocabularies = vocabularies
        self._demographics = demographics
        self._state = state
        self.history = history

    # --- fitting ----------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        users: pd.DataFrame,
        items: pd.DataFrame,
        params: TwoTowerParams,
        item_content: np.ndarray | None = None,
        warm_start: TwoTowerModel | None = None,
    ) -> TwoTowerModel:
        """Train both towers on `interactions` and return the best epoch's model.

        With `warm_start` (a fitted model), training starts from its weights instead of a
        seeded initialisation: the id rows of the users and items it knows (matched by id),
        and, when its feature vocabularies and content width are these, the feature tables,
        the content layer and both MLPs (`_Towers.warm_from`); new users and items start as a
        fresh model would.

        `interactions`: `user_id, product_id, event_ts, weight`; `users`: `user_id, age_group,
        region`; `items`: `product_id, department, color, target_audience`, whose row order is
        the item order of every output (`item_content` rows align with it). Interactions on
        products not in `items` are dropped and counted in `history`. Raises FashionRecsError
        when nothing is left to learn from.
        """
        data = cls.prepare(interactions, users, items, params, item_content)
        return cls.fit_prepared(data, params, warm_start)

    @staticmethod
    def prepare(
        interactions: pd.DataFrame,
        users: pd.DataFrame,
        items: pd.DataFrame,
        params: TwoTowerParams,
        item_content: np.ndarray | None = None,
    ) -> TrainingData:
        """What `fit` derives from its inputs before it trains (checks, the validation split,
        the summed pairs, vocabularies, the users' histories): several models trained on the
        same inputs with parameters that agree on `TrainingData.key_of` (the comparison losses)
        prepare once and call `fit_prepared` each. The arguments are those of `fit`."""
        started = time.monotonic()
        _require(interactions, [USER, ITEM, TS, WEIGHT], "interactions")
        _require(users, [USER, *USER_FEATURES], "users")
        _require(items, [ITEM, *ITEM_FEATURES], "items")
        if interactions.empty:
            raise FashionRecsError(
                "two-tower: the interactions frame is empty, so there is nothing to learn from; "
                "check the interactions stage and the train split"
            )
        item_ids = _catalogue(items)
        content = _content_matrix(item_content, len(items))
        events, n_dropped = _item_rows(interactions, item_ids, "interactions")
        if events.empty:
            raise FashionRecsError(
                f"two-tower: none of the {len(interactions)} interactions is on a product_id of "
                f"the items frame ({len(items)} products); are the two from the same run?"
            )
        weights = pd.to_numeric(events[WEIGHT], errors="coerce").to_numpy(np.float64)
        if not np.isfinite(weights).all():
            raise FashionRecsError(
                f"two-tower: interactions has {int((~np.isfinite(weights)).sum())} rows whose "
                f"{WEIGHT!r} is missing or not a finite number"
            )

        events[WEIGHT] = weights
        log.info(
            "two-tower: %d events on catalogue products (%d dropped) (%.0f s); splitting off "
            "the validation days",
            len(events),
            n_dropped,
            time.monotonic() - started,
        )
        vocabularies = {c: _vocabulary(users[c]) for c in USER_FEATURES}
        vocabularies |= {c: _vocabulary(items[c]) for c in ITEM_FEATURES}
        demographics = _Demographics.from_frame(users, vocabularies)

        fit_events, truth = validation_split(
            events, params.val_fraction, max_users=params.val_max_users, seed=params.seed
        )
        log.info(
            "two-tower: %d events to fit on, %d validation pairs; summing pairs (%.0f s)",
            len(fit_events),
            len(truth),
            time.monotonic() - started,
        )
        fit_keys = _user_item_keys(fit_events)
        pairs = _summed_pairs(fit_events, fit_keys)
        nonpositive = (pairs[WEIGHT] <= 0).to_numpy()
        if nonpositive.any():
            log.warning(
                "two-tower: dropped %d (user, item) pairs whose summed weight is not positive",
                int(nonpositive.sum()),
            )
            pairs = pairs[~nonpositive].reset_index(drop=True)
        if pairs.empty:
            raise FashionRecsError(
                "two-tower: no (user, item) pair of the fit part has a positive summed weight; "
                "check the interaction weights"
            )

        log.info(
            "two-tower: %d (user, item) pairs summed (%.0f s); vocabularies and the users' "
            "histories next",
            len(pairs),
            time.monotonic() - started,
        )
        user_vocabulary = pd.Index(sorted(pairs[USER].unique()), dtype=object)
        trained_rows = np.sort(pairs["item_row"].unique())
        item_id_codes = np.zeros(len(items), dtype=np.int64)
        item_id_codes[trained_rows] = np.arange(1, len(trained_rows) + 1)
        sizes = {c: len(v) for c, v in vocabularies.items()}
        sizes |= {"user_id": len(user_vocabulary), "item_id": len(trained_rows)}
        item_inputs = _ItemInputs(
            torch.from_numpy(item_id_codes),
            torch.from_numpy(_item_feature_codes(items, vocabularies)),
            None if content is None else torch.tensor(content),
        )
        return TrainingData(
            key=TrainingData.key_of(params),
            item_ids=item_ids,
            content_dim=0 if content is None else content.shape[1],
            vocabularies=vocabularies,
            demographics=demographics,
            truth=truth,
            pairs=pairs,
            user_vocabulary=user_vocabulary,
            item_id_codes=item_id_codes,
            sizes=sizes,
            item_inputs=item_inputs,
            fit_state=_UserState.from_events(fit_events, params.history_len, fit_keys),
            state=_UserState.from_events(events, params.history_len),
            n_fit_events=len(fit_events),
            n_dropped_unknown_items=n_dropped,
            n_dropped_nonpositive_pairs=int(nonpositive.sum()),
            seconds=time.monotonic() - started,
        )

    @classmethod
    def fit_prepared(
        cls,
        data: TrainingData,
        params: TwoTowerParams,
        warm_start: TwoTowerModel | None = None,
    ) -> TwoTowerModel:
        """`fit` on inputs `prepare` made with parameters that agree with `params` on
        `TrainingData.key_of`; the data is only read, so other fits may share it."""
        if data.key != TrainingData.key_of(params):
            raise ValueError(
                f"two-tower: data prepared for {data.key} (val_fraction, val_max_users, seed, "
                f"history_len), not for {TrainingData.key_of(params)}"
            )
        started = time.monotonic()
        pairs, truth = data.pairs, data.truth
        history = TrainingHistory(
            n_pairs=len(pairs),
            n_fit_events=data.n_fit_events,
            n_val_pairs=len(truth),
            n_val_users=int(truth[USER].nunique()),
            n_dropped_unknown_items=data.n_dropped_unknown_items,
            n_dropped_nonpositive_pairs=data.n_dropped_nonpositive_pairs,
        )
        log.info(
            "two-tower (%s): %d pairs of %d users on %d of %d items from %d fit events; "
            "validating on %d pairs of %d users",
            params.loss,
            len(pairs),
            len(data.user_vocabulary),
            data.sizes["item_id"],
            len(data.item_ids),
            data.n_fit_events,
            len(truth),
            history.n_val_users,
        )

        if params.val_fraction == 0:
            log.info(
                "two-tower: no validation split (val_fraction 0); training exactly %d epochs",
                params.max_epochs,
            )
        elif truth.empty:
            log.warning(
                "two-tower: no validation pairs (val_fraction %s, or no warm user came back for "
                "a new item); training all %d epochs and keeping the last",
                params.val_fraction,
                params.max_epochs,
            )
        vocabularies = data.vocabularies
        with _deterministic_torch(params.seed, params.num_threads):
            towers = _Towers(data.sizes, data.content_dim, params.dim, params.hidden)
            if warm_start is not None:
                # Items by product id: the two catalogues need not be in the same order.
                at = warm_start._item_ids.get_indexer(data.item_ids)
                old_codes = np.where(at >= 0, warm_start._item_id_codes[at], 0)
                old_content = warm_start._towers.content
                towers.warm_from(
                    warm_start._towers,
                    user_rows=_codes(
                        warm_start._vocabularies["user_id"],
                        data.user_vocabulary.to_numpy(dtype=object),
                    ),
                    item_rows=_item_code_map(old_codes, data.item_id_codes),
                    same_features=all(
                        warm_start._vocabularies[c].equals(vocabularies[c]) for c in vocabularies
                    )
                    and (0 if old_content is None else old_content.in_features) == data.content_dim,
                )
            model = cls(
                params,
                towers,
                data.item_ids,
                np.zeros((len(data.item_ids), params.dim), dtype=np.float32),
                data.item_id_codes,
                {"user_id": data.user_vocabulary, **vocabularies},
                data.demographics,
                data.fit_state,
                history,
            )
            model._train(pairs, data.item_inputs, truth)
            model._item_vectors = model._compute_item_vectors(data.item_inputs)
        model._state = data.state
        history.seconds = data.seconds + time.monotonic() - started
        best = history.best_val_recall
        log.info(
            "two-tower (%s): kept epoch %d of %d%s after %.1f s",
            params.loss,
            history.best_epoch,
            len(history.train_loss),
            "" if math.isnan(best) else f" (val recall@{params.val_k} {best:.4f})",
            history.seconds,
        )
        return model

    def refit(
        self,
        interactions: pd.DataFrame,
        users: pd.DataFrame,
        items: pd.DataFrame,
        item_content: np.ndarray | None = None,
        epochs: int | None = None,
    ) -> TwoTowerModel:
        """This model trained on `interactions` (all of them, the last days included) for the
        lists that are published.

        Train on the hold-out split with `fit` first (its validation picks the epoch count,
        its lists are scored). With `epochs` None the refit starts afresh and trains for
        the split's best epoch count; with `epochs` it continues from this model's weights
        (`fit`'s `warm_start`) for that many epochs, which costs a fraction of it: the split's
        epochs are not trained again, only the interactions as they now are. Either way: same
        parameters and seed, no validation split and no early stopping
        (`TwoTowerParams.for_refit`), so two refits on the same inputs give the same model.
        The other arguments are those of `fit`.
        """
        best = self.history.best_epoch
        if best < 1:
            raise FashionRecsError(
                "two-tower: this model has no best epoch to refit for (it was loaded without "
                "a training history, or never trained); fit it on the split first"
            )
        warm = epochs is not None
        n_epochs = epochs if warm else best
        log.info(
            "two-tower (%s): refitting on all %d interactions for %d epoch(s) %s",
            self.params.loss,
            len(interactions),
            n_epochs,
            f"from the split's epoch {best}" if warm else "from scratch (best on the split)",
        )
        return type(self).fit(
            interactions,
            users,
            items,
            self.params.for_refit(n_epochs),
            item_content=item_content,
            warm_start=self if warm else None,
        )

    def _train(self, pairs: pd.DataFrame, item_inputs: _ItemInputs, truth: pd.DataFrame) -> None:
        """Run the epochs, validating after each, and leave the best epoch's weights in place."""
        params, history, towers = self.params, self.history, self._towers
        generator = torch.Generator().manual_seed(params.seed)
        optimizer = _Optimizer(towers, params.learning_rate, params.weight_decay)
        fit_users = self._state.ids
        user_inputs = self._user_inputs(fit_users, None, None)
        pair_users = torch.from_numpy(fit_users.get_indexer(pairs[USER].astype(str)))
        pair_items = torch.tensor(pairs["item_row"].to_numpy(np.int64))
        raw_weights = pairs[WEIGHT].to_numpy(np.float64)
        pair_weights = torch.from_numpy((raw_weights / raw_weights.mean()).astype(np.float32))
        mse_targets = torch.from_numpy((raw_weights / raw_weights.max()).astype(np.float32))
        item_share = np.bincount(pairs["item_row"], minlength=len(self._item_ids)) / len(pairs)
        log_q = torch.from_numpy(np.log(np.maximum(item_share, 1e-12)).astype(np.float32))

        val_users = pd.Index(truth[USER].unique(), dtype=object)
        best_state: dict[str, torch.Tensor] | None = None
        best_recall = -math.inf
        bad_epochs = 0
        train_seconds = 0.0
        n_examples = 0
        # Each epoch a fresh seeded sample of the pairs when there are more than the budget
        # (all of them, reshuffled, when there are not).
        n = min(len(pairs), params.max_examples_per_epoch or len(pairs))
        history.examples_per_epoch = n
        if n < len(pairs):
            log.info(
                "two-tower: each epoch trains on %d of the %d pairs (max_examples_per_epoch)",
                n,
                len(pairs),
            )
        for epoch in range(1, params.max_epochs + 1):
            towers.train()
            epoch_started = time.monotonic()
            last_report = epoch_started
            order = torch.randperm(len(pairs), generator=generator)[:n]
            loss_sum = 0.0
            for start in range(0, n, params.batch_size):
                batch = order[start : start + params.batch_size]
                loss = self._batch_loss(
                    user_inputs.take(pair_users[batch]),
                    pair_items[batch],
                    pair_weights[batch],
                    mse_targets[batch],
                    item_inputs,
                    log_q,
                    generator,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(batch)
                now = time.monotonic()
                if now - last_report > PROGRESS_EVERY_S:
                    done = start + len(batch)
                    rate = done / (now - epoch_started)
                    log.info(
                        "two-tower epoch %d: %d of %d examples, %.0f/s, about %.0f s left",
                        epoch,
                        done,
                        n,
                        rate,
                        (n - done) / rate,
                    )
                    last_report = now
            epoch_seconds = time.monotonic() - epoch_started
            train_seconds += epoch_seconds
            n_examples += n
            epoch_loss = loss_sum / n
            history.train_loss.append(epoch_loss)

            towers.eval()
            if not math.isfinite(epoch_loss):
                history.val_recall.append(math.nan)
                if best_state is None:
                    raise FashionRecsError(
                        f"two-tower: training diverged in epoch {epoch} (loss {epoch_loss}) with "
                        f"learning_rate {params.learning_rate}; lower the learning rate"
                    )
                log.warning("two-tower: loss diverged in epoch %d; stopping", epoch)
                history.stopped_early = True
                break
            if len(val_users):
                self._item_vectors = self._compute_item_vectors(item_inputs)
                recs = self.recommend(val_users, params.val_k, exclude_known=True)
                recall = recall_at_k(truth, recs, k=params.val_k)
            else:
                recall = math.nan
            history.val_recall.append(recall)
            # A refit on every interaction has no validation split to report.
            validated = "" if math.isnan(recall) else f", val recall@{params.val_k} {recall:.4f}"
            log.info(
                "two-tower epoch %d/%d: loss %.4f%s, %.0f examples/s",
                epoch,
                params.max_epochs,
                epoch_loss,
                validated,
                n / max(epoch_seconds, 1e-9),
            )
            if math.isnan(recall) or recall > best_recall:
                best_recall = recall
                best_state = copy.deepcopy(towers.state_dict())
                history.best_epoch = epoch
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= params.patience:
                    history.stopped_early = epoch < params.max_epochs
                    break
        if best_state is not None:
            towers.load_state_dict(best_state)
        towers.eval()
        history.examples_per_s = n_examples / max(train_seconds, 1e-9)

    def _batch_loss(
        self,
        user_inputs: _UserInputs,
        items: torch.Tensor,
        weights: torch.Tensor,
        mse_targets: torch.Tensor,
        item_inputs: _ItemInputs,
        log_q: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        params, towers = self.params, self._towers
        item_codes = item_inputs.ids[items]
        user_ids = user_inputs.ids
        if params.id_dropout > 0:
            user_ids = _drop_ids(user_ids, params.id_dropout, generator)
            dropped_item_codes = _drop_ids(item_codes, params.id_dropout, generator)
        else:
            dropped_item_codes = item_codes
        users = towers.users(
            _UserInputs(user_ids, user_inputs.features, user_inputs.history), leave_out=item_codes
        )
        positives = towers.items(
            dropped_item_codes,
            item_inputs.features[items],
            None if item_inputs.content is None else item_inputs.content[items],
        )
        if params.loss == "mse":
            return F.mse_loss((users * positives).sum(1), mse_targets)
        if params.loss == "bpr":
            negatives = torch.randint(len(item_inputs.ids), (len(items),), generator=generator)
            negative_vectors = towers.items(
                item_inputs.ids[negatives],
                item_inputs.features[negatives],
                None if item_inputs.content is None else item_inputs.content[negatives],
            )
            margin = (users * positives).sum(1) - (users * negative_vectors).sum(1)
            return -(weights * F.logsigmoid(margin / params.temperature)).mean()
        logits = users @ positives.T / params.temperature
        if params.popularity_correction:
            logits = logits - log_q[items][None, :]
        # The same item twice in a batch is that row's positive, not a negative.
        duplicate = (items[:, None] == items[None, :]) & ~torch.eye(len(items), dtype=torch.bool)
        logits = logits.masked_fill(duplicate, -math.inf)
        losses = F.cross_entropy(logits, torch.arange(len(items)), reduction="none")
        return (weights * losses).mean()

    # --- reading the model ------------------------------------------------------------------

    def item_vectors(self) -> np.ndarray:
        """(n_items, dim) float32 L2-normalised item vectors, rows in the `items` order of fit."""
        return self._item_vectors.copy()

    def user_vectors(
        self,
        user_ids: Sequence[str],
        users: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """(len(user_ids), dim) float32 L2-normalised user vectors, one row per id given.

        Demographics come from `users` when given, else from the users frame of fit; history
        from `interactions` when given, else from the train interactions of fit. A user not
        seen in training gets the "unknown" id but keeps demographics and history, so a new
        user with a few events already gets a vector near the items they looked at.
        """
        inputs = self._user_inputs(user_ids, users, interactions)
        return self._encode_users(inputs).numpy()

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int,
        exclude_known: bool = True,
        *,
        users: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Each user's top k items by dot product: `user_id, product_id, rank, score`.

        Known items (those the user has in the train interactions of fit, or in
        `interactions` when given, which also replaces the history) are left out when
        `exclude_known`. Users come out in the order given, duplicates dropped; ranks are
        1..k, ties go to the item earlier in `items`, and a user with fewer than k items
        left gets fewer rows. Unknown users are served from their features.
        """
        ids = pd.Index(pd.unique(pd.Series(list(user_ids), dtype=object).astype(str)))
        state = self._state
        if interactions is not None:
            events, _ = _item_rows(interactions, self._item_ids, "interactions")
            state = _UserState.from_events(events, self.params.history_len)
        vectors = self._encode_users(self._user_inputs(ids, users, state)).numpy()
        excluded = state.known_pairs(state.rows(ids)) if exclude_known else None
        positions, items, ranks, scores = top_k_by_dot(vectors, self._item_vectors, k, excluded)
        return pd.DataFrame(
            {
                USER: pd.Series(ids.take(positions), dtype="str"),
                ITEM: pd.Series(self._item_ids.take(items), dtype="str"),
                RANK: ranks.astype(np.int32),
                "score": scores,
            }
        )

    # --- persistence ------------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the model to directory `path` (replaced whole, never half-written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            torch.save(self._towers.state_dict(), build / "towers.pt")
            np.savez(
                build / "arrays.npz",
                item_vectors=self._item_vectors,
                item_id_codes=self._item_id_codes,
                demographic_codes=self._demographics.codes,
                history=self._state.history,
                known_indptr=self._state.indptr,
                known_indices=self._state.indices,
            )
            write_json(
                {
                    "format_version": _FORMAT_VERSION,
                    "params": asdict(self.params),
                    # What training measured (its time, its rate) stays with the run report:
                    # a refit on the same data saves the same bytes.
                    "history": asdict(replace(self.history, seconds=0.0, examples_per_s=0.0)),
                    "content_dim": 0
                    if self._towers.content is None
                    else self._towers.content.in_features,
                    "item_ids": list(self._item_ids),
                    "vocabularies": {k: list(v) for k, v in self._vocabularies.items()},
                    "demographic_ids": list(self._demographics.ids),
                    "state_ids": list(self._state.ids),
                },
                build / "vocabularies.json",
            )
            os.chmod(build, 0o755)
            replace_dir(build, path)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        log.info("two-tower: saved to %s", path)
        return path

    @classmethod
    def load(cls, path: Path) -> TwoTowerModel:
        """Read a model written by `save`."""
        path = Path(path)
        meta_path = path / "vocabularies.json"
        if not meta_path.exists():
            raise FashionRecsError(
                f"two-tower: {path} holds no saved model ({meta_path.name} missing)"
            )
        meta = read_json(meta_path)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise FashionRecsError(
                f"two-tower: {path} was saved in format {meta.get('format_version')}, this code "
                f"reads {_FORMAT_VERSION}; refit the model"
            )
        params = TwoTowerParams(**meta["params"])
        vocabularies = {k: pd.Index(v, dtype=object) for k, v in meta["vocabularies"].items()}
        sizes = {k: len(v) for k, v in vocabularies.items()}
        with np.load(path / "arrays.npz") as arrays:
            item_id_codes = arrays["item_id_codes"]
            sizes["item_id"] = int(item_id_codes.max(initial=0))
            # Building the towers draws initial weights; keep that off the caller's RNG.
            with torch.random.fork_rng(devices=[]):
                towers = _Towers(sizes, meta["content_dim"], params.dim, params.hidden)
            towers.load_state_dict(torch.load(path / "towers.pt", weights_only=True))
            return cls(
                params,
                towers,
                pd.Index(meta["item_ids"], dtype=object),
                arrays["item_vectors"],
                item_id_codes,
                vocabularies,
                _Demographics(
                    pd.Index(meta["demographic_ids"], dtype=object), arrays["demographic_codes"]
                ),
                _UserState(
                    pd.Index(meta["state_ids"], dtype=object),
                    arrays["history"],
                    arrays["known_indptr"],
                    arrays["known_indices"],
                ),
                TrainingHistory(**meta["history"]),
            )

    # --- helpers ----------------------------------------------------------------------------

    def _user_inputs(
        self,
        user_ids: Sequence[str],
        users: pd.DataFrame | None,
        interactions: pd.DataFrame | _UserState | None,
    ) -> _UserInputs:
        ids = [str(u) for u in user_ids]
        demographics = (
            self._demographics
            if users is None
            else _Demographics.from_frame(users, self._vocabularies)
        )
        if interactions is None:
            state = self._state
        elif isinstance(interactions, _UserState):
            state = interactions
        else:
            events, _ = _item_rows(interactions, self._item_ids, "interactions")
            state = _UserState.from_events(events, self.params.history_len)
        rows = state.rows(ids)
        history_rows = np.full((len(ids), self.params.history_len), -1, dtype=np.int64)
        history_rows[rows >= 0] = state.history[rows[rows >= 0]]
        history = np.where(history_rows >= 0, self._item_id_codes[history_rows], 0)
        return _UserInputs(
            torch.from_numpy(_codes(self._vocabularies["user_id"], np.array(ids, dtype=object))),
            torch.from_numpy(demographics.lookup(ids)),
            torch.from_numpy(history),
        )

    def _encode_users(self, inputs: _UserInputs) -> torch.Tensor:
        with torch.inference_mode():
            parts = [
                self._towers.users(inputs.take(torch.arange(s, min(s + BLOCK, len(inputs.ids)))))
                for s in range(0, len(inputs.ids), BLOCK)
            ]
        if not parts:
            return torch.zeros((0, self.params.dim), dtype=torch.float32)
        return torch.cat(parts)

    def _compute_item_vectors(self, item_inputs: _ItemInputs) -> np.ndarray:
        with torch.inference_mode():
            n = len(item_inputs.ids)
            parts = [
                self._towers.items(
                    item_inputs.ids[s : s + BLOCK],
                    item_inputs.features[s : s + BLOCK],
                    None if item_inputs.content is None else item_inputs.content[s : s + BLOCK],
                )
                for s in range(0, n, BLOCK)
            ]
        return torch.cat(parts).numpy().astype(np.float32, copy=True)


def _item_code_map(old_codes: np.ndarray, new_codes: np.ndarray) -> np.ndarray:
    """For each new item-id code (1..n, in order), the old model's code of the same catalogue
    row (0 when the old model did not train that item); both are per catalogue row."""
    n_new = int(new_codes.max()) if len(new_codes) else 0
    out = np.zeros(n_new, dtype=np.int64)
    trained = new_codes > 0
    out[new_codes[trained] - 1] = old_codes[trained]
    return out


def _drop_ids(ids: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """`ids` with a seeded share `rate` replaced by 0 ("unknown"), to train the cold path."""
    keep = torch.rand(len(ids), generator=generator) >= rate
    return torch.where(keep, ids, torch.zeros_like(ids))


def _catalogue(items: pd.DataFrame) -> pd.Index:
    if items.empty:
        raise FashionRecsError("two-tower: the items frame is empty; there is nothing to recommend")
    n_missing = int(items[ITEM].isna().sum())
    if n_missing:
        raise FashionRecsError(f"two-tower: items has {n_missing} rows without a product_id")
    ids = pd.Index(items[ITEM].astype(str).to_numpy(), dtype=object)
    if ids.has_duplicates:
        duplicated = ids[ids.duplicated()]
        raise FashionRecsError(
            f"two-tower: items has {len(duplicated)} duplicate product_id values (first: "
            f"{duplicated[0]!r}); item rows must be unique"
        )
    return ids


def _content_matrix(item_content: np.ndarray | None, n_items: int) -> np.ndarray | None:
    if item_content is None:
        return None
    content = np.ascontiguousarray(item_content, dtype=np.float32)
    if content.ndim != 2 or content.shape[0] != n_items:
        raise FashionRecsError(
            f"two-tower: item_content has shape {content.shape}, expected ({n_items}, c): one "
            "row per row of the items frame"
        )
    if not np.isfinite(content).all():
        raise FashionRecsError(
            f"two-tower: item_content has {int((~np.isfinite(content)).any(axis=1).sum())} rows "
            "with missing or infinite values"
        )
    return content


def _item_feature_codes(items: pd.DataFrame, vocabularies: dict[str, pd.Index]) -> np.ndarray:
    return np.stack(
        [_codes(vocabularies[c], items[c].to_numpy()) for c in ITEM_FEATURES], axis=1
    ).reshape(len(items), len(ITEM_FEATURES))
