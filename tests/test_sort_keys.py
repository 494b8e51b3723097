"""Integer keys for string ids (sort_keys): lexical codes and index positions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from fashion_recs.sort_keys import (
    by_row_value_column,
    distinct,
    in_sorted,
    index_positions,
    isin,
    lexical_codes,
    n_codes,
    sort_order,
    sorted_codes,
)


def test_lexical_codes_order_like_the_strings_and_keep_nulls() -> None:
    values = pl.Series("id", ["b", "a", None, "B", "a", "ab", "", "b"])
    codes = lexical_codes(values)
    assert codes.dtype == pl.UInt32 and codes.null_count() == 1
    distinct = sorted(v for v in set(values.to_list()) if v is not None)
    assert n_codes(codes) == len(distinct)
    expected = [None if v is None else distinct.index(v) for v in values.to_list()]
    assert codes.to_list() == expected
    assert lexical_codes(pl.Series("id", [None, None], dtype=pl.String)).to_list() == [None, None]


def test_index_positions_equal_get_indexer_for_every_kind_of_input() -> None:
    index = pd.Index(["u3", "u1", "u2", "ü"])
    inputs = [
        pd.Series(["u1", "zz", None, "ü", "u3"]),
        pd.Series(["u2", "u9"], dtype="string[pyarrow]"),
        np.array(["u2", "nope", "u1"], dtype=object),
        pd.Index(["ü"]),
        pd.Series([1, 2]),
        pd.Series([], dtype="string[pyarrow]"),
    ]
    for values in inputs:
        got = index_positions(values, index)
        np.testing.assert_array_equal(got, index.get_indexer(values))
        assert got.dtype == np.int64
    numbers = pd.Index([10, 20])
    np.testing.assert_array_equal(index_positions(pd.Series([20, 5]), numbers), [1, -1])


def test_sorted_codes_order_like_sort_values_and_give_the_values_back() -> None:
    inputs = [
        pd.Series(["b", "a", None, "B", "a", "ü"], dtype="str"),
        pd.Series(["b", "a", None, "a"], dtype=object),
        pd.Series([3.5, 1.0, np.nan, 3.5]),
        pd.Series(pd.Categorical(["x", None, "y", "x"], categories=["y", "x", "z"])),
    ]
    for values in inputs:
        codes, uniques = sorted_codes(values)
        assert codes.dtype == np.int64
        np.testing.assert_array_equal(codes < 0, values.isna().to_numpy())
        present = codes >= 0
        assert list(uniques.take(codes[present])) == list(values[present])
        # Codes sort the rows exactly as the values do.
        by_codes = np.argsort(np.where(present, codes, np.iinfo(np.int64).max), kind="stable")
        by_values = values.sort_values(kind="mergesort", na_position="last").index.to_numpy()
        np.testing.assert_array_equal(by_codes, by_values)


def test_distinct_and_isin_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    cases = [
        (rng.integers(0, 50, 500), rng.integers(-5, 60, 80)),
        (rng.integers(0, 2**40, 300, dtype=np.int64), rng.integers(0, 2**40, 20)),
        (np.array([1.5, np.nan, 0.0, 1.5, -0.0]), np.array([np.nan, 1.5, 0.0])),
        (np.zeros(0, dtype=np.int64), np.array([3, 3])),
        (rng.integers(0, 9, (4, 5)), np.array([], dtype=np.int64)),
        (np.array(["b", "a", "b"], dtype=object), np.array(["a"], dtype=object)),
    ]
    for values, test in cases:
        np.testing.assert_array_equal(distinct(values), np.unique(values))
        np.testing.assert_array_equal(isin(values, test), np.isin(values, test))
        if test.dtype.kind in "iu":
            np.testing.assert_array_equal(in_sorted(distinct(test), values), np.isin(values, test))


def test_sort_order_equals_lexsort_with_descending_keys() -> None:
    rng = np.random.default_rng(9)
    n = 5000
    row = rng.integers(0, 40, n)
    flag = rng.random(n) < 0.3
    score = rng.integers(0, 6, n) / 4.0
    score[rng.random(n) < 0.05] = -0.0
    column = rng.integers(0, 30, n).astype(np.int32)
    np.testing.assert_array_equal(
        sort_order((row, False), (flag, False), (score, True), (column, False)),
        np.lexsort((column, -score, flag, row)),
    )
    np.testing.assert_array_equal(
        by_row_value_column(row, score, column), np.lexsort((column, -score, row))
    )
    assert len(sort_order((np.zeros(0, dtype=np.int64), False))) == 0


def test_sorted_categories_make_a_parquet_dictionary_rank_like_the_ids(tmp_path) -> None:
    """Products read as the file's dictionary (in the order the file met them) and given
    sorted categories score the popularity baselines exactly as the id strings do, ties
    between equally popular products included."""
    import pyarrow.parquet as pq

    from fashion_recs.config import load_config
    from fashion_recs.sort_keys import sorted_categories
    from fashion_recs.stages.baselines import evaluate_baselines

    rng = np.random.default_rng(3)
    n = 4000
    start = pd.Timestamp("2026-10-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in rng.integers(0, 300, n)],
            # Few weights over few products: many equally popular products.
            "product_id": [f"p{p:02d}" for p in rng.integers(0, 60, n)][::-1],
            "event_ts": start + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
            "weight": rng.choice([1.0, 2.0], n),
        }
    )
    path = tmp_path / "interactions.parquet"
    frame.to_parquet(path)
    coded = pq.read_table(path, read_dictionary=["product_id"]).to_pandas()
    assert not coded["product_id"].cat.categories.is_monotonic_increasing
    coded["product_id"] = sorted_categories(coded["product_id"])
    assert coded["product_id"].cat.categories.is_monotonic_increasing
    assert coded["product_id"].astype(str).tolist() == frame["product_id"].tolist()
    users = pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in range(300)],
            "age_group": rng.choice(["18-24", "25-34", "unknown"], 300),
            "region": rng.choice(["north", "south"], 300),
        }
    )
    config = load_config()
    expected = evaluate_baselines(config, pq.read_table(path).to_pandas(), users, 60)
    got = evaluate_baselines(config, coded, users, 60)
    pd.testing.assert_frame_equal(got, expected)
