"""MLlib ALS (implicit feedback), a personal model scored beside the others.

Matrix factorisation is the model family the other personal models lack, and the one a
Spark cluster brings ready-made: `pyspark.ml.recommendation.ALS(implicitPrefs=True)`. It is
fitted on exactly the matrices the other models use (`stages.personal.load_inputs`: the
split's train matrix decayed to the cutoff for the hold-out lists, everything decayed to the
as-of for the published lists), its hold-out lists are scored with `fashion_recs.evaluate`
(`score_lists`), and its metrics go to `personal_metrics_als` in the METRICS schema, so it
sits in the personal metrics table beside user-CF and the rest. It is a gate candidate only
when `personal.gate.candidates` names it.

Deterministic in local mode: the seed is set, the user and item blocks are fixed
(`num_blocks`), and the ratings enter in that many hash partitions sorted within, so each
block receives its ratings in the same order and the normal equations sum in the same order.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.config import AlsConfig, RetailerConfig
from fashion_recs.contract import personal_eval, personal_lists
from fashion_recs.personal.base import empty_recommendations
from fashion_recs.personal.evaluation import score_lists
from fashion_recs.personal.matrix import WEIGHTINGS, UserItemMatrix
from fashion_recs.spark.datasets import write_spark_artifact
from fashion_recs.stages.personal import (
    PersonalInputs,
    _lists_table,
    _metric,
    _unserved,
    save_metrics,
)

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

MODEL = "als"


def ratings(spark: SparkSession, matrix: UserItemMatrix, cfg: AlsConfig) -> DataFrame:
    """The matrix's stored entries as (user, item, rating): matrix row and column codes (the
    int ids ALS wants) and the weighted decayed weight, in `num_blocks` partitions sorted by
    (user, item)."""
    values = WEIGHTINGS[cfg.weighting](matrix.values).tocoo()
    table = pa.table(
        {
            "user": values.row.astype(np.int32),
            "item": values.col.astype(np.int32),
            "rating": values.data.astype(np.float32),
        }
    )
    return (
        spark.createDataFrame(table)
        .repartition(cfg.num_blocks, "user")
        .sortWithinPartitions("user", "item")
    )


def fit(spark: SparkSession, matrix: UserItemMatrix, cfg: AlsConfig, seed: int) -> ALSModel:
    """A seeded implicit-feedback ALS on `matrix` (see the module docstring)."""
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=cfg.rank,
        maxIter=cfg.max_iter,
        regParam=cfg.reg_param,
        alpha=cfg.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=seed,
        coldStartStrategy="drop",
        numUserBlocks=cfg.num_blocks,
        numItemBlocks=cfg.num_blocks,
    )
    return als.fit(ratings(spark, matrix, cfg))


def recommend_codes(
    model: ALSModel, matrix: UserItemMatrix, rows: np.ndarray, k: int, exclude_known: bool
) -> DataFrame:
    """Top-k items of the matrix rows `rows` as (user, item, rank, score) codes: best score
    first, ties by item code (the order every `Recommender` breaks them in); with
    `exclude_known`, without the user's own items (ALS is asked for enough extra items to
    drop them and still fill k)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = model.userFactors.sparkSession
    rows = np.asarray(rows, dtype=np.int32)
    users = spark.createDataFrame(pa.table({"user": rows}))
    extra = int(np.diff(matrix.values.indptr)[rows].max()) if exclude_known and len(rows) else 0
    # One more than asked, so a tie at the k-th place is broken by item code here, not by
    # the order ALS's heap happened to keep.
    want = min(k + extra + 1, matrix.n_items)
    listed = model.recommendForUserSubset(users, want).select(
        "user", F.explode("recommendations").alias("r")
    )
    listed = listed.select(
        "user", F.col("r.item").alias("item"), F.col("r.rating").cast("double").alias("score")
    )
    if exclude_known:
        known = matrix.values[rows].tocoo()
        own = spark.createDataFrame(
            pa.table({"user": rows[known.row], "item": known.col.astype(np.int32)})
        )
        listed = listed.join(own, ["user", "item"], "left_anti")
    order = Window.partitionBy("user").orderBy(F.col("score").desc(), F.col("item").asc())
    return (
        listed.withColumn("rank", F.row_number().over(order).cast("int"))
        .filter(F.col("rank") <= k)
        .select("user", "item", "rank", "score")
    )


