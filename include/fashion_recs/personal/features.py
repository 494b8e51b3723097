"""Features of (user, candidate) pairs for the ranker, from the history before a cutoff only.

Most of what is left after candidate generation is in ordering the candidates, and what orders
them on fashion data is how recently and how often the shopper touched the item or its design,
how the item sells now and whether it is rising, and how the item fits the shopper's usual
price and departments. Every feature is computed from a `History` (strictly before its cutoff),
so a label window never leaks into its own features (tests/personal pin this).

Missing values stay NaN (LightGBM learns a direction for them): a source that did not propose
the item, an item the user never touched, a price the catalogue lacks. Like the candidates,
everything is computed on integer codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashion_recs.personal.candidates import SEGMENT_COLUMNS, CandidateInputs, History
from fashion_recs.sort_keys import distinct

ITEM_FEATURES = [
    "item_pop_1d",
    "item_pop_7d",
    "item_pop_28d",
    "item_trend",
    "item_age_days",
    "item_days_since_last",
    "item_users_7d",
]
USER_ITEM_FEATURES = [
    "ui_events",
    "ui_decayed",
    "ui_max_weight",
    "ui_days_since_last",
    "ui_own_rank",
    "ug_events",
    "ug_days_since_last",
    "ug_items",
]
USER_FEATURES = ["u_events", "u_items", "u_days_since_last", "u_active_days", "u_age_group"]
FIT_FEATURES = ["price_ratio", "dept_share", "n_sources"]


def feature_names(sources: Sequence[str]) -> list[str]:
    """The ranker's feature columns, in a fixed order, for the configured sources."""
    per_source = [f"{kind}_{s}" for s in sources for kind in ("rank", "score")]
    return [*per_source, *ITEM_FEATURES, *USER_ITEM_FEATURES, *USER_FEATURES, *FIT_FEATURES]


def _lookup(keys_sorted: np.ndarray, values: np.ndarray, keys: np.ndarray, fill: float):
    """values[position of key in keys_sorted], `fill` where a key is absent."""
    out = np.full(len(keys), fill, dtype=np.float64)
    if len(keys_sorted) == 0:
        return out
    pos = np.minimum(np.searchsorted(keys_sorted, keys), len(keys_sorted) - 1)
    found = keys_sorted[pos] == keys
    out[found] = values[pos[found]]
    return out


def _group_stats(keys: np.ndarray, days: np.ndarray, weights: np.ndarray):
    """Sorted unique keys with the count, min days and summed weights of their rows."""
    order = np.argsort(keys, kind="stable")
    keys, days, weights = keys[order], days[order], weights[order]
    if len(keys) == 0:
        empty = np.zeros(0)
        return keys, empty, empty, empty
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    count = np.diff(np.r_[starts, len(keys)]).astype(np.float64)
    return (
        keys[starts],
        count,
        np.minimum.reduceat(days, starts),
        np.add.reduceat(weights, starts),
    )


def _item_features(history: History, item: np.ndarray) -> dict[str, np.ndarray]:
    per_item = history.memo("item_features", lambda: _per_item(history))
    return {name: values[item] for name, values in per_item.items()}


def _per_item(history: History) -> dict[str, np.ndarray]:
    """Each item feature for every item of the catalogue."""
    n = history.n_items
    pop = {d: history.popularity(d) for d in (1.0, 7.0, 14.0, 28.0)}
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    if len(history.item):
        oldest = np.full(n, -np.inf)
        np.maximum.at(oldest, history.item, history.days)
        newest = np.full(n, np.inf)
        np.minimum.at(newest, history.item, history.days)
        seen = np.isfinite(oldest)
        first[seen], last[seen] = oldest[seen], newest[seen]
    week = history.days <= 7.0
    pairs = distinct(history.user[week] * n + history.item[week])
    users_7d = np.bincount(pairs % n, minlength=n).astype(np.float64)
    previous_week = pop[14.0] - pop[7.0]
    return {
        "item_pop_1d": pop[1.0],
        "item_pop_7d": pop[7.0],
        "item_pop_28d": pop[28.0],
        "item_trend": (pop[7.0] + 1.0) / (previous_week + 1.0),
        "item_age_days": first,
        "item_days_since_last": last,
        "item_users_7d": users_7d,
    }


