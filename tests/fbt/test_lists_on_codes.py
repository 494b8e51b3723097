"""The FBT lists ranked on catalogue codes equal the lists ranked as frames of ids.

`recommend` ranks millions of candidates at 50k products; it does so on integer positions,
prunes the co-occurrence entries that cannot make a list before sorting, and serves the gate's
variants from one co-occurrence pass. The reference below is the straightforward definition
on frames of product ids (candidates concatenated, sorted by product, demotion, score and
recommended id, deduplicated, cut to top_k); every shortcut must give exactly its lists.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_recs.config import FbtListsConfig
from fashion_recs.contract import FBT_RECOMMENDATIONS_SCHEMA
from fashion_recs.fbt.baskets import to_matrix
from fashion_recs.fbt.gate import list_configs
from fashion_recs.fbt.matrix import BasketMatrix
from fashion_recs.fbt.mining import mine
from fashion_recs.fbt.recommend import (
    NO_GROUP,
    _clean,
    _pads,
    _rule_pairs,
    co_viewed,
    recommend,
    recommend_variants,
)
from fashion_recs.fbt.rules import association_rules
from fashion_recs.synthetic_baskets import planted_baskets


def reference_lists(
    rules: pd.DataFrame, catalogue: pd.DataFrame, matrix: BasketMatrix, config: FbtListsConfig
) -> pd.DataFrame:
    """The lists as one frame of ids, sorted and cut with pandas."""
    k = config.top_k
    catalogue = _clean(catalogue)
    dept = catalogue.set_index("product_id")["department"]
    item_ids = matrix.item_ids.astype(str)
    counts = pd.Series(matrix.item_counts().astype(np.float64), index=item_ids)
    n = max(matrix.n_baskets, 1)
    m = config.shrinkage
    exclude = config.exclude_same_department
    item_dept = (
        pd.Series(item_ids).map(dept).fillna(NO_GROUP).replace(NO_GROUP, "").to_numpy(dtype=object)
        if exclude
        else None
    )
    evidence = co_viewed(
        matrix,
        catalogue["product_id"].to_numpy(),
        config.min_coview_count,
        3 * k,
        shrinkage=m,
        department=item_dept,
    ).assign(source="co_viewed")
    pads = _pads(catalogue, counts, k + 1, exclude)
    n_a = pads["product_id"].map(counts).fillna(0.0).to_numpy()
    prior = pads["count"].to_numpy() / n
    pads["score"] = m * prior / (n_a + m) if m > 0 else prior * 1e-9
    pads["n_both"] = 0.0
    pads["n_antecedent"] = n_a
    cand = pd.concat([evidence, pads.drop(columns="count")], ignore_index=True)
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
    pairs = _rule_pairs(rules, config.min_pair_count)
    is_rule = pd.MultiIndex.from_arrays([top["product_id"], top["recommended_product_id"]]).isin(
        pairs
    )
    top.loc[is_rule & (top["n_both"] > 0).to_numpy(), "source"] = "rules"
    top["rank"] = (top.groupby("product_id", sort=False).cumcount() + 1).astype("int32")
    both = top["n_both"].to_numpy()
    n_a = np.maximum(top["n_antecedent"].to_numpy(dtype=np.float64), 1.0)
    n_b = top["recommended_product_id"].map(counts).fillna(0.0).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        top["support"] = np.where(both > 0, both / n, np.nan)
        top["confidence"] = np.where(both > 0, both / n_a, np.nan)
        top["lift"] = np.where(both > 0, both * n / (n_a * n_b), np.nan)
    return top.reset_index(drop=True)[FBT_RECOMMENDATIONS_SCHEMA.names]


def same_lists(got: pd.DataFrame, want: pd.DataFrame) -> None:
    as_objects = {"product_id": object, "recommended_product_id": object, "source": object}
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True).astype(as_objects),
        want.astype(as_objects),
        check_exact=True,
    )


@pytest.fixture(scope="module")
def retailer() -> tuple[pd.DataFrame, pd.DataFrame, BasketMatrix]:
    baskets, catalogue = planted_baskets("small", 3000, 400, seed=11)
    matrix = to_matrix(baskets)
    itemsets = mine(matrix, min_support=0.0, min_count=3, max_len=2)
    rules = association_rules(itemsets, min_confidence=0.0, min_lift=1.5)
    # Products nobody bought, one with an id that sorts first, and no department or audience.
    extra = pd.DataFrame(
        {
            "product_id": ["zz-unsold", "00-unsold", "mid-unsold"],
            "department": [None, "", catalogue["department"].dropna().iloc[0]],
            "target_audience": [None, catalogue["target_audience"].iloc[0], ""],
        }
    )
    # The catalogue in an order that is not the id order.
    shuffled = pd.concat([catalogue, extra], ignore_index=True).sample(frac=1.0, random_state=4)
    return rules, shuffled.reset_index(drop=True), matrix


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"exclude_same_department": False},
        {"shrinkage": 0.0},
        {"shrinkage": 150.0, "top_k": 5},
        {"min_coview_count": 3, "top_k": 20},
    ],
)
def test_lists_equal_the_id_frame_definition(retailer, update: dict) -> None:
    rules, catalogue, matrix = retailer
    config = FbtListsConfig(min_pair_count=3).model_copy(update=update)
    same_lists(
        recommend(rules, catalogue, matrix, config),
        reference_lists(rules, catalogue, matrix, config),
    )


def test_small_blocks_and_pruning_keep_every_rows_best(retailer) -> None:
    _, catalogue, matrix = retailer
    ids = catalogue["product_id"].to_numpy()

    def by_row(frame: pd.DataFrame) -> pd.DataFrame:
        # A block's rows come out in item order: compare row by row, each in its own order.
        return frame.sort_values("product_id", kind="stable").reset_index(drop=True)

    whole = by_row(co_viewed(matrix, ids, 1, 36, shrinkage=20.0))
    # Blocks of a few rows: every row's pruning threshold comes from its own counts.
    blocks = co_viewed(matrix, ids, 1, 36, max_block_entries=500, shrinkage=20.0)
    pd.testing.assert_frame_equal(whole, by_row(blocks))
    # With room for every candidate nothing is pruned: the first 36 of the full ranking.
    everything = by_row(co_viewed(matrix, ids, 1, 10_000, shrinkage=20.0))
    position = everything.groupby("product_id", sort=False).cumcount()
    pd.testing.assert_frame_equal(whole, everything[position < 36].reset_index(drop=True))
    assert (position >= 36).any()  # some rows had more candidates than their list keeps


def test_the_gates_variants_from_one_pass_equal_one_call_each(retailer) -> None:
    rules, catalogue, matrix = retailer
    variants = list_configs(FbtListsConfig(min_pair_count=3))
    configs = [*variants.values(), FbtListsConfig(top_k=4)]
    assert len(configs) == 5
    together = recommend_variants(rules, catalogue, matrix, configs)
    for config, lists in zip(configs, together, strict=True):
        same_lists(lists, recommend(rules, catalogue, matrix, config))
