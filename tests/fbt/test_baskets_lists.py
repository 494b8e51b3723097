"""Baskets out of the event log, per-product lists with fallbacks, and the FBT evaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import polars as pl
import pytest

from fashion_recs.config import BasketConfig, FbtListsConfig
from fashion_recs.fbt.baskets import build_baskets, to_matrix
from fashion_recs.fbt.evaluate import bundle_recovery, completion_queries, split_baskets
from fashion_recs.fbt.mining import mine
from fashion_recs.fbt.recommend import SOURCES, recommend
from fashion_recs.fbt.rules import association_rules

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def interactions(rows: list[tuple[str, str, int, str]]) -> pl.DataFrame:
    """(user, product, minutes after T0, category) rows in the interactions layout."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "product_id": [r[1] for r in rows],
            "event_ts": [T0 + timedelta(minutes=r[2]) for r in rows],
            "category": [r[3] for r in rows],
        },
        schema={
            "user_id": pl.String,
            "product_id": pl.String,
            "event_ts": pl.Datetime("us", "UTC"),
            "category": pl.String,
        },
    )


ROWS = [
    ("u1", "a", 0, "view"),
    ("u1", "b", 5, "add_to_bag"),
    ("u1", "a", 6, "purchase"),  # same basket, same product: once
    ("u1", "b", 6, "purchase"),
    ("u1", "c", 120, "view"),  # 114 minutes later: a new session
    ("u1", "zz", 121, "view"),  # not in the catalogue
    ("u2", "a", 0, "share"),  # not a basket category
    ("u2", "c", 1, "view"),
    ("u2", "d", 1500, "view"),  # next day
]
CATALOGUE = ["a", "b", "c", "d"]


def baskets_of(frame: pl.DataFrame) -> list[list[str]]:
    grouped = frame.group_by("basket_id", maintain_order=True).agg(pl.col("product_id").sort())
    return sorted(grouped["product_id"].to_list())


def test_sessions_split_on_inactivity_and_every_row_is_accounted_for() -> None:
    out, stats = build_baskets(interactions(ROWS), CATALOGUE, BasketConfig())
    assert baskets_of(out) == [["a", "b"], ["c"], ["c"], ["d"]]
    assert stats.dropped == {
        "category_not_in_baskets": 1,
        "unknown_product": 1,
        "duplicate_in_basket": 2,
        "oversized_basket": 0,
    }
    assert stats.rows_in == stats.rows_out + sum(stats.dropped.values())
    assert stats.n_baskets == 4 and stats.n_single_item == 3
    # Ids are stable: numbered in time order, and a rebuild gives the same frame.
    again, _ = build_baskets(interactions(ROWS[::-1]), CATALOGUE, BasketConfig())
    assert again.equals(out)


def test_user_day_and_order_delimiters() -> None:
    day, _ = build_baskets(interactions(ROWS), CATALOGUE, BasketConfig(delimiter="user_day"))
    assert baskets_of(day) == [["a", "b", "c"], ["c"], ["d"]]
    orders, stats = build_baskets(
        interactions(ROWS), CATALOGUE, BasketConfig(delimiter="order", categories=["purchase"])
    )
    assert baskets_of(orders) == [["a", "b"]]
    assert stats.dropped["category_not_in_baskets"] == 7


def test_oversized_baskets_are_dropped_and_counted() -> None:
    rows = [("bot", f"p{i}", i, "view") for i in range(60)] + [("u", "p1", 0, "view")]
    out, stats = build_baskets(
        interactions(rows), [f"p{i}" for i in range(60)], BasketConfig(max_items=50)
    )
    assert baskets_of(out) == [["p1"]]
    assert stats.n_oversized == 1 and stats.dropped["oversized_basket"] == 60


def reference_baskets(frame: pl.DataFrame, catalogue: list[str], config: BasketConfig):
    """The baskets as group-bys over the id strings (how they were first built)."""
    from fashion_recs.fbt.baskets import _basket_keys

    known = frame.filter(
        pl.col("category").is_in(config.categories) & pl.col("product_id").is_in(catalogue)
    )
    baskets = (
        _basket_keys(known, config)
        .group_by(["user_id", "_key"], maintain_order=True)
        .agg(pl.col("event_ts").min().alias("basket_start"), "product_id", "category")
        .explode(["product_id", "category"])
        .unique(["user_id", "_key", "product_id"], keep="first", maintain_order=True)
    )
    sizes = baskets.group_by(["user_id", "_key"]).agg(pl.len().alias("_size"))
    oversized = sizes.filter(pl.col("_size") > config.max_items).select("user_id", "_key")
    baskets = baskets.join(oversized, on=["user_id", "_key"], how="anti").sort(
        ["basket_start", "user_id", "_key", "product_id"]
    )
    ids = baskets.select("user_id", "_key").unique(maintain_order=True).with_row_index("basket_id")
    return (
        baskets.join(ids, on=["user_id", "_key"], how="left", maintain_order="left")
        .select(
            pl.col("basket_id").cast(pl.Int64),
            "user_id",
            "basket_start",
            "product_id",
            pl.col("category").alias("first_category"),
        )
        .sort(["basket_id", "product_id"])
    )


