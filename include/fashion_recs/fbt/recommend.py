"""Per-product "frequently bought together" lists: one ranking over all the evidence.

A front-end asks for one product's complements and must always get a full list, so every
catalogue product gets `top_k` entries. Every candidate b of a product a is scored by one
number, its confidence shrunk toward popularity,

    score(a -> b) = (n_ab + shrinkage * p_b) / (n_a + shrinkage),   p_b = n_b / n_baskets,

the estimate of "a basket holding a also holds b" that trusts a pair as far as its baskets
allow. A product that never shared a basket with a scores its prior, so the popularity pad
sits on the same scale as the evidence: a pair seen twice with a rare product outranks a
staple only when the counts say so. Mining thresholds (`min_support`, `min_lift`) shape which
rules are mined and labelled, never what outranks stronger co-occurrence (real baskets showed
lift-first lists losing to plain popularity). Entries are labelled in `source`:

1. `rules`: the pair is a mined one-to-one rule with at least `min_pair_count` joint baskets;
2. `co_viewed`: the products shared at least `min_coview_count` baskets;
3. `audience_popularity`: a pad from the most popular products of the product's audience;
4. `popularity`: a pad from the most popular products overall.

With `exclude_same_department`, products of the same department go after every other
candidate (a second pair of jeans substitutes, it does not complement) but still fill a list
that would otherwise be short; a product without a department is in no department.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fashion_recs.config import FbtListsConfig
from fashion_recs.contract import FBT_RECOMMENDATIONS_SCHEMA
from fashion_recs.evaluate import position_in_run
from fashion_recs.fbt.matrix import BasketMatrix

log = logging.getLogger(__name__)

SOURCES = ("rules", "co_viewed", "audience_popularity", "popularity")
NO_GROUP = "\x00"


def _rule_pairs(rules: pd.DataFrame, min_pair_count: int) -> pd.MultiIndex:
    pairs = rules[
        (rules["antecedent_len"] == 1)
        & (rules["consequent_len"] == 1)
        & (rules["n_both"] >= min_pair_count)
    ]
    return pd.MultiIndex.from_arrays(
        [pairs["antecedent"].astype(str), pairs["consequent"].astype(str)]
    )


def co_viewed(
    matrix: BasketMatrix,
    products: list[str] | np.ndarray,
    min_count: int,
    per_product: int,
    max_block_entries: int = 8_000_000,
    *,
    shrinkage: float = 0.0,
    department: np.ndarray | None = None,
) -> pd.DataFrame:
    """For each product in `products`, up to `per_product` products sharing its baskets (at
    least `min_count`), best shrunk confidence first. With `department` (a code per matrix
    item, "" for none), same-department candidates are marked `demoted` and kept only after
    the others.

    Rows are taken in blocks whose co-occurrence entries (bounded by the sum of the sizes of
    each product's baskets) stay under `max_block_entries`, and each block keeps only each
    row's best `per_product` of either kind: a popular product shares baskets with most of
    the catalogue, so a fixed number of rows per block held hundreds of millions of entries
    at 3M baskets and 50k products.

    Columns: product_id, recommended_product_id, score, n_both, n_antecedent, demoted.
    """
    position = {p: i for i, p in enumerate(matrix.item_ids.tolist())}
    wanted = np.asarray([position[p] for p in products if p in position], dtype=np.int64)
    columns = ["product_id", "recommended_product_id", "score", "n_both", "n_antecedent"]
    if len(wanted) == 0 or matrix.n_baskets == 0:
        return pd.DataFrame(columns=[*columns, "demoted"])
    counts = matrix.item_counts().astype(np.float64)
    prior = counts / matrix.n_baskets
    XT = matrix.X.T.tocsr()
    X = matrix.X.tocsr()
    # Upper bound of each row's entries: the summed sizes of the baskets holding the product.
    bound = np.asarray(XT[wanted] @ matrix.basket_sizes().astype(np.float64)).ravel()
    parts = []
    for rows in _blocks(wanted, bound, max_block_entries):
        C = (XT[rows] @ X).tocoo()
        src = rows[C.row]
        keep = (C.col != src) & (C.data >= min_count)
        r, c, n = src[keep], C.col[keep].astype(np.int64), C.data[keep].astype(np.float64)
        score = (n + shrinkage * prior[c]) / (counts[r] + shrinkage)
        demoted = (
            (department[r] == department[c]) & (department[r] != "")
            if department is not None
            else np.zeros(len(r), dtype=bool)
        )
        # Within each row: the others first, then better score, then lower column.
        order = np.lexsort((c, -score, demoted, r))
        r, c, n, score, demoted = r[order], c[order], n[order], score[order], demoted[order]
        best = position_in_run(r) <= per_product
        parts.append((r[best], c[best], n[best], score[best], demoted[best]))
    r, c, n, score, demoted = (np.concatenate(x) for x in zip(*parts, strict=True))
    # Rows in the order asked, as the blocks were cut from `wanted` in that order.
    return pd.DataFrame(
        {
            "product_id": matrix.item_ids[r],
            "recommended_product_id": matrix.item_ids[c],
            "score": score,
            "n_both": n,
            "n_antecedent": counts[r],
            "demoted": demoted.astype(bool),
        }
    )


def _blocks(rows: np.ndarray, bound: np.ndarray, budget: int) -> list[np.ndarray]:
    """`rows` cut, in order, into runs whose summed `bound` stays under `budget` (at least
    one row each)."""
    blocks, start, total = [], 0, 0.0
    for i, b in enumerate(bound.tolist()):
        if i > start and total + b > budget:
            blocks.append(rows[start:i])
            start, total = i, 0.0
        total += b
    blocks.append(rows[start:])
    return blocks


def _pads(
    catalogue: pd.DataFrame, popularity: pd.Series, depth: int, exclude: bool
) -> pd.DataFrame:
    """Each product's popularity pad: its audience's and the overall most popular products,
    `depth` of them outside its own department and (when `exclude`) `depth` inside it, to
    fill a list only when nothing else can. Columns: product_id, recommended_product_id,
    count, source."""
    pop = catalogue[["product_id", "department", "target_audience"]].copy()
    pop["count"] = pop["product_id"].map(popularity).fillna(0.0).astype("float64")
    pop = pop[pop["count"] > 0].sort_values(["count", "product_id"], ascending=[False, True])
    frames = []
    for source, key in (("audience_popularity", "target_audience"), ("popularity", None)):
        keys = [key] if key else []
        if exclude:
            keys.append("department")
        groups = catalogue.groupby(keys, sort=True) if keys else [((), catalogue)]
        for values, members in groups:
            value = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
            cand = pop
            if key:
                if value[key] == NO_GROUP:
                    continue
                cand = cand[cand[key] == value[key]]
            own = value.get("department", NO_GROUP)
            if own != NO_GROUP:
                same = cand["department"] == own
                cand = pd.concat([cand[~same].head(depth), cand[same].head(depth)])
            top = cand.head(2 * depth)[["product_id", "count"]].rename(
                columns={"product_id": "recommended_product_id"}
            )
            frames.append(members[["product_id"]].merge(top, how="cross").assign(source=source))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def recommend(
    rules: pd.DataFrame,
    catalogue: pd.DataFrame,
    matrix: BasketMatrix,
    config: FbtListsConfig,
) -> pd.DataFrame:
    """`top_k` complementary products for every catalogue product (FBT_RECOMMENDATIONS_SCHEMA).

    `catalogue` needs product_id, department and target_audience; `matrix` gives the
    co-occurrence counts and popularity (baskets holding each product).
    """
    k = config.top_k
    catalogue = _clean(catalogue)
    dept = catalogue.set_index("product_id")["department"]
    item_ids = matrix.item_ids.astype(str)
    counts = pd.Series(matrix.item_counts().astype(np.float64), index=item_ids)
    n = max(matrix.n_baskets, 1)
    m = config.shrinkage
    exclude = config.exclude_same_department
    depth = 3 * k
    item_dept = (
        pd.Series(item_ids).map(dept).fillna(NO_GROUP).replace(NO_GROUP, "").to_numpy(dtype=object)
        if exclude
        else None
    )
    evidence = co_viewed(
        matrix,
        catalogue["product_id"].to_numpy(),
        config.min_coview_count,
        depth,
        shrinkage=m,
        department=item_dept,
    ).assign(source="co_viewed")
    pads = _pads(catalogue, counts, k + 1, exclude)
    if len(pads):
        n_a = pads["product_id"].map(counts).fillna(0.0).to_numpy()
        prior = pads["count"].to_numpy() / n
        # With no shrinkage the pad still needs an order: popularity, below any evidence.
        pads["score"] = m * prior / (n_a + m) if m > 0 else prior * 1e-9
        pads["n_both"] = 0.0
        pads["n_antecedent"] = n_a
        pads = pads.drop(columns="count")
    cand = pd.concat([p for p in (evidence, pads) if len(p)], ignore_index=True)
    cand = cand[cand["recommended_product_id"].isin(dept.index)]
    cand = cand[cand["product_id"] != cand["recommended_product_id"]]
    a_dept = cand["product_id"].map(dept).to_numpy()
    same = (a_dept == cand["recommended_product_id"].map(dept).to_numpy()) & (a_dept != NO_GROUP)
    cand["demoted"] = same & exclude
    cand = cand.sort_values(
        ["product_id", "demoted", "score", "recommended_product_id"],
        ascending=[True, True, False, True],
        kind="stable",
    )
    cand = cand.drop_duplicates(["product_id", "recommended_product_id"], keep="first")
    top = cand.groupby("product_id", sort=False).head(k).copy()
    rules_pairs = _rule_pairs(rules, config.min_pair_count)
    is_rule = pd.MultiIndex.from_arrays([top["product_id"], top["recommended_product_id"]]).isin(
        rules_pairs
    )
    top.loc[is_rule & (top["n_both"] > 0).to_numpy(), "source"] = "rules"
    _warn_demoted(top, catalogue, exclude)
    top["rank"] = (top.groupby("product_id", sort=False).cumcount() + 1).astype("int32")
    evidence_rows = top["n_both"].to_numpy() > 0
    n_both = top["n_both"].to_numpy()
    n_a = np.maximum(top["n_antecedent"].to_numpy(dtype=np.float64), 1.0)
    n_b = top["recommended_product_id"].map(counts).fillna(0.0).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        top["support"] = np.where(evidence_rows, n_both / n, np.nan)
        top["confidence"] = np.where(evidence_rows, n_both / n_a, np.nan)
        top["lift"] = np.where(evidence_rows, n_both * n / (n_a * n_b), np.nan)
    top = top.reset_index(drop=True)
    return top[FBT_RECOMMENDATIONS_SCHEMA.names]


def _clean(catalogue: pd.DataFrame) -> pd.DataFrame:
    """product_id, department, target_audience with an empty department or audience as none."""
    catalogue = catalogue[["product_id", "department", "target_audience"]].copy()
    for col in ("department", "target_audience"):
        values = catalogue[col].astype("string").str.strip()
        catalogue[col] = values.mask(values == "").fillna(NO_GROUP).astype(object)
    return catalogue


def _warn_demoted(top: pd.DataFrame, catalogue: pd.DataFrame, exclude: bool) -> None:
    if not exclude or not top["demoted"].any():
        return
    short = int(top.loc[top["demoted"], "product_id"].nunique())
    departments = catalogue.loc[catalogue["department"] != NO_GROUP, "department"]
    largest = departments.value_counts()
    detail = ""
    if len(largest) and largest.iloc[0] / max(len(catalogue), 1) > 0.5:
        detail = (
            f"; department {largest.index[0]!r} holds {largest.iloc[0]:,} of "
            f"{len(catalogue):,} products, too coarse to tell substitutes from complements"
        )
    log.warning(
        "fbt lists: %d products needed same-department products to fill their lists "
        "(fbt.lists.exclude_same_department)%s",
        short,
        detail,
    )


def popularity_lists(
    catalogue: pd.DataFrame, counts: pd.Series, n_baskets: int, k: int
) -> pd.DataFrame:
    """Every product's list as plain popularity: the k most popular other products overall
    (what the popularity baseline serves), scored by their share of baskets;
    FBT_RECOMMENDATIONS_SCHEMA."""
    ids = catalogue["product_id"].astype(str)
    pop = counts[counts.index.isin(set(ids)) & (counts > 0)]
    top = pop.sort_values(ascending=False, kind="stable").head(k + 1)
    pairs = pd.DataFrame({"product_id": ids.to_numpy()}).merge(
        pd.DataFrame({"recommended_product_id": top.index.astype(str), "count": top.to_numpy()}),
        how="cross",
    )
    pairs = pairs[pairs["product_id"] != pairs["recommended_product_id"]]
    pairs = pairs.groupby("product_id", sort=True).head(k).copy()
    pairs["score"] = pairs["count"].astype(np.float64) / max(n_baskets, 1)
    pairs["source"] = "popularity"
    pairs["rank"] = (pairs.groupby("product_id", sort=False).cumcount() + 1).astype("int32")
    for col in ("support", "confidence", "lift"):
        pairs[col] = np.nan
    return pairs.reset_index(drop=True)[FBT_RECOMMENDATIONS_SCHEMA.names]


def coverage_by_source(lists: pd.DataFrame) -> dict[str, int]:
    """How many list entries each source supplied."""
    return {s: int((lists["source"] == s).sum()) for s in SOURCES}


__all__ = [
    "FBT_RECOMMENDATIONS_SCHEMA",
    "SOURCES",
    "co_viewed",
    "coverage_by_source",
    "popularity_lists",
    "recommend",
]
