"""Ranking metrics on Spark against `fashion_recs.evaluate` on the same lists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from fashion_recs import evaluate
from fashion_recs.spark import evaluate as spark_evaluate

TRUTH = "user_id string, product_id string"
PREDICTIONS = "user_id string, product_id string, rank int"


def _lists(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth and predictions with every case the conventions name: repeated items (best
    rank counts), tied ranks (item id breaks them), gaps in ranks, short lists, users
    without predictions, predictions for users without truth, items only one side has."""
    rng = np.random.default_rng(seed)
    items = [f"p{i:03d}" for i in range(60)]
    truth = pd.DataFrame(
        [
            (f"u{u:02d}", items[i])
            for u in range(40)
            for i in rng.choice(30, rng.integers(1, 8), replace=False)
        ],
        columns=["user_id", "product_id"],
    )
    truth = pd.concat([truth, truth.head(5)], ignore_index=True)  # duplicate pairs
    rows = []
    for u in range(5, 48):  # u00-u04 have no predictions, u40-u47 no truth
        for _ in range(rng.integers(1, 20)):
            rows.append((f"u{u:02d}", items[rng.integers(0, 36)], int(rng.integers(1, 15))))
    predictions = pd.DataFrame(rows, columns=["user_id", "product_id", "rank"])
    return truth, predictions


def test_spark_ranking_metrics_equal_the_local_ones(spark: Any) -> None:
    truth, predictions = _lists(0)
    truth_df = spark.createDataFrame(list(truth.itertuples(index=False)), TRUTH)
    predictions_df = spark.createDataFrame(list(predictions.itertuples(index=False)), PREDICTIONS)
    for k in (1, 12):
        local = evaluate.evaluate_all(truth, predictions, k=k, catalogue_size=60, model="m")
        on_spark = spark_evaluate.evaluate_all(
            truth_df, predictions_df, k=k, catalogue_size=60, model="m"
        )
        assert (local["value"] > 0).all(), local
        pd.testing.assert_frame_equal(local, on_spark, check_exact=False, rtol=1e-9, atol=0.0)
    top = spark_evaluate.top_k(predictions_df, k=5).toPandas()
    expected = evaluate.top_k(predictions, k=5)
    pd.testing.assert_frame_equal(
        top.sort_values(["user_id", "position"]).reset_index(drop=True),
        expected.astype({"position": "int32"}),
        check_dtype=False,
    )


def test_spark_metrics_with_no_truth_are_zero_and_say_so(spark: Any) -> None:
    _, predictions = _lists(0)
    predictions_df = spark.createDataFrame(list(predictions.itertuples(index=False)), PREDICTIONS)
    metrics = spark_evaluate.evaluate_all(
        spark.createDataFrame([], TRUTH), predictions_df, k=12, catalogue_size=60, model="m"
    )
    ranking = metrics[metrics["metric"] != evaluate.COVERAGE_METRIC]
    assert (ranking["value"] == 0.0).all() and (ranking["n_users"] == 0).all()
    with pytest.raises(ValueError, match="catalogue_size"):
        spark_evaluate.evaluate_all(
            spark.createDataFrame([], TRUTH), predictions_df, k=12, catalogue_size=3, model="m"
        )