def _user_item_features(
    history: History, inputs: CandidateInputs, user: np.ndarray, item: np.ndarray
) -> dict[str, np.ndarray]:
    own = history.own
    pos = own.position(user, item)
    found = pos >= 0
    p = pos[found]

    def owned(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(len(user), fill, dtype=np.float64)
        out[found] = values[p]
        return out

    n_groups = int(inputs.group.max()) + 1 if len(inputs.group) else 1

    def own_groups():
        own_group_key = own.user * n_groups + inputs.group[own.item]
        return _group_stats(own_group_key, own.days_since_last, own.n_events)

    keys, n_items, since, events = history.memo(("own_groups", id(inputs)), own_groups)
    pair_group_key = user * n_groups + inputs.group[item]
    return {
        "ui_events": owned(own.n_events, 0.0),
        "ui_decayed": owned(own.decayed, 0.0),
        "ui_max_weight": owned(own.max_weight, 0.0),
        "ui_days_since_last": owned(own.days_since_last, np.nan),
        "ui_own_rank": owned(own.rank.astype(np.float64), np.nan),
        "ug_events": _lookup(keys, events, pair_group_key, 0.0),
        "ug_days_since_last": _lookup(keys, since, pair_group_key, np.nan),
        "ug_items": _lookup(keys, n_items, pair_group_key, 0.0),
    }


def _user_features(
    history: History, inputs: CandidateInputs, user: np.ndarray, item: np.ndarray
) -> dict[str, np.ndarray]:
    per_user = history.memo(("user_features", id(inputs)), lambda: _per_user(history, inputs))
    n_depts = int(inputs.department.max()) + 2 if len(inputs.department) else 2
    keys, dept_events = per_user["dept_keys"], per_user["dept_events"]
    events = per_user["u_events"]
    pair_dept = user * n_depts + (inputs.department[item] + 1)
    return {
        "u_events": events[user],
        "u_items": per_user["u_items"][user],
        "u_days_since_last": per_user["u_days_since_last"][user],
        "u_active_days": per_user["u_active_days"][user],
        "u_age_group": per_user["u_age_group"][user],
        "price_ratio": inputs.price[item] / per_user["usual_price"][user],
        "dept_share": _lookup(keys, dept_events, pair_dept, 0.0) / np.maximum(events[user], 1.0),
    }


def _per_user(history: History, inputs: CandidateInputs) -> dict[str, np.ndarray]:
    """Each user feature for every user of the history, and the (user, department) event
    counts the department share reads."""
    n_users = history.n_users
    events = np.bincount(history.user, minlength=n_users).astype(np.float64)
    items = np.bincount(history.own.user, minlength=n_users).astype(np.float64)
    since = np.full(n_users, np.inf)
    np.minimum.at(since, history.user, history.days)
    since[~np.isfinite(since)] = np.nan
    day = np.floor(history.days).astype(np.int64)
    active = distinct(history.user * (int(day.max()) + 1 if len(day) else 1) + day)
    n_days = int(day.max()) + 1 if len(day) else 1
    active_days = np.bincount(active // n_days, minlength=n_users).astype(np.float64)

    segments = inputs.segments.set_index("user_id")[SEGMENT_COLUMNS[0]]
    age = segments.reindex(history.matrix.users)
    labels = pd.Index(sorted(segments.dropna().unique()))
    age_code = labels.get_indexer(age).astype(np.float64)
    age_code[age_code < 0] = np.nan

    # The user's usual price: the median price of their own items.
    own = history.own
    price = inputs.price[own.item]
    frame = pd.DataFrame({"user": own.user, "price": price})
    usual = frame.groupby("user", sort=False)["price"].median()
    usual_price = np.full(n_users, np.nan)
    usual_price[usual.index.to_numpy()] = usual.to_numpy()

    n_depts = int(inputs.department.max()) + 2 if len(inputs.department) else 2
    dept_key = history.user * n_depts + (inputs.department[history.item] + 1)
    keys, dept_events, _, _ = _group_stats(dept_key, history.days, history.weight)
    return {
        "u_events": events,
        "u_items": items,
        "u_days_since_last": since,
        "u_active_days": active_days,
        "u_age_group": age_code,
        "usual_price": usual_price,
        "dept_keys": keys,
        "dept_events": dept_events,
    }


def build_features(
    candidates: pd.DataFrame, history: History, inputs: CandidateInputs, sources: Sequence[str]
) -> pd.DataFrame:
    """`user, item` (codes) and `feature_names(sources)` for every distinct candidate pair,
    sorted by user then item."""
    n = history.n_items
    key = candidates["user"].to_numpy(np.int64) * n + candidates["item"].to_numpy(np.int64)
    pairs, inverse = np.unique(key, return_inverse=True)
    user, item = pairs // n, pairs % n
    columns: dict[str, np.ndarray] = {"user": user, "item": item}
    source = candidates["source"].to_numpy()
    rank = candidates["source_rank"].to_numpy(np.float64)
    score = candidates["source_score"].to_numpy(np.float64)
    for name in sources:
        mine = source == name
        for kind, values in (("rank", rank), ("score", score)):
            column = np.full(len(pairs), np.nan)
            column[inverse[mine]] = values[mine]
            columns[f"{kind}_{name}"] = column
    columns.update(_item_features(history, item))
    columns.update(_user_item_features(history, inputs, user, item))
    columns.update(_user_features(history, inputs, user, item))
    columns["n_sources"] = np.bincount(inverse, minlength=len(pairs)).astype(np.float64)
    return pd.DataFrame(columns)[["user", "item", *feature_names(sources)]]
