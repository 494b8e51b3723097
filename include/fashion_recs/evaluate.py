"""Offline evaluation shared by every model: a temporal split, ranking metrics and baselines.

Every model of a run is scored the same way, on the same hold-out, beside the same baselines,
so that "this model beats popularity" means something and a model that does not is kept out
of routing. The metrics share one signature, `(truth, predictions, *, user_col, item_col,
rank_col, k) -> float`, so they can be swapped, listed and tested alike.

Conventions every metric follows:

- `truth` holds one row per relevant (user, item) pair; duplicates are ignored.
- `predictions` holds one row per recommended (user, item) pair with an integer rank, 1 being
  the best. A list that repeats an item shows it once, at its best rank; the items are then
  read in (rank, item id) order, so ties are broken by item id and the top k are the first k
  distinct items. Ranks need not be contiguous.
- Scores are averaged over the users in `truth`. A user with no predictions scores 0; users
  who have predictions but no truth do not count. With no users in `truth` a metric is 0.0,
  and `evaluate_all` reports `n_users = 0` so the reader can tell.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fashion_recs.errors import FashionRecsError
from fashion_recs.sort_keys import (
    by_row_value_column,
    distinct,
    in_sorted,
    index_positions,
    isin,
    sorted_codes,
)

log = logging.getLogger(__name__)

USER = "user_id"
ITEM = "product_id"
RANK = "rank"
TS = "event_ts"
WEIGHT = "weight"

# Column order of `evaluate_all`, which is METRICS_SCHEMA's.
METRICS_COLUMNS = ["model", "metric", "k", "value", "n_users"]
# Metric name in the metrics table -> column of `per_user_metrics` it averages.
RANKING_METRICS = {
    "precision": "precision",
    "recall": "recall",
    "map": "average_precision",
    "ndcg": "ndcg",
    "hit_rate": "hit",
}
COVERAGE_METRIC = "catalogue_coverage"


# --- splitting ------------------------------------------------------------------------------


def holdout_cutoff(last_ts: pd.Timestamp, holdout_days: int) -> pd.Timestamp:
    """The first instant of the hold-out: midnight starting the `holdout_days`-th last day.

    The hold-out is whole calendar days, counted back from the day of `last_ts` (the latest
    event), that day included: with events up to some time on 03-10, two days hold out 03-09
    and 03-10, and the cutoff is 03-09 00:00 whether the events are stamped at midnight or
    through the day. Every split of a run (`temporal_split`, the personalisation hold-out)
    takes its cutoff from here, so they cannot disagree. The cutoff keeps `last_ts`'s time
    zone; days are that zone's calendar days.
    """
    if isinstance(holdout_days, bool) or holdout_days < 1:
        raise ValueError(f"holdout_days must be at least 1, got {holdout_days}")
    last_ts = pd.Timestamp(last_ts)
    return last_ts.normalize() + pd.Timedelta(days=1 - holdout_days)


def before_cutoff(interactions: pd.DataFrame, cutoff: pd.Timestamp, ts_col: str = TS) -> np.ndarray:
    """Which events are train events for a split at `cutoff`: strictly before it."""
    return (interactions[ts_col] < cutoff).to_numpy()


def temporal_split(
    interactions: pd.DataFrame,
    holdout_days: int,
    ts_col: str = TS,
    user_col: str = USER,
    *,
    keep_cold_users: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split interactions into train and test: the last `holdout_days` calendar days are test.

    A temporal split is what a daily pipeline faces: the models learn from the past and are
    asked about the days that followed. The cutoff is `holdout_cutoff(max(ts), holdout_days)`;
    events strictly before it are train, events at or after it are test. Test keeps only warm
    users (users with at least one train event), because personalised models cannot be asked
    about users they have never seen; pass `keep_cold_users=True` to evaluate cold-start
    routing instead. Rows keep their input order and all their columns, so the split is
    deterministic.

    Raises FashionRecsError when nothing is left to train on, which means the events fall on
    no more calendar days than the hold-out has.
    """
    _require_columns(interactions, [ts_col, user_col], "interactions")
    if holdout_days < 1:
        raise ValueError(f"holdout_days must be at least 1, got {holdout_days}")
    if not pd.api.types.is_datetime64_any_dtype(interactions[ts_col]):
        raise ValueError(
            f"interactions column {ts_col!r} has dtype {interactions[ts_col].dtype}, "
            "expected timestamps; parse it with pd.to_datetime first"
        )
    _require_no_nulls(interactions, [ts_col, user_col], "interactions")
    if interactions.empty:
        raise FashionRecsError(
            "temporal split: there are no interactions to split; check the interactions stage"
        )

    first_ts = interactions[ts_col].min()
    last_ts = interactions[ts_col].max()
    cutoff = holdout_cutoff(last_ts, holdout_days)
    in_train = before_cutoff(interactions, cutoff, ts_col)
    train = interactions[in_train].reset_index(drop=True)
    test = interactions[~in_train].reset_index(drop=True)
    if train.empty:
        raise FashionRecsError(
            f"temporal split: no interactions before the cutoff {cutoff}: events run from "
            f"{first_ts} to {last_ts}, all within the hold-out of the last {holdout_days} "
            "calendar days; lower holdout_days or wait for more history"
        )

    if not keep_cold_users:
        warm = _is_in(test[user_col], train[user_col])
        n_cold_users = test.loc[~warm, user_col].nunique()
        if n_cold_users:
            log.info(
                "temporal split: dropped %d test events of %d cold users (no train events)",
                int((~warm).sum()),
                n_cold_users,
            )
        test = test[warm].reset_index(drop=True)
    log.info(
        "temporal split at %s: %d train events, %d test events of %d users",
        cutoff,
        len(train),
        len(test),
        test[user_col].nunique(),
    )
    return train, test


