"""FBT lists on shapes real catalogues have: empty and coarse departments, small baskets."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from fashion_recs.config import FbtListsConfig
from fashion_recs.fbt.baskets import to_matrix
from fashion_recs.fbt.evaluate import completion_hit_rate
from fashion_recs.fbt.gate import POPULARITY, gated_lists
from fashion_recs.fbt.matrix import from_transactions
from fashion_recs.fbt.mining import mine
from fashion_recs.fbt.recommend import popularity_lists, recommend
from fashion_recs.fbt.rules import association_rules
from fashion_recs.synthetic_baskets import planted_baskets


def rules_of(matrix, min_lift: float = 2.0, min_count: int = 2):
    itemsets = mine(matrix, min_support=0.0, min_count=min_count, max_len=2)
    return association_rules(itemsets, min_confidence=0.0, min_lift=min_lift)


def test_products_without_a_department_still_get_full_lists() -> None:
    baskets = [["a", "b"], ["a", "c"], ["b", "c"], ["d"], ["e"], ["a", "d"]] * 3
    matrix = from_transactions(baskets)
    catalogue = pd.DataFrame(
        {
            "product_id": list("abcdefg"),
            "department": [None, "", None, "x", "y", None, None],
            "target_audience": None,
        }
    )
    lists = recommend(rules_of(matrix), catalogue, matrix, FbtListsConfig(top_k=4))
    sizes = lists.groupby("product_id").size()
    assert set(sizes.index) == set("abcdefg")
    assert sizes.eq(4).all()
    # Two products without a department are not each other's substitutes.
    a = lists[lists["product_id"] == "a"]
    assert {"b", "c"} <= set(a["recommended_product_id"])


def test_one_department_for_everything_warns_and_still_fills_lists(caplog) -> None:
    baskets = [["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "d"]] * 3
    matrix = from_transactions(baskets)
    catalogue = pd.DataFrame(
        {"product_id": list("abcd"), "department": "all", "target_audience": "women"}
    )
    with caplog.at_level(logging.WARNING):
        lists = recommend(rules_of(matrix), catalogue, matrix, FbtListsConfig(top_k=3))
    assert lists.groupby("product_id").size().eq(3).all()
    assert "same-department products to fill" in caplog.text and "too coarse" in caplog.text


def test_strong_co_occurrence_outranks_a_thin_high_lift_rule() -> None:
    # "milk" is in most baskets and comes with "bread" 40 times; "caviar" shares 2 baskets
    # with "bread" (lift far above 2). Milk is the better guess for a basket holding bread.
    baskets = [["bread", "milk"]] * 40 + [["bread", "caviar"]] * 2 + [["milk"]] * 60
    baskets += [["bread"]] * 20 + [["jam", "tea"]] * 5
    matrix = from_transactions(baskets)
    rules = rules_of(matrix, min_lift=2.0)
    assert ((rules["antecedent"] == "bread") & (rules["consequent"] == "caviar")).any()
    assert not ((rules["antecedent"] == "bread") & (rules["consequent"] == "milk")).any()
    catalogue = pd.DataFrame(
        {
            "product_id": ["bread", "caviar", "jam", "milk", "tea"],
            "department": list("abcde"),
            "target_audience": None,
        }
    )
    lists = recommend(rules, catalogue, matrix, FbtListsConfig(top_k=2, min_pair_count=2))
    bread = lists[lists["product_id"] == "bread"].sort_values("rank")
    assert bread["recommended_product_id"].tolist() == ["milk", "caviar"]
    assert bread["source"].tolist() == ["co_viewed", "rules"]
    assert bread["score"].is_monotonic_decreasing


def test_lowering_min_support_does_not_change_the_ranking() -> None:
    baskets, catalogue = planted_baskets("small", 3000, 400, seed=1)
    matrix = to_matrix(baskets)
    config = FbtListsConfig(top_k=10)
    strict = recommend(rules_of(matrix, min_count=20), catalogue, matrix, config)
    loose = recommend(rules_of(matrix, min_count=2), catalogue, matrix, config)
    key = ["product_id", "rank", "recommended_product_id"]
    assert strict[key].equals(loose[key])
    assert (loose["source"] == "rules").sum() > (strict["source"] == "rules").sum()


def test_completion_hit_rate_asks_every_product_of_a_basket() -> None:
    test = from_transactions([["a", "b", "c"], ["a"], ["b", "d"]])
    lists = pd.DataFrame(
        {
            "product_id": ["a", "b", "c", "d"],
            "rank": 1,
            "recommended_product_id": ["b", "x", "a", "c"],
        }
    )
    # Queries: a, b, c of the first basket, b and d of the third: hits a->b and c->a.
    assert completion_hit_rate(lists, test, k=1) == (pytest.approx(2 / 5), 5)


@pytest.mark.parametrize("regime", ["small", "large"])
def test_gate_publishes_lists_no_worse_than_popularity(regime: str) -> None:
    baskets, catalogue = planted_baskets(regime, 6000, 600, seed=3)
    matrix = to_matrix(baskets)
    held = np.random.default_rng(9).random(matrix.n_baskets) < 0.2
    train = matrix.take_baskets(np.flatnonzero(~held))
    test = matrix.take_baskets(np.flatnonzero(held))
    config = FbtListsConfig(top_k=10)
    lists, decision = gated_lists(rules_of(train), catalogue, train, config, seed=5)
    popularity = pd.Series(train.item_counts(), index=train.item_ids.astype(str))
    baseline = popularity_lists(catalogue, popularity, train.n_baskets, 10)
    mine_rate, n = completion_hit_rate(lists, test, 10)
    pop_rate, _ = completion_hit_rate(baseline, test, 10)
    assert n > 500
    assert mine_rate >= pop_rate
    assert decision.lists_vs_popularity >= 1.0
    assert set(decision.hit_rates) >= {"configured", POPULARITY}
    rows = decision.metric_rows()
    assert f"published_{decision.chosen}" in set(rows["metric"])


def test_gate_falls_back_to_popularity_when_lists_lose() -> None:
    # Co-occurrence here is pure noise around one staple: no list beats "the staple first".
    rng = np.random.default_rng(0)
    items = [f"p{i}" for i in range(60)]
    baskets = [["staple", *rng.choice(items, 1).tolist()] for _ in range(3000)]
    matrix = from_transactions(baskets)
    catalogue = pd.DataFrame(
        {"product_id": ["staple", *items], "department": "d", "target_audience": None}
    )
    config = FbtListsConfig(top_k=1, shrinkage=0.0)
    lists, decision = gated_lists(rules_of(matrix), catalogue, matrix, config, seed=1)
    assert decision.hit_rates[POPULARITY] >= max(decision.hit_rates.values()) - 1e-12
    assert decision.lists_vs_popularity == pytest.approx(1.0)
    assert (lists.loc[lists["product_id"] != "staple", "recommended_product_id"] == "staple").all()
