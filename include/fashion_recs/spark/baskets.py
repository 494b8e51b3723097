"""`build_baskets` on Spark: `fbt.baskets.build_baskets` with DataFrames.

The same baskets, ids and statistics as the local engine: a user's interactions of the
basket categories on catalogue products, cut by session gap, UTC day or order; a product once
per basket with the category of its first interaction; baskets over `max_items` dropped; ids
numbered in (start, user) order. Rows that tie on (user, time, product) keep the order of the
interactions artifact, as the local sort does. Every input row is accounted for in the same
`BasketStats`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import BasketConfig, RetailerConfig
from fashion_recs.contract import BASKETS
from fashion_recs.fbt.baskets import BasketStats
from fashion_recs.spark.datasets import write_spark_artifact
from fashion_recs.spark.frames import number_in_order
from fashion_recs.spark.interactions import MICROS_PER_SECOND
from fashion_recs.stages.fbt import baskets_summary

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND


def _basket_key(config: BasketConfig) -> Column:
    """One value per basket within a user (`_us`: event time in epoch microseconds)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if config.delimiter == "user_day":
        return F.floor(F.col("_us") / F.lit(MICROS_PER_DAY)).cast("long")
    if config.delimiter == "order":
        return F.col("_us")
    gap_us = int(config.session_gap_minutes * 60 * MICROS_PER_SECOND)
    in_time = Window.partitionBy("user_id").orderBy("_us", "product_id", "_row")
    new = F.coalesce(F.col("_us") - F.lag("_us").over(in_time) > gap_us, F.lit(True))
    return F.sum(new.cast("long")).over(in_time)


def build_baskets(
    interactions: DataFrame, catalogue: DataFrame, config: BasketConfig
) -> tuple[DataFrame, BasketStats]:
    """Baskets (BASKETS_SCHEMA rows, ordered by basket and product) and their statistics.

    `interactions` must keep the artifact's row order in `_row` (see `with_row_order`).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stats = BasketStats(rows_in=interactions.count())
    frame = interactions.select("user_id", "product_id", "event_ts", "category", "_row")
    kept = frame.filter(F.col("category").isin(list(config.categories)))
    known = kept.join(catalogue.select("product_id").distinct(), "product_id", "left_semi").cache()
    n_kept, n_known = kept.count(), known.count()
    stats.dropped["category_not_in_baskets"] = stats.rows_in - n_kept
    stats.dropped["unknown_product"] = n_kept - n_known

    keyed = known.withColumn("_us", F.unix_micros("event_ts")).withColumn(
        "_key", _basket_key(config)
    )
    basket = Window.partitionBy("user_id", "_key")
    first = Window.partitionBy("user_id", "_key", "product_id").orderBy("_us", "_row")
    baskets = (
        keyed.withColumn("basket_start", F.min("event_ts").over(basket))
        .withColumn("_nth", F.row_number().over(first))
        .filter(F.col("_nth") == 1)
        .withColumn("_size", F.count(F.lit(1)).over(basket))
        .select(
            "user_id",
            "_key",
            "basket_start",
            "product_id",
            F.col("category").alias("first_category"),
            "_size",
        )
        .cache()
    )
    n_distinct = baskets.count()
    stats.dropped["duplicate_in_basket"] = n_known - n_distinct
    oversized = (
        baskets.filter(F.col("_size") > config.max_items)
        .groupBy("user_id", "_key")
        .agg(F.first("_size").alias("_size"))
        .agg(F.count(F.lit(1)).alias("n"), F.sum("_size").alias("rows"))
        .first()
    )
    stats.n_oversized = int(oversized["n"])
    stats.dropped["oversized_basket"] = int(oversized["rows"] or 0)
    kept_baskets = baskets.filter(F.col("_size") <= config.max_items)
    ids = number_in_order(
        kept_baskets.select("user_id", "_key", "basket_start").distinct(),
        [F.col("basket_start"), F.col("user_id"), F.col("_key")],
        "basket_id",
    )
    out = (
        kept_baskets.join(ids.drop("basket_start"), ["user_id", "_key"])
        .select("basket_id", "user_id", "basket_start", "product_id", "first_category")
        .orderBy("basket_id", "product_id")
    )
    stats.rows_out = n_distinct - stats.dropped["oversized_basket"]
    assert stats.rows_in == stats.rows_out + sum(stats.dropped.values()), stats
    _size_stats(kept_baskets, stats)
    known.unpersist()
    return out, stats


def _size_stats(baskets: DataFrame, stats: BasketStats) -> None:
    """`fbt.baskets._size_stats` from a histogram of basket sizes (at most `max_items` rows
    reach the driver, whatever the number of baskets)."""
    from pyspark.sql import functions as F

    histogram = (
        baskets.groupBy("user_id", "_key")
        .agg(F.first("_size").alias("size"))
        .groupBy("size")
        .count()
        .orderBy("size")
        .collect()
    )
    if not histogram:
        return
    sizes = np.repeat(
        np.asarray([row["size"] for row in histogram], dtype=np.int64),
        [row["count"] for row in histogram],
    )
    stats.n_baskets = len(sizes)
    stats.n_single_item = int((sizes == 1).sum())
    stats.size_mean = round(float(sizes.mean()), 4)
    p50, p90, p99 = np.percentile(sizes, [50, 90, 99])
    stats.size_p50, stats.size_p90, stats.size_p99 = float(p50), float(p90), float(p99)
    stats.size_max = int(sizes.max())


def with_row_order(frame: DataFrame) -> DataFrame:
    """`frame` with `_row`, increasing in the order the rows were read (file order for a
    Parquet file or dataset), the tie-break a stable sort would use."""
    from pyspark.sql import functions as F

    return frame.withColumn("_row", F.monotonically_increasing_id())


def baskets_stage(
    spark: SparkSession,
    config: RetailerConfig,
    paths: RunPaths,
    interactions: Path,
    products: Path,
) -> dict[str, Any]:
    """Stage entry point: the baskets dataset and the local stage's summary."""
    frame = with_row_order(spark.read.parquet(str(interactions)))
    catalogue = spark.read.parquet(str(products)).select("product_id")
    baskets, stats = build_baskets(frame, catalogue, config.fbt.baskets)
    path = write_spark_artifact(paths, BASKETS, baskets)
    return baskets_summary(config, path, stats)
