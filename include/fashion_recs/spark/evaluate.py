"""Ranking metrics on Spark DataFrames, defined as `fashion_recs.evaluate` defines them.

Same conventions: a user's list shows an item once at its best rank, read in (rank, item id)
order, the first k kept; metrics average over the users in `truth`, a user without
predictions scoring 0. Precision@k, recall@k, MAP@k (the Kaggle H&M AP@k: divided by
min(k, relevant)) and NDCG@k (binary gains, ideal DCG over min(k, relevant) hits) are MLlib's
`RankingEvaluator`, whose definitions are these; hit rate and catalogue coverage, which MLlib
does not have, are DataFrame code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from fashion_recs.evaluate import COVERAGE_METRIC, ITEM, METRICS_COLUMNS, RANK, USER
from fashion_recs.spark.frames import number_in_order

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# Metric name in the metrics table -> RankingEvaluator's metric of the same definition.
EVALUATOR_METRICS = {
    "precision": "precisionAtK",
    "recall": "recallAtK",
    "map": "meanAveragePrecisionAtK",
    "ndcg": "ndcgAtK",
}
HIT_RATE = "hit_rate"


def top_k(
    predictions: DataFrame,
    *,
    k: int,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
) -> DataFrame:
    """Each user's first k distinct predicted items with their 1-based `position`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    best = predictions.groupBy(user_col, item_col).agg(F.min(rank_col).alias(rank_col))
    order = Window.partitionBy(user_col).orderBy(F.col(rank_col), F.col(item_col))
    return (
        best.withColumn("position", F.row_number().over(order))
        .filter(F.col("position") <= k)
        .select(user_col, item_col, "position")
    )


def ranking_lists(
    truth: DataFrame,
    top: DataFrame,
    *,
    user_col: str = USER,
    item_col: str = ITEM,
) -> DataFrame:
    """One row per user in `truth`: `prediction` (their top-k items in order) and `label`
    (their relevant items), items coded as doubles, the input RankingEvaluator takes."""
    from pyspark.sql import functions as F

    items = truth.select(item_col).unionByName(top.select(item_col)).distinct()
    codes = number_in_order(items, [F.col(item_col)], "_code").withColumn(
        "_code", F.col("_code").cast("double")
    )
    label = (
        truth.select(user_col, item_col)
        .join(codes, item_col)
        .groupBy(user_col)
        .agg(F.array_sort(F.collect_set("_code")).alias("label"))
    )
    prediction = (
        top.join(codes, item_col)
        .groupBy(user_col)
        .agg(F.sort_array(F.collect_list(F.struct("position", "_code"))).alias("_ranked"))
        .select(user_col, F.col("_ranked._code").alias("prediction"))
    )
    return label.join(prediction, user_col, "left").select(
        user_col,
        F.coalesce("prediction", F.array().cast("array<double>")).alias("prediction"),
        "label",
    )


def evaluate_all(
    truth: DataFrame,
    predictions: DataFrame,
    *,
    k: int,
    catalogue_size: int,
    model: str,
    user_col: str = USER,
    item_col: str = ITEM,
    rank_col: str = RANK,
) -> pd.DataFrame:
    """`fashion_recs.evaluate.evaluate_all` on Spark: the same rows (METRICS_SCHEMA)."""
    from pyspark.ml.evaluation import RankingEvaluator
    from pyspark.sql import functions as F

    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be at least 1, got {catalogue_size}")
    top = top_k(predictions, k=k, user_col=user_col, item_col=item_col, rank_col=rank_col).cache()
    lists = ranking_lists(truth, top, user_col=user_col, item_col=item_col).cache()
    n_users = lists.count()
    values = {}
    for name, metric in EVALUATOR_METRICS.items():
        evaluator = RankingEvaluator(
            predictionCol="prediction", labelCol="label", metricName=metric, k=k
        )
        values[name] = float(evaluator.evaluate(lists)) if n_users else 0.0
    hit = F.when(F.size(F.array_intersect("prediction", "label")) > 0, 1.0).otherwise(0.0)
    values[HIT_RATE] = float(lists.agg(F.avg(hit)).first()[0]) if n_users else 0.0
    covered = top.agg(
        F.countDistinct(item_col).alias("items"), F.countDistinct(user_col).alias("users")
    ).first()
    if covered["items"] > catalogue_size:
        raise ValueError(
            f"predictions recommend {covered['items']} distinct items in their top {k}, more "
            f"than the catalogue_size of {catalogue_size}; pass the number of items that can "
            "be recommended (catalogue products plus any event-only products)"
        )
    values[COVERAGE_METRIC] = covered["items"] / catalogue_size
    lists.unpersist()
    top.unpersist()
    names = list(values)
    return pd.DataFrame(
        {
            "model": pd.Series([model] * len(names), dtype="str"),
            "metric": pd.Series(names, dtype="str"),
            "k": pd.Series([k] * len(names), dtype="int32"),
            "value": pd.Series([values[n] for n in names], dtype="float64"),
            "n_users": pd.Series(
                [n_users] * (len(names) - 1) + [int(covered["users"])], dtype="int64"
            ),
        },
        columns=METRICS_COLUMNS,
    )