@pytest.mark.parametrize("delimiter", ["session", "user_day", "order"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baskets_match_the_group_by_reference(delimiter: str, seed: int) -> None:
    """Ordinals and integer codes give the table the group-bys over id strings give: repeats
    within a basket (first row kept, with its category), ties in time across users,
    oversized baskets dropped, ids unknown to the catalogue, categories not for baskets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 600
    products = [f"p{i:02d}" for i in range(30)]
    rows = list(
        zip(
            [f"u{u}" for u in rng.integers(0, 25, n)],
            [products[p] for p in rng.integers(0, 30, n)],
            rng.integers(0, 3 * 24 * 60, n).tolist(),
            rng.choice(["view", "add_to_bag", "purchase", "share"], n).tolist(),
            strict=True,
        )
    )
    # One shopper's burst: a basket over the size cap whatever the delimiter.
    rows += [("bot", products[i % 12], 100, "view") for i in range(20)]
    config = BasketConfig(delimiter=delimiter, max_items=6)
    frame = interactions(rows)
    catalogue = products[:27]
    out, stats = build_baskets(frame, catalogue, config)
    expected = reference_baskets(frame, catalogue, config)
    assert out.equals(expected)
    assert stats.n_oversized > 0 and stats.dropped["duplicate_in_basket"] > 0
    assert stats.dropped["unknown_product"] > 0
    # Rows already in user, time, product order (the interactions artifact's) skip the sort
    # and give the same table.
    ordered = frame.sort(["user_id", "event_ts", "product_id"], maintain_order=True)
    assert build_baskets(ordered, catalogue, config)[0].equals(expected)


def test_no_usable_rows_gives_empty_baskets() -> None:
    out, stats = build_baskets(interactions(ROWS), ["nothing"], BasketConfig())
    assert out.height == 0 and stats.n_baskets == 0
    assert list(out.columns) == [
        "basket_id",
        "user_id",
        "basket_start",
        "product_id",
        "first_category",
    ]


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ["jeans", "jeans2", "tee", "belt", "cap", "sock"],
            "department": ["denim", "denim", "tops", "acc", "acc", None],
            "target_audience": ["men", "men", "men", "men", "women", None],
        }
    )


def basket_frame(baskets: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "basket_id": [i for i, b in enumerate(baskets) for _ in b],
            "product_id": [p for b in baskets for p in b],
        },
        schema={"basket_id": pl.Int64, "product_id": pl.String},
    )


def test_lists_cover_the_catalogue_with_labelled_sources() -> None:
    baskets = [["jeans", "tee"]] * 6 + [["jeans", "jeans2"]] * 6 + [["belt"], ["cap"], ["tee"]]
    matrix = to_matrix(basket_frame(baskets))
    rules = association_rules(
        mine(matrix, min_support=0.0, min_count=5, max_len=2), min_confidence=0.1, min_lift=0.0
    )
    config = FbtListsConfig(top_k=3, min_pair_count=5, min_coview_count=1)
    lists = recommend(rules, catalogue(), matrix, config)
    assert set(lists["product_id"]) == set(catalogue()["product_id"])
    assert (lists["product_id"] != lists["recommended_product_id"]).all()
    assert set(lists["source"]) <= set(SOURCES)
    jeans = lists[lists["product_id"] == "jeans"].sort_values("rank")
    # The rule jeans -> tee first; jeans2 is a substitute (same department): left out.
    assert jeans["recommended_product_id"].iloc[0] == "tee"
    assert jeans["source"].iloc[0] == "rules"
    assert "jeans2" not in set(jeans["recommended_product_id"])
    # A product nobody bought still gets a list, from popularity.
    sock = lists[lists["product_id"] == "sock"]
    assert len(sock) == 3 and set(sock["source"]) <= {"audience_popularity", "popularity"}
    with_substitutes = recommend(
        rules, catalogue(), matrix, config.model_copy(update={"exclude_same_department": False})
    )
    assert "jeans2" in set(
        with_substitutes.loc[with_substitutes["product_id"] == "jeans", "recommended_product_id"]
    )


def test_bundle_recovery_counts_pairs() -> None:
    rules = pd.DataFrame(
        {
            "antecedent": ["a", "b", "a", "x"],
            "consequent": ["b", "a", "c", "y"],
            "antecedent_len": 1,
            "consequent_len": 1,
            "n_both": [10, 10, 10, 10],
        }
    )
    bundles = pd.DataFrame({"bundle_id": [0, 0, 0, 1, 1], "product_id": list("abcde")})
    result = bundle_recovery(rules, bundles)
    # Found pairs {a,b}, {a,c}, {x,y}; planted {a,b}, {a,c}, {b,c}, {d,e}.
    assert result["bundle_pair_precision"] == pytest.approx(2 / 3)
    assert result["bundle_pair_recall"] == pytest.approx(2 / 4)
    assert result["bundles_complete"] == 0.0


def test_completion_queries_hide_one_item_per_basket() -> None:
    frame = basket_frame([["a", "b", "c"], ["a"], ["d", "zz"]]).with_columns(
        basket_start=pl.lit(T0)
    )
    queries, truth = completion_queries(frame, {"a", "b", "c", "d"}, seed=1)
    assert len(queries) == 1  # the single and the one-known-item baskets cannot be asked
    assert set(truth["product_id"]) | set(queries["product_id"]) == {"a", "b", "c"}
    train, test = split_baskets(
        frame.with_columns(basket_start=pl.Series([T0, T0, T0, T0, T0, T0 + timedelta(days=9)])),
        holdout_days=7,
    )
    assert set(test["product_id"]) == {"zz"} and train.height == 5


def test_split_baskets_holds_out_the_last_calendar_days() -> None:
    # One basket a day from 10-01 to 10-10, started at midnight: two hold-out days are 10-09
    # and 10-10, the same calendar days the interactions' hold-out takes.
    midnight = T0.replace(hour=0)
    frame = basket_frame([[f"p{day}"] for day in range(10)]).with_columns(
        basket_start=pl.Series([midnight + timedelta(days=day) for day in range(10)])
    )
    train, test = split_baskets(frame, holdout_days=2)
    assert test["basket_id"].to_list() == [8, 9]
    assert train["basket_id"].to_list() == list(range(8))


def test_co_viewed_keeps_each_products_best_whatever_the_block_size() -> None:
    """Blocks are cut by their co-occurrence entries, each keeping only every row's best;
    a block of one row gives the lists of one block for everything, and both equal the
    candidates ranked by hand (others before same-department ones, then shrunk confidence,
    then product)."""
    import numpy as np
    import scipy.sparse as sp

    from fashion_recs.fbt.matrix import BasketMatrix
    from fashion_recs.fbt.recommend import co_viewed

    rng = np.random.default_rng(5)
    dense = (rng.random((400, 30)) < rng.random((1, 30)) * 0.4).astype(np.float32)
    ids = np.array([f"p{i:02d}" for i in range(30)], dtype=object)
    matrix = BasketMatrix(sp.csr_matrix(dense), ids)
    department = np.array([("a", "b", "")[i % 3] for i in range(30)], dtype=object)
    kwargs = {"shrinkage": 5.0, "department": department}
    whole = co_viewed(matrix, ids, 2, 4, 10**9, **kwargs)
    tiny = co_viewed(matrix, ids, 2, 4, 1, **kwargs)
    pd.testing.assert_frame_equal(whole, tiny)

    counts = dense.sum(0)
    both = dense.T @ dense
    rows = []
    for a in range(30):
        found = [
            (department[a] == department[b] and department[a] != "",
             -(both[a, b] + 5.0 * counts[b] / 400) / (counts[a] + 5.0), b)
            for b in range(30) if b != a and both[a, b] >= 2
        ]  # fmt: skip
        rows += [(ids[a], ids[b], demoted) for demoted, _, b in sorted(found)[:4]]
    got = list(
        zip(whole["product_id"], whole["recommended_product_id"], whole["demoted"], strict=True)
    )
    assert got == rows


def test_completion_hits_look_up_only_each_querys_list() -> None:
    """The hit count equals the product of the baskets with every list (which grows with the
    catalogue squared for lists everyone shares), in blocks of any size."""
    import numpy as np
    import scipy.sparse as sp

    from fashion_recs.fbt.evaluate import _queries_hit

    rng = np.random.default_rng(0)
    for _ in range(10):
        X = sp.csr_matrix((rng.random((300, 40)) < 0.08).astype(np.float32))
        X = X[np.diff(X.indptr) >= 2].tocsr()
        L = sp.csr_matrix((rng.random((40, 40)) < 0.2).astype(np.float32))
        everything = float(X.multiply((X @ L.T) > 0).sum())
        assert _queries_hit(X, L, 7) == _queries_hit(X, L, 10**6) == everything