def recommend(
    model: ALSModel, matrix: UserItemMatrix, user_ids: pd.Index, k: int, exclude_known: bool
) -> pd.DataFrame:
    """`Recommender.recommend`'s frame (user_id, product_id, rank, score) for `user_ids`,
    users in the given order; users the matrix does not know get no rows. Collected to the
    driver: these are the hold-out users' lists, scored there."""
    users = pd.Index(list(dict.fromkeys(user_ids)))
    rows = matrix.user_rows(users)
    rows = rows[rows >= 0]
    if len(rows) == 0:
        return empty_recommendations()
    codes = recommend_codes(model, matrix, rows, k, exclude_known).toArrow().to_pandas()
    if codes.empty:
        return empty_recommendations()
    order = pd.Series(np.arange(len(rows)), index=rows)
    codes = codes.assign(_order=codes["user"].map(order)).sort_values(["_order", "rank"])
    return pd.DataFrame(
        {
            "user_id": matrix.users.to_numpy()[codes["user"].to_numpy()],
            "product_id": matrix.items.to_numpy()[codes["item"].to_numpy()],
            "rank": codes["rank"].to_numpy(dtype=np.int32),
            "score": codes["score"].to_numpy(dtype=np.float64),
        }
    )


def _full_lists(
    spark: SparkSession, model: ALSModel, matrix: UserItemMatrix, k: int, exclude_known: bool
) -> DataFrame:
    """Every user's list as PERSONAL_LISTS rows, codes turned into ids on the executors (the
    lists of all users are never collected)."""
    from pyspark.sql import functions as F

    codes = recommend_codes(model, matrix, np.arange(matrix.n_users), k, exclude_known)
    user_ids = spark.createDataFrame(
        pa.table(
            {
                "user": np.arange(matrix.n_users, dtype=np.int32),
                "user_id": matrix.users.astype(str).to_numpy(),
            }
        )
    )
    item_ids = spark.createDataFrame(
        pa.table(
            {
                "item": np.arange(matrix.n_items, dtype=np.int32),
                "product_id": matrix.items.astype(str).to_numpy(),
            }
        )
    )
    return (
        codes.join(user_ids, "user")
        .join(F.broadcast(item_ids), "item")
        .select(
            "user_id", "product_id", "rank", "score", F.lit(None).cast("string").alias("source")
        )
        .orderBy("user_id", "rank")
    )


def als_stage(
    spark: SparkSession, config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths
) -> dict[str, Any]:
    """The `als` personal model step: fit on the split, list and score the hold-out users;
    refit on everything and publish every user's list. The summary is `run_models`'s."""
    cfg = config.personal
    als = cfg.als
    k = cfg.top_k
    started = time.perf_counter()
    model = fit(spark, inputs.split.matrix, als, config.seed)
    lists = recommend(model, inputs.split.matrix, inputs.split.users, k, cfg.exclude_known)
    unserved = {MODEL: _unserved(lists, inputs.split.users, k)}
    write_artifact(paths, personal_eval(MODEL), _lists_table(lists))
    metrics = score_lists(
        lists, inputs.split, k=k, catalogue_size=inputs.catalogue_size, model=MODEL
    )
    full = fit(spark, inputs.full, als, config.seed)
    write_spark_artifact(
        paths, personal_lists(MODEL), _full_lists(spark, full, inputs.full, k, cfg.exclude_known)
    )
    seconds = round(time.perf_counter() - started, 2)
    log.info(
        "%s (spark, rank %d, %d iterations): map@%d %.4f, recall@%d %.4f (%.1f s)",
        MODEL,
        als.rank,
        als.max_iter,
        k,
        _metric(metrics, MODEL, "map"),
        k,
        _metric(metrics, MODEL, "recall"),
        seconds,
    )
    summary = save_metrics(paths, MODEL, [metrics], {MODEL: seconds})
    return {**summary, "unserved": unserved, "params": als.model_dump()}