def relevant_items(
    test: pd.DataFrame,
    user_col: str = USER,
    item_col: str = ITEM,
    weight_col: str | None = None,
    min_weight: float | None = None,
) -> pd.DataFrame:
    """The truth for the metrics: the unique (user, item) pairs of the test events.

    With `min_weight`, a pair is relevant only if at least one of its events weighs that much,
    so a hold-out can ask "did we predict what they put in the bag" rather than "what they
    looked at". Weights are not summed: ten glances are not a purchase. The result is sorted
    by user and item and holds only the two id columns.
    """
    if min_weight is not None and weight_col is None:
        raise ValueError("relevant_items: min_weight needs weight_col to say which column to read")
    _require_columns(test, [user_col, item_col], "test")
    _require_no_nulls(test, [user_col, item_col], "test")
    events = test
    if min_weight is not None:
        _require_columns(test, [weight_col], "test")
        _require_no_nulls(test, [weight_col], "test")
        events = test[(test[weight_col] >= min_weight).to_numpy()]
    return (
        events[[user_col, item_col]]
        .drop_duplicates()
        .sort_values([user_col, item_col], kind="mergesort")
        .reset_index(drop=True)
    )


# --- ranking metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class _TopK:
    """Top-k lists as integer codes: row j is item `items[item_codes[j]]` at `position[j]`
    of user `users[user_codes[j]]`; rows are grouped by user and ordered by position."""

    users: pd.Index
    user_codes: np.ndarray
    items: pd.Index
    item_codes: np.ndarray
    position: np.ndarray


def _top_k_codes(
    predictions: pd.DataFrame, user_col: str, item_col: str, rank_col: str, k: int
) -> _TopK:
    # Sorting integer codes is several times faster than sorting id strings; the codes are
    # assigned in sorted id order, so ordering by code is ordering by id.
    _check_k(k)
    _require_columns(predictions, [user_col, item_col, rank_col], "predictions")
    _require_no_nulls(predictions, [user_col, item_col, rank_col], "predictions")
    user_codes, users = pd.factorize(predictions[user_col], sort=True)
    item_codes, items = pd.factorize(predictions[item_col], sort=True)
    rank_codes, ranks = pd.factorize(predictions[rank_col], sort=True)
    user_codes = user_codes.astype(np.int64)
    item_codes = item_codes.astype(np.int64)
    n_items, n_ranks = max(len(items), 1), max(len(ranks), 1)
    if len(users) * n_ranks * n_items < 2**62:
        # One packed key sorts in a single pass, several times faster than a lexsort.
        keys = np.sort((user_codes * n_ranks + rank_codes) * n_items + item_codes)
        item_codes = keys % n_items
        user_codes = keys // n_items // n_ranks
    else:
        order = np.lexsort((item_codes, rank_codes, user_codes))
        user_codes = user_codes[order]
        item_codes = item_codes[order]

    # A repeated item keeps its first (best) place in this order.
    distinct = ~pd.Series(user_codes * n_items + item_codes).duplicated().to_numpy()
    user_codes = user_codes[distinct]
    item_codes = item_codes[distinct]

    position = position_in_run(user_codes)
    keep = position <= k
    return _TopK(users, user_codes[keep], items, item_codes[keep], position[keep])


