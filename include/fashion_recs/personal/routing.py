"""The seed's routing (`process_user`): which list a shopper gets depends on what we know.

- existing user (in the run's interactions, with enough distinct products): the best model
  that passed the quality gate (`recommend_for_existing_user`), topped up from segment
  popularity when the model's list is short;
- new user with one or more events: an item-based list from the products they touched, built
  from each product's candidates (item-kNN co-interactions, FBT, similar products), falling back
  to segment popularity (`recommend_for_new_user_with_events`);
- new user with nothing: popularity in their segment (age group x region, then age group, then
  region) when demographics are known, else overall (`recommend_popular_items`).

The same functions serve one shopper (an HTTP request) and every shopper at once (the task
that materialises `user_recommendations`), so what is published is what a service would say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

ROUTES = ("existing", "new_with_events", "new_without_events")
LIST_COLUMNS = ["user_id", "rank", "product_id", "score", "strategy"]
# Segment levels from most to least specific; `overall` always exists.
SEGMENT_LEVELS = ("age_group_region", "age_group", "region", "overall")


def _known(value: object, unknown: str) -> bool:
    return isinstance(value, str) and value != unknown and value != ""


def segment_level_keys(
    age_group: object, region: object, unknown: str
) -> list[tuple[str, object, object]]:
    """(segment_type, age_group, region) lookups for one shopper, most specific first."""
    keys: list[tuple[str, object, object]] = []
    if _known(age_group, unknown) and _known(region, unknown):
        keys.append(("age_group_region", age_group, region))
    if _known(age_group, unknown):
        keys.append(("age_group", age_group, None))
    if _known(region, unknown):
        keys.append(("region", None, region))
    keys.append(("overall", None, None))
    return keys


def recommend_popular_items(
    popular: pd.DataFrame,
    k: int,
    *,
    age_group: object = None,
    region: object = None,
    unknown: str = "unknown",
) -> pd.DataFrame:
    """The most specific popularity list that exists for the shopper's segment.

    `popular` is the popular_products table; returns `rank, product_id, score, strategy`
    (strategy `popular_<segment level>`).
    """
    for level, ag, rg in segment_level_keys(age_group, region, unknown):
        rows = popular[popular["segment_type"] == level]
        if ag is not None:
            rows = rows[rows["age_group"] == ag]
        if rg is not None:
            rows = rows[rows["region"] == rg]
        if len(rows):
            top = rows.sort_values("rank").head(k)
            return pd.DataFrame(
                {
                    "rank": np.arange(1, len(top) + 1, dtype=np.int32),
                    "product_id": top["product_id"].to_numpy(),
                    "score": top["score"].to_numpy(dtype=np.float64),
                    "strategy": f"popular_{level}",
                }
            )
    return pd.DataFrame(columns=["rank", "product_id", "score", "strategy"])


def segment_popular_lists(
    users: pd.DataFrame, popular: pd.DataFrame, k: int, unknown: str = "unknown"
) -> pd.DataFrame:
    """`recommend_popular_items` for many users at once (user_id, age_group, region)."""
    parts = []
    remaining = users[["user_id", "age_group", "region"]].copy()
    remaining["_order"] = np.arange(len(remaining))
    for level in SEGMENT_LEVELS:
        cols = {
            "age_group_region": ["age_group", "region"],
            "age_group": ["age_group"],
            "region": ["region"],
            "overall": [],
        }[level]
        lists = popular[popular["segment_type"] == level]
        lists = lists[lists["rank"] <= k][[*cols, "rank", "product_id", "score"]]
        eligible = remaining
        for col in cols:
            eligible = eligible[eligible[col].map(lambda v: _known(v, unknown)).to_numpy()]
        served = (
            eligible[["user_id", "_order", *cols]].merge(lists, on=cols, how="inner")
            if cols
            else eligible[["user_id", "_order"]].merge(lists, how="cross")
        )
        served["strategy"] = f"popular_{level}"
        parts.append(served[["_order", "user_id", "rank", "product_id", "score", "strategy"]])
        # By position, not id: `isin` over string ids costs seconds per million served rows.
        remaining = remaining[~remaining["_order"].isin(served["_order"].unique())]
    out = pd.concat(parts, ignore_index=True).sort_values(["_order", "rank"], kind="mergesort")
    return out.drop(columns="_order").astype({"rank": np.int32}).reset_index(drop=True)


def item_candidates(
    sources: Mapping[str, pd.DataFrame], priority: Sequence[str], per_product: int
) -> pd.DataFrame:
    """Per product, the candidates to show someone who touched it, sources merged by priority.

    Each source frame has `product_id, rank, candidate_product_id, score`; duplicates keep their
    highest-priority place; the score is the candidate's reciprocal merged rank, so that
    candidates of several touched products add up comparably.
    """
    parts = []
    for level, name in enumerate(priority):
        frame = sources.get(name)
        if frame is None or frame.empty:
            continue
        parts.append(
            frame[["product_id", "rank", "candidate_product_id"]].assign(_level=level, source=name)
        )
    if not parts:
        return pd.DataFrame(
            columns=["product_id", "rank", "candidate_product_id", "score", "source"]
        )
    merged = pd.concat(parts, ignore_index=True)
    merged = merged[merged["product_id"] != merged["candidate_product_id"]]
    merged = merged.sort_values(["product_id", "_level", "rank"], kind="mergesort")
    merged = merged.drop_duplicates(["product_id", "candidate_product_id"])
    merged["rank"] = (merged.groupby("product_id").cumcount() + 1).astype(np.int32)
    merged = merged[merged["rank"] <= per_product]
    merged["score"] = 1.0 / merged["rank"].astype(np.float64)
    return merged[["product_id", "rank", "candidate_product_id", "score", "source"]].reset_index(
        drop=True
    )


def new_user_lists(touched: pd.DataFrame, candidates: pd.DataFrame, k: int) -> pd.DataFrame:
    """`recommend_for_new_user_with_events` for many users: `touched` has user_id,
    product_id, recency (1 = most recent). A candidate's score sums its reciprocal ranks
    over the touched products, each discounted by how long ago it was touched; products the
    user touched are never recommended back. Lists may be short; callers top them up."""
    joined = touched.merge(candidates, on="product_id", how="inner")
    joined["_score"] = joined["score"] / joined["recency"].astype(np.float64)
    scored = joined.groupby(["user_id", "candidate_product_id"], as_index=False).agg(
        score=("_score", "sum"), source=("source", "first")
    )
    seen = touched[["user_id", "product_id"]].rename(columns={"product_id": "candidate_product_id"})
    scored = scored.merge(
        seen.assign(_seen=True), how="left", on=["user_id", "candidate_product_id"]
    )
    scored = scored[scored["_seen"].isna()]
    scored = scored.sort_values(
        ["user_id", "score", "candidate_product_id"], ascending=[True, False, True]
    )
    scored["rank"] = (scored.groupby("user_id").cumcount() + 1).astype(np.int32)
    scored = scored[scored["rank"] <= k]
    return pd.DataFrame(
        {
            "user_id": scored["user_id"].to_numpy(),
            "rank": scored["rank"].to_numpy(),
            "product_id": scored["candidate_product_id"].to_numpy(),
            "score": scored["score"].to_numpy(dtype=np.float64),
            "strategy": "item_based_" + scored["source"].astype(str).to_numpy(),
        }
    )


def own_item_lists(touched: pd.DataFrame, k: int) -> pd.DataFrame:
    """The shopper's own products, most recent first (`touched`: user_id, product_id, recency):
    on fashion data the strongest list for someone who has touched anything at all."""
    own = touched[touched["recency"] <= k].sort_values(["user_id", "recency"], kind="mergesort")
    return pd.DataFrame(
        {
            "user_id": own["user_id"].to_numpy(),
            "rank": own["recency"].to_numpy(dtype=np.int32),
            "product_id": own["product_id"].to_numpy(),
            "score": 1.0 / own["recency"].to_numpy(dtype=np.float64),
            "strategy": "own_items",
        }
    )


def top_up(lists: pd.DataFrame, fallback: pd.DataFrame, k: int) -> pd.DataFrame:
    """Fill short lists (and users with none) from `fallback`, skipping items already there.

    Both frames have LIST_COLUMNS; users are those of `fallback` plus those of `lists`.
    """
    merged = pd.concat(
        [lists.assign(_level=0), fallback.assign(_level=1)], ignore_index=True
    ).drop_duplicates(["user_id", "product_id"])
    order = pd.Index(pd.concat([lists["user_id"], fallback["user_id"]]).drop_duplicates())
    merged["_user"] = order.get_indexer(merged["user_id"])
    merged = merged.sort_values(["_user", "_level", "rank"], kind="mergesort")
    merged["rank"] = (merged.groupby("_user", sort=False).cumcount() + 1).astype(np.int32)
    merged = merged[merged["rank"] <= k]
    return merged[LIST_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class RoutedList:
    route: str
    strategy: str
    items: pd.DataFrame  # rank, product_id, score, strategy


def process_user(
    user_id: str,
    *,
    product_ids: Sequence[str] = (),
    age_group: object = None,
    region: object = None,
    user_lists: pd.DataFrame,
    candidates: pd.DataFrame,
    popular: pd.DataFrame,
    k: int,
    unknown: str = "unknown",
    own_items_first: bool = True,
) -> RoutedList:
    """Route one shopper: existing (a published list), new with events, or new with nothing.

    `product_ids` are the shopper's recent products, most recent first (for a shopper the run
    has not seen); `user_lists` is the published user_recommendations table. With
    `own_items_first` (known items allowed, `personal.exclude_known: false`, as `route_users`
    does) those products lead the list, most recent first, before the item-based list.
    """
    fallback = recommend_popular_items(
        popular, k, age_group=age_group, region=region, unknown=unknown
    ).assign(user_id=user_id)[LIST_COLUMNS]
    own = user_lists[user_lists["user_id"] == user_id]
    if len(own):
        items = own.sort_values("rank")[LIST_COLUMNS]
        return RoutedList("existing", str(items["strategy"].iloc[0]), _items(items))
    if len(product_ids):
        touched = pd.DataFrame(
            {
                "user_id": user_id,
                "product_id": list(dict.fromkeys(product_ids)),
            }
        )
        touched["recency"] = np.arange(1, len(touched) + 1)
        items = new_user_lists(touched, candidates, k)
        if own_items_first:
            items = top_up(own_item_lists(touched, k), items, k)
        items = top_up(items, fallback, k)
        return RoutedList("new_with_events", _main_strategy(items), _items(items))
    return RoutedList("new_without_events", _main_strategy(fallback), _items(fallback))


def _items(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["rank", "product_id", "score", "strategy"]].reset_index(drop=True)


def _main_strategy(items: pd.DataFrame) -> str:
    return str(items["strategy"].iloc[0]) if len(items) else "none"
