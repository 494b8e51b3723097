"""Per-product "frequently bought together" lists: rules first, then labelled fallbacks.

A front-end asks for one product's complements and must always get a full list, so every
catalogue product gets `top_k` entries, drawn in this order and labelled in `source`:

1. `rules`: one-to-one rules from this product, at least `min_pair_count` joint baskets,
   ranked by the configured measure;
2. `co_viewed`: products that shared a basket with it at least `min_coview_count` times,
   ranked by how often (the rules' thresholds cut these; they are still evidence);
3. `audience_popularity`: the most popular products for its target audience;
4. `popularity`: the most popular products overall.

With `exclude_same_department`, products of the same department are left out at every step
(a second pair of jeans substitutes, it does not complement).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashion_recs.config import FbtListsConfig
from fashion_recs.contract import FBT_RECOMMENDATIONS_SCHEMA
from fashion_recs.fbt.matrix import BasketMatrix

SOURCES = ("rules", "co_viewed", "audience_popularity", "popularity")
NO_GROUP = "\x00"


def _rule_candidates(rules: pd.DataFrame, config: FbtListsConfig) -> pd.DataFrame:
    pairs = rules[
        (rules["antecedent_len"] == 1)
        & (rules["consequent_len"] == 1)
        & (rules["n_both"] >= config.min_pair_count)
    ]
    score = pairs[config.rank_by].astype("float64")
    if config.rank_by == "conviction":  # null conviction = the rule never failed: the best
        score = score.fillna(np.inf)
    return pd.DataFrame(
        {
            "product_id": pairs["antecedent"].to_numpy(),
            "recommended_product_id": pairs["consequent"].to_numpy(),
            "score": score.to_numpy(),
            "source": "rules",
            "support": pairs["support"].to_numpy(),
            "confidence": pairs["confidence"].to_numpy(),
            "lift": pairs["lift"].to_numpy(),
        }
    )


def co_viewed(
    matrix: BasketMatrix,
    products: list[str] | np.ndarray,
    min_count: int,
    per_product: int,
    block: int = 2048,
) -> pd.DataFrame:
    """For each product in `products`, up to `per_product` products sharing the most baskets
    (at least `min_count`), computed in blocks of rows so memory stays bounded."""
    position = {p: i for i, p in enumerate(matrix.item_ids.tolist())}
    wanted = np.asarray([position[p] for p in products if p in position], dtype=np.int64)
    frames = []
    if len(wanted) == 0 or matrix.n_baskets == 0:
        return pd.DataFrame(columns=["product_id", "recommended_product_id", "score"])
    XT = matrix.X.T.tocsr()
    X = matrix.X.tocsr()
    for lo in range(0, len(wanted), block):
        rows = wanted[lo : lo + block]
        C = (XT[rows] @ X).tocoo()
        src = rows[C.row]
        keep = (C.col != src) & (C.data >= min_count)
        frame = pd.DataFrame({"r": src[keep], "c": C.col[keep], "n": C.data[keep]})
        frame = frame.sort_values(["r", "n", "c"], ascending=[True, False, True])
        frames.append(frame.groupby("r", sort=False).head(per_product))
    out = pd.concat(frames, ignore_index=True)
    return pd.DataFrame(
        {
            "product_id": matrix.item_ids[out["r"].to_numpy()],
            "recommended_product_id": matrix.item_ids[out["c"].to_numpy()],
            "score": out["n"].to_numpy(dtype=np.float64),
        }
    )


def _popular_fallback(
    catalogue: pd.DataFrame, popularity: pd.Series, group: str | None, depth: int, exclude: bool
) -> pd.DataFrame:
    """Each product's most popular candidates in its group (or overall), skipping its own
    department when `exclude`."""
    pop = catalogue[["product_id", "department", "target_audience"]].copy()
    pop["score"] = pop["product_id"].map(popularity).fillna(0.0).astype("float64")
    pop = pop[pop["score"] > 0].sort_values(["score", "product_id"], ascending=[False, True])
    keys = [group] if group else []
    if exclude:
        keys.append("department")
    if not keys:
        top = pop.head(depth)
        pairs = catalogue[["product_id"]].merge(
            top[["product_id", "score"]].rename(columns={"product_id": "recommended_product_id"}),
            how="cross",
        )
        return pairs
    frames = []
    for values, members in catalogue.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        cand = pop
        key = dict(zip(keys, values, strict=True))
        if group:
            cand = cand[cand[group] == key[group]]
        if exclude:
            cand = cand[cand["department"] != key["department"]]
        top = cand.head(depth)[["product_id", "score"]].rename(
            columns={"product_id": "recommended_product_id"}
        )
        frames.append(members[["product_id"]].merge(top, how="cross"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def recommend(
    rules: pd.DataFrame,
    catalogue: pd.DataFrame,
    matrix: BasketMatrix,
    config: FbtListsConfig,
) -> pd.DataFrame:
    """`top_k` complementary products for every catalogue product (FBT_RECOMMENDATIONS_SCHEMA).

    `catalogue` needs product_id, department and target_audience; `matrix` gives co-views and
    popularity (baskets holding each product).
    """
    k = config.top_k
    catalogue = catalogue[["product_id", "department", "target_audience"]].copy()
    catalogue[["department", "target_audience"]] = catalogue[
        ["department", "target_audience"]
    ].fillna(NO_GROUP)
    dept = catalogue.set_index("product_id")["department"]
    popularity = pd.Series(
        matrix.item_counts().astype(np.float64), index=matrix.item_ids.astype(str)
    )
    depth = 3 * k
    parts = [_rule_candidates(rules, config)]
    parts.append(
        co_viewed(
            matrix, catalogue["product_id"].to_numpy(), config.min_coview_count, depth
        ).assign(source="co_viewed")
    )
    exclude = config.exclude_same_department
    parts.append(
        _popular_fallback(catalogue, popularity, "target_audience", depth, exclude).assign(
            source="audience_popularity"
        )
    )
    parts.append(
        _popular_fallback(catalogue, popularity, None, depth, exclude).assign(source="popularity")
    )
    cand = pd.concat([p for p in parts if len(p)], ignore_index=True)
    cand = cand[
        cand["product_id"].isin(dept.index) & cand["recommended_product_id"].isin(dept.index)
    ]
    cand = cand[cand["product_id"] != cand["recommended_product_id"]]
    if exclude:
        same = (
            cand["product_id"].map(dept).to_numpy()
            == cand["recommended_product_id"].map(dept).to_numpy()
        )
        same &= cand["product_id"].map(dept).to_numpy() != NO_GROUP
        cand = cand[~same]
    cand["priority"] = cand["source"].map({s: i for i, s in enumerate(SOURCES)})
    cand = cand.sort_values(
        ["product_id", "priority", "score", "recommended_product_id"],
        ascending=[True, True, False, True],
        kind="stable",
    )
    cand = cand.drop_duplicates(["product_id", "recommended_product_id"], keep="first")
    top = cand.groupby("product_id", sort=False).head(k).copy()
    top["rank"] = (top.groupby("product_id", sort=False).cumcount() + 1).astype("int32")
    for col in ("support", "confidence", "lift"):
        if col not in top:
            top[col] = np.nan
    top = top.reset_index(drop=True)
    return top[FBT_RECOMMENDATIONS_SCHEMA.names]


def coverage_by_source(lists: pd.DataFrame) -> dict[str, int]:
    """How many list entries each source supplied."""
    return {s: int((lists["source"] == s).sum()) for s in SOURCES}


__all__ = ["FBT_RECOMMENDATIONS_SCHEMA", "SOURCES", "co_viewed", "coverage_by_source", "recommend"]