def position_in_run(codes: np.ndarray) -> np.ndarray:
    """1-based position of each element within its run of equal consecutive codes."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, len(codes)])
    return np.arange(len(codes), dtype=np.int64) - np.repeat(starts, lengths) + 1


def top_k(
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> pd.DataFrame:
    """Each user's first k distinct predicted items, with their 1-based `position`.

    This is the one place that decides what "the top k" of a prediction frame is (see the
    module docstring), so every metric, and coverage, reads the same lists. Rows are sorted
    by user id and position.
    """
    top = _top_k_codes(predictions, user_col, item_col, rank_col, k)
    return pd.DataFrame(
        {
            user_col: top.users.take(top.user_codes),
            item_col: top.items.take(top.item_codes),
            "position": top.position,
        }
    )


def per_user_metrics(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> pd.DataFrame:
    """Every ranking metric for every user in `truth`, indexed by user id (sorted).

    Columns: `n_relevant`, `hits` (relevant items in the top k), `precision` (hits / k),
    `recall` (hits / n_relevant), `average_precision` (Kaggle H&M AP@k: the sum of precision
    at each hit's position over min(k, n_relevant)), `ndcg` (binary gains, log2 discount,
    ideal DCG over min(k, n_relevant) hits) and `hit` (1.0 if any hit). The averaged metrics
    are the means of these columns; the report uses the distributions. Everything is
    computed on integer codes with cumulative counts, never a loop over users.
    """
    top = _top_k_codes(predictions, user_col, item_col, rank_col, k)
    return _scores(truth, top, user_col, item_col, k)


def _scores(truth: pd.DataFrame, top: _TopK, user_col: str, item_col: str, k: int) -> pd.DataFrame:
    _require_columns(truth, [user_col, item_col], "truth")
    _require_no_nulls(truth, [user_col, item_col], "truth")
    truth_user_codes, truth_users = pd.factorize(truth[user_col], sort=True)
    truth_item_codes, truth_items = pd.factorize(truth[item_col], sort=True)
    n_truth_items = max(len(truth_items), 1)
    truth_keys = truth_user_codes.astype(np.int64) * n_truth_items + truth_item_codes.astype(
        np.int64
    )
    # `relevant_items` gives the pairs sorted and distinct already: no sort needed then.
    if len(truth_keys) > 1 and not (truth_keys[1:] > truth_keys[:-1]).all():
        truth_keys = distinct(truth_keys)
    n_rel = np.bincount(truth_keys // n_truth_items, minlength=len(truth_users))

    # Translate the predictions' codes into the truth's; -1 marks ids the truth lacks.
    _require_comparable(truth_users, top.users, user_col)
    _require_comparable(truth_items, top.items, item_col)
    users = truth_users.get_indexer(top.users)[top.user_codes]
    items = truth_items.get_indexer(top.items)[top.item_codes]
    known = (users >= 0) & (items >= 0)
    is_hit = np.zeros(len(users), dtype=bool)
    is_hit[known] = in_sorted(truth_keys, users[known] * n_truth_items + items[known])

    return metrics_from_hits(n_rel, users[is_hit], top.position[is_hit], k, truth_users, user_col)


def metrics_from_hits(
    n_relevant: np.ndarray,
    hit_users: np.ndarray,
    hit_positions: np.ndarray,
    k: int,
    users: pd.Index,
    user_col: str = USER,
) -> pd.DataFrame:
    """Every per-user metric from each hit's user code and 1-based position in the top k.

    `n_relevant[u]` is user u's number of relevant items; hits come grouped by user and in
    position order (as the top-k lists are). Shared by `per_user_metrics` and callers that
    score many variants of the same lists on integer codes (the blend's grid).
    """
    # Rows stay grouped by user and ordered by position, so a running count within each
    # user's run of hits is the number of hits so far.
    hit_position = hit_positions.astype(np.float64)
    hits_so_far = position_in_run(hit_users)
    n_users = len(users)
    n_hits = np.bincount(hit_users, minlength=n_users)
    precision_sum = np.bincount(hit_users, weights=hits_so_far / hit_position, minlength=n_users)
    dcg = np.bincount(hit_users, weights=1.0 / np.log2(hit_position + 1.0), minlength=n_users)

    denominator = np.minimum(n_relevant, k)
    ideal_dcg = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))
    return pd.DataFrame(
        {
            "n_relevant": n_relevant.astype(np.int64),
            "hits": n_hits.astype(np.int64),
            "precision": n_hits / k,
            "recall": n_hits / n_relevant,
            "average_precision": precision_sum / denominator,
            "ndcg": dcg / ideal_dcg[denominator - 1],
            "hit": (n_hits > 0).astype(np.float64),
        },
        index=pd.Index(users, name=user_col),
    )


def precision_at_k(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> float:
    """Mean share of the k slots that hold a relevant item (a short list is not excused)."""
    return _mean_of(truth, predictions, "precision", user_col, item_col, rank_col, k)


def recall_at_k(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> float:
    """Mean share of each user's relevant items found in the top k."""
    return _mean_of(truth, predictions, "recall", user_col, item_col, rank_col, k)


def map_at_k(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> float:
    """MAP@k as in the Kaggle H&M competition, so numbers compare with published ones.

    AP@k = sum over positions i <= k of P(i) * rel(i), divided by min(k, n_relevant).
    """
    return _mean_of(truth, predictions, "average_precision", user_col, item_col, rank_col, k)


def ndcg_at_k(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> float:
    """Mean NDCG@k with binary relevance: hits near the top count more (1 / log2(i + 1))."""
    return _mean_of(truth, predictions, "ndcg", user_col, item_col, rank_col, k)


def hit_rate_at_k(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
    k: int = 12,
) -> float:
    """Share of users with at least one relevant item in their top k."""
    return _mean_of(truth, predictions, "hit", user_col, item_col, rank_col, k)


def catalogue_coverage(
    predictions: pd.DataFrame,
    catalogue_size: int,
    item_col: str = ITEM,
    k: int = 12,
    *,
    user_col: str = USER,
    rank_col: str = RANK,
) -> float:
    """Share of the catalogue that appears in at least one user's top k.

    Accuracy alone rewards recommending the same bestsellers to everyone; coverage shows
    it. More distinct items than `catalogue_size` means the size is wrong, and is an error.
    """
    top = _top_k_codes(predictions, user_col, item_col, rank_col, k)
    return _coverage(top, catalogue_size, k)


def _coverage(top: _TopK, catalogue_size: int, k: int) -> float:
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be at least 1, got {catalogue_size}")
    n_items = len(distinct(top.item_codes))
    if n_items > catalogue_size:
        raise ValueError(
            f"predictions recommend {n_items} distinct items in their top {k}, more than the "
            f"catalogue_size of {catalogue_size}; pass the number of items that can be "
            "recommended (catalogue products plus any event-only products)"
        )
    return float(n_items / catalogue_size)


def evaluate_all(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    k: int,
    catalogue_size: int,
    model: str,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
) -> pd.DataFrame:
    """One row per metric for one model, ready to write with METRICS_SCHEMA.

    The top-k lists and per-user scores are computed once and shared by every metric.
    `n_users` is the number of users a metric averages over: users in `truth` for the ranking
    metrics, users with predictions for coverage.
    """
    top = _top_k_codes(predictions, user_col, item_col, rank_col, k)
    scores = _scores(truth, top, user_col, item_col, k)
    names = [*RANKING_METRICS, COVERAGE_METRIC]
    values = [_mean(scores[column]) for column in RANKING_METRICS.values()]
    values.append(_coverage(top, catalogue_size, k))
    n_users = [len(scores)] * len(RANKING_METRICS) + [len(top.users)]

    return pd.DataFrame(
        {
            "model": pd.Series([model] * len(names), dtype="str"),
            "metric": pd.Series(names, dtype="str"),
            "k": pd.Series([k] * len(names), dtype="int32"),
            "value": pd.Series(values, dtype="float64"),
            "n_users": pd.Series(n_users, dtype="int64"),
        },
        columns=METRICS_COLUMNS,
    )


# --- baselines ------------------------------------------------------------------------------


def popularity_predictions(
    train: pd.DataFrame,
    users: Iterable[Any],
    k: int,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    weight_col: str | None = WEIGHT,
    rank_col: str = RANK,
) -> pd.DataFrame:
    """The bar every model must clear: the same k most popular items for every user.

    Popularity is the summed `weight_col` of an item's train events when that column exists
    (so a purchase counts more than a view, as in the models), else the number of events.
    Ties go to the smaller item id. Items a user already bought are kept, since fashion
    shoppers re-buy. Returns `user_col, item_col, rank_col, score`, users in the order given
    (duplicates dropped), ranks 1..k.
    """
    _check_k(k)
    user_ids = _as_users(users, user_col)
    overall = _ranked_items(train, [], k, item_col=item_col, weight_col=weight_col)
    n_items = len(overall)
    picked = overall.iloc[np.tile(np.arange(n_items), len(user_ids))]
    return pd.DataFrame(
        {
            user_col: user_ids.repeat(n_items).to_numpy(),
            item_col: picked[item_col].to_numpy(),
            rank_col: picked[RANK].to_numpy(dtype=np.int32),
            "score": picked["score"].to_numpy(dtype=np.float64),
        }
    ).astype({user_col: user_ids.dtype, item_col: overall[item_col].dtype})


def segment_levels(segment_cols: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The segment levels to fall back through, most specific first, as `(name, columns)`.

    First every column (named `segment`), then the columns with the last one dropped, and so
    on down to the first column alone, then each other column alone, in order. A level of
    several columns is named by its columns joined with `_`, a single column by itself. For
    `["age_group", "region"]`: `segment` (age group x region), `age_group`, `region`; the
    overall ranking, after the last level, is not listed. This is the order the routing
    serves popularity in (`personal.routing.segment_level_keys`).
    """
    columns = list(segment_cols)
    chains = [columns[:n] for n in range(len(columns), 0, -1)]
    chains += [[column] for column in columns if [column] not in chains]
    return [("segment" if cols == columns else "_".join(cols), cols) for cols in chains]


def segment_popularity_predictions(
    train: pd.DataFrame,
    users_frame: pd.DataFrame,
    segment_cols: Sequence[str],
    k: int,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
    weight_col: str | None = WEIGHT,
    rank_col: str = RANK,
) -> pd.DataFrame:
    """Popularity within each user's segment (for example age group x region), level by level.

    This is the cold-start list the routing serves to users with demographics, so it is
    evaluated beside the models and falls back the way the routing does. The levels are
    `segment_levels(segment_cols)`: for `["age_group", "region"]`, age group x region, then
    age group alone, then region alone. A user is served the first level whose columns are all
    known for them (not missing in `users_frame`) and whose group has train events; a user
    served by no level gets the overall ranking. A group's popularity comes from the train
    events of its users in `users_frame`, scored like `popularity_predictions`.

    Every user gets k items when the train data has k: a group with fewer than k items is
    topped up with the overall ranking (skipping items it already has). Returns `user_col,
    item_col, rank_col, score, source`, where `source` names the ranking the item and its
    score came from: `segment` (every column), a level's name from `segment_levels`
    (`age_group`, `region`) or `overall` (the top-up or the last fallback). Users come in
    `users_frame` order, ranks 1..k. Logs how many users each level served, and warns about
    a column unknown for every user (such as a region the data source lacks), since its
    levels then serve nobody.
    """
    _check_k(k)
    segment_cols = list(segment_cols)
    if not segment_cols:
        raise ValueError("segment_cols is empty; use popularity_predictions for one ranking")
    _require_columns(users_frame, [user_col, *segment_cols], "users_frame")
    _require_columns(train, [user_col], "train")
    users = users_frame[[user_col, *segment_cols]].reset_index(drop=True)
    _require_no_nulls(users, [user_col], "users_frame")
    duplicated = users[user_col].duplicated()
    if duplicated.any():
        raise ValueError(
            f"users_frame has {int(duplicated.sum())} duplicate {user_col!r} values (first: "
            f"{users.loc[duplicated, user_col].iloc[0]!r}); a user needs exactly one segment"
        )
    for column in segment_cols:
        if len(users) and users[column].isna().all():
            log.warning(
                "segment popularity: %r is unknown for all %d users, so no level using it "
                "serves anyone; check the demographics stage or drop it from the segments",
                column,
                len(users),
            )

    _require_columns(train, [item_col], "train")
    _require_no_nulls(train, [item_col], "train")
    # Items as a categorical with sorted categories: every ranking below groups and breaks
    # ties on its integer codes, in the ids' own order, instead of hashing and comparing
    # millions of id strings once per level. The ids come back at the end.
    item_dtype = train[item_col].dtype
    codes, uniques = sorted_codes(train[item_col])
    items = pd.Categorical.from_codes(codes, categories=uniques)
    scored = pd.DataFrame({item_col: items}, index=train.index)
    if weight_col is not None and weight_col in train.columns:
        scored[weight_col] = train[weight_col]
    overall = _ranked_items(scored, [], k, item_col=item_col, weight_col=weight_col)
    # Each train event takes its user's segment columns by the user's position (an inner
    # join on the user id that keeps the train order, without merging on strings).
    at = index_positions(train[user_col], pd.Index(users[user_col]))
    of_user = at >= 0
    events = scored[of_user].reset_index(drop=True)
    for column in segment_cols:
        codes, labels = pd.factorize(users[column], use_na_sentinel=True)
        events[column] = pd.Categorical.from_codes(codes[at[of_user]], categories=labels)

    columns = ["_order", user_col, item_col, RANK, "score", "source"]
    remaining = users.assign(_order=np.arange(len(users)))
    parts, served_by = [], {}
    for level, cols in segment_levels(segment_cols):
        # An event whose user lacks one of `cols` is in no group (`_ranked_items`).
        lists = _group_lists(events, cols, overall, k, level, item_col, weight_col)
        known = remaining[remaining[cols].notna().all(axis=1).to_numpy()]
        served = known[[user_col, "_order", *cols]].merge(lists, on=cols, how="inner")
        parts.append(served[columns])
        is_served = isin(remaining["_order"].to_numpy(), served["_order"].to_numpy())
        served_by[level] = int(is_served.sum())
        remaining = remaining[~is_served]
    parts.append(remaining.merge(overall.assign(source="overall"), how="cross")[columns])
    served_by["overall"] = len(remaining)
    log.info(
        "segment popularity over %s: users served by level: %s (of %d)",
        segment_cols,
        ", ".join(f"{level} {n}" for level, n in served_by.items()),
        len(users),
    )

    result = (
        pd.concat(parts, ignore_index=True)
        .sort_values(["_order", RANK], kind="mergesort")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    result[item_col] = np.asarray(items.categories)[result[item_col].cat.codes.to_numpy()]
    return result.astype({RANK: np.int32, "score": np.float64, item_col: item_dtype}).rename(
        columns={RANK: rank_col}
    )


def _group_lists(
    events: pd.DataFrame,
    cols: list[str],
    overall: pd.DataFrame,
    k: int,
    source: str,
    item_col: str,
    weight_col: str | None,
) -> pd.DataFrame:
    """The top k items of each group of `cols` with train events, short lists topped up from
    the overall ranking: `cols, item, score, rank, source`."""
    by_group = _ranked_items(events, cols, k, item_col=item_col, weight_col=weight_col)
    # The overall top k always has enough items that the group does not already hold.
    padding = by_group[cols].drop_duplicates().merge(overall, how="cross")
    candidates = pd.concat(
        [
            by_group.assign(source=source, _priority=0),
            padding.assign(source="overall", _priority=1),
        ],
        ignore_index=True,
    )
    candidates = candidates.sort_values(
        [*cols, "_priority", RANK], kind="mergesort"
    ).drop_duplicates([*cols, item_col], keep="first")
    candidates[RANK] = candidates.groupby(cols, sort=False).cumcount() + 1
    return candidates[candidates[RANK] <= k].drop(columns="_priority")


# --- helpers --------------------------------------------------------------------------------


def _ranked_items(
    events: pd.DataFrame,
    by: list[str],
    k: int,
    *,
    item_col: str,
    weight_col: str | None,
) -> pd.DataFrame:
    """The top k items per group of `by` (all events when empty): `by, item, score, rank`.

    Groups and items are mapped to integer codes in their sort order (`sorted_codes`), each
    (group, item) pair to one integer, and the scores summed by `np.bincount`: the grouped
    sum and sort that pandas runs on the id strings took 5 s at 15M events. Rows are in
    group order, then score descending, ties to the smaller item, as a group-by, sum and
    stable sort on the columns themselves give them; a row missing a `by` value belongs to
    no group.
    """
    _require_columns(events, [*by, item_col], "train")
    _require_no_nulls(events, [item_col], "train")
    weights = None
    if weight_col is not None and weight_col in events.columns:
        _require_no_nulls(events, [weight_col], "train")
        weights = events[weight_col].to_numpy(dtype=np.float64)
    columns = [*by, item_col]
    encoded = [sorted_codes(events[column]) for column in columns]
    sizes = [max(len(uniques), 1) for _, uniques in encoded]
    key = np.zeros(len(events), dtype=np.int64)
    known = np.ones(len(events), dtype=bool)
    for (codes, _), size in zip(encoded, sizes, strict=True):
        key = key * size + codes
        known &= codes >= 0
    if not known.all():
        key = key[known]
        weights = None if weights is None else weights[known]
    n_keys = int(np.prod(sizes, dtype=np.float64))
    if n_keys <= max(4 * len(key), 1 << 20):  # a dense tally is cheaper than sorting keys
        present = np.flatnonzero(np.bincount(key, minlength=n_keys))
        totals = np.bincount(key, weights=weights, minlength=n_keys)[present]
    else:
        present, inverse = np.unique(key, return_inverse=True)
        totals = np.bincount(inverse, weights=weights, minlength=len(present))
    n_items = sizes[-1]
    group, item = np.divmod(present, n_items)
    order = by_row_value_column(group, totals, item)
    group, item, totals = group[order], item[order], totals[order].astype(np.float64)
    rank = position_in_run(group)
    keep = rank <= k
    group, item, totals, rank = group[keep], item[keep], totals[keep], rank[keep]
    out: dict[str, Any] = {}
    for column, (_, uniques), size in zip(by[::-1], encoded[-2::-1], sizes[-2::-1], strict=True):
        group, digit = np.divmod(group, size)
        out[column] = _values_at(events[column], uniques, digit)
    result = pd.DataFrame({c: out[c] for c in by})
    result[item_col] = _values_at(events[item_col], encoded[-1][1], item)
    result["score"] = totals
    result[RANK] = rank
    return result


def _values_at(column: pd.Series, uniques: pd.Index, codes: np.ndarray) -> pd.Series:
    """The values `codes` stand for (from `sorted_codes`), in `column`'s dtype."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical.from_codes(codes, dtype=column.dtype))
    return pd.Series(uniques.take(codes), dtype=column.dtype)


def _mean_of(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    column: str,
    user_col: str,
    item_col: str,
    rank_col: str,
    k: int,
) -> float:
    scores = per_user_metrics(
        truth, predictions, user_col=user_col, item_col=item_col, rank_col=rank_col, k=k
    )
    return _mean(scores[column])


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else 0.0


def _as_users(users: Iterable[Any], user_col: str) -> pd.Series:
    series = users if isinstance(users, pd.Series) else pd.Series(list(users))
    if series.isna().any():
        raise ValueError(f"users: {int(series.isna().sum())} missing {user_col!r} values")
    return series.drop_duplicates().reset_index(drop=True)


def _is_in(values: pd.Series, reference: pd.Series) -> np.ndarray:
    # Series.isin on Arrow-backed strings walks the values in Python; a hash lookup does not.
    return index_positions(values, pd.Index(reference.unique())) >= 0


def _require_comparable(truth_ids: pd.Index, predicted_ids: pd.Index, column: str) -> None:
    """Ids of different kinds (numbers against strings) never match: say so, do not score 0."""
    if len(truth_ids) == 0 or len(predicted_ids) == 0:
        return
    if pd.api.types.is_numeric_dtype(truth_ids) != pd.api.types.is_numeric_dtype(predicted_ids):
        raise ValueError(
            f"truth and predictions hold {column!r} of different kinds ({truth_ids.dtype} and "
            f"{predicted_ids.dtype}), so no prediction could ever match; cast one to the other"
        )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(frame.columns)}")


def _require_no_nulls(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    for column in columns:
        n_missing = int(frame[column].isna().sum())
        if n_missing:
            raise ValueError(
                f"{what} has {n_missing} of {len(frame)} rows with a missing {column!r}; "
                "drop or fill them before evaluating"
            )
