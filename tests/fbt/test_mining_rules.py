"""Mining engines and rules: every engine finds the same itemsets and the same rules, and the
rules' measures are the textbook ones (checked by hand on a tiny basket set)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_recs.errors import ResourceLimitExceeded
from fashion_recs.fbt.matrix import from_transactions
from fashion_recs.fbt.mining import ENGINES, MINERS, mine, mlxtend_itemsets, support_threshold
from fashion_recs.fbt.rules import association_rules, compare_rules, mlxtend_rules

GiB = 1 << 30
BASKETS = [
    ["jeans", "tee", "belt"],
    ["jeans", "tee"],
    ["jeans", "belt"],
    ["tee", "cap"],
    ["jeans", "tee", "cap"],
    ["scarf"],
    [],
]


def test_support_confidence_lift_by_hand() -> None:
    m = from_transactions(BASKETS)
    itemsets = mine(m, min_support=0.0, min_count=2, max_len=3, engine="sparse")
    found = itemsets.as_dict()
    assert found[("jeans",)] == 4 and found[("jeans", "tee")] == 3
    assert ("belt", "jeans", "tee") not in found  # one basket only
    assert ("scarf",) not in found
    rules = association_rules(itemsets, min_confidence=0.0, min_lift=0.0)
    rule = rules.set_index(["antecedent", "consequent"]).loc[("jeans", "tee")]
    n = 7
    assert rule["support"] == pytest.approx(3 / n)
    assert rule["confidence"] == pytest.approx(3 / 4)
    assert rule["lift"] == pytest.approx((3 / 4) / (4 / n))
    assert rule["leverage"] == pytest.approx(3 / n - (4 / n) * (4 / n))
    assert rule["conviction"] == pytest.approx((1 - 4 / n) / (1 - 3 / 4))
    assert rule["n_baskets"] == n  # empty and single-item baskets count as baskets
    # A rule that never fails has infinite conviction: stored as null.
    never_fails = rules.set_index(["antecedent", "consequent"]).loc[("belt", "jeans")]
    assert never_fails["confidence"] == 1.0 and pd.isna(never_fails["conviction"])


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_matches_on_the_hand_example(engine: str) -> None:
    m = from_transactions(BASKETS)
    reference = MINERS["sparse"](m, 2, 3, GiB).as_dict()
    assert MINERS[engine](m, 2, 3, GiB).as_dict() == reference


baskets_strategy = st.lists(
    st.lists(st.sampled_from([f"p{i:02d}" for i in range(12)]), max_size=7, unique=True),
    min_size=1,
    max_size=120,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    baskets=baskets_strategy,
    threshold=st.integers(1, 5),
    max_len=st.integers(2, 4),
    min_confidence=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    min_lift=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_all_engines_and_mlxtend_rules_are_identical(
    baskets, threshold, max_len, min_confidence, min_lift
) -> None:
    m = from_transactions(baskets)
    reference = MINERS["sparse"](m, threshold, max_len, GiB)
    ours = association_rules(reference, min_confidence=min_confidence, min_lift=min_lift)
    for engine in ENGINES:
        itemsets = MINERS[engine](m, threshold, max_len, GiB)
        assert itemsets.as_dict() == reference.as_dict(), engine
        rules = association_rules(itemsets, min_confidence=min_confidence, min_lift=min_lift)
        assert compare_rules(rules, ours) == [], engine
    for algorithm in ("apriori", "fpgrowth"):
        _, frame = mlxtend_itemsets(algorithm, m, threshold, max_len, GiB)
        theirs = mlxtend_rules(
            frame,
            m.item_ids,
            m.n_baskets,
            min_confidence=min_confidence,
            min_lift=min_lift,
            engine=algorithm,
        )
        assert compare_rules(theirs, ours, rtol=1e-9) == [], algorithm


def test_planted_pairs_in_zipf_noise_agree_across_engines() -> None:
    rng = np.random.default_rng(3)
    popularity = 1.0 / np.arange(1, 201) ** 1.1
    popularity /= popularity.sum()
    baskets = []
    for _ in range(3000):
        items = set(rng.choice(200, rng.integers(1, 6), p=popularity).tolist())
        if rng.random() < 0.1:
            items |= {150, 160} if rng.random() < 0.5 else {170, 180, 190}
        baskets.append([f"i{x:03d}" for x in items])
    m = from_transactions(baskets)
    t = support_threshold(m.n_baskets, 0.005, 5)
    results = {e: MINERS[e](m, t, 3, GiB) for e in ENGINES}
    rules = {e: association_rules(r, min_confidence=0.1, min_lift=2.0) for e, r in results.items()}
    for engine in ENGINES:
        assert compare_rules(rules[engine], rules["sparse"]) == []
    pairs = set(zip(rules["sparse"]["antecedent"], rules["sparse"]["consequent"], strict=True))
    assert {("i150", "i160"), ("i170", "i180,i190"), ("i180,i190", "i170")} <= pairs


def test_thresholds_that_find_nothing_give_an_empty_valid_table() -> None:
    m = from_transactions([["a", "b"], ["c"], ["d", "e"]])
    itemsets = mine(m, min_support=0.9, min_count=1, max_len=3)
    rules = association_rules(itemsets, min_confidence=0.5, min_lift=1.0)
    assert rules.empty and list(rules.columns)[:2] == ["antecedent", "consequent"]
    empty = from_transactions([])
    assert mine(empty, min_support=0.1, min_count=1, max_len=3).n_itemsets == 0
    for engine in ENGINES:
        assert MINERS[engine](from_transactions([[], []]), 1, 3, GiB).n_itemsets == 0


def test_thresholds_that_would_explode_memory_are_refused_with_advice() -> None:
    rng = np.random.default_rng(0)
    baskets = [[f"p{x}" for x in rng.choice(400, 30, replace=False)] for _ in range(400)]
    m = from_transactions(baskets)
    one_mib = 1 << 20
    with pytest.raises(ResourceLimitExceeded, match=r"raise fbt\.mining\.min_support"):
        MINERS["sparse"](m, 1, 2, one_mib)
    with pytest.raises(ResourceLimitExceeded, match="mlxtend_apriori would need"):
        MINERS["mlxtend_apriori"](m, 1, 2, one_mib)
    # The same baskets at a sensible threshold are fine.
    assert MINERS["sparse"](m, 20, 2, one_mib).n_itemsets > 0


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mining engine"):
        mine(from_transactions([["a"]]), min_support=0.1, min_count=1, max_len=2, engine="x")
