"""`popular_items` on Spark: `stages.popular` with DataFrames, the same artifact and summary.

Scores are the same sums of decayed weights (equal to the local ones up to float summation
order), segments the same levels with the same `min_segment_users`, and ties broken the same
way (score, then users, descending; then product id), so the published lists are the same.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_recs.artifacts import RunPaths
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import PopularityConfig, RetailerConfig
from fashion_recs.contract import POPULAR, POPULAR_SCHEMA
from fashion_recs.spark.datasets import write_spark_artifact
from fashion_recs.spark.interactions import decay_weight
from fashion_recs.stages.popular import SEGMENT_LEVELS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def rank_popular(
    user_scores: DataFrame, segment_cols: list[str], cfg: PopularityConfig, unknown: str
) -> DataFrame:
    """Top-k products per segment by score (ties: more users, then product id).

    `user_scores` holds one row per (user, product) with the user's summed score: a user is
    in one segment of each level, so a product's users are its rows, counted without a
    distinct count.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    frame = user_scores.withColumn("_all", F.lit(1))
    for col in segment_cols:
        frame = frame.filter(F.col(col) != unknown)
    keys = segment_cols or ["_all"]
    min_users = cfg.min_segment_users if segment_cols else 1
    sizes = (
        frame.select("user_id", *keys)
        .distinct()
        .groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("segment_users"))
        .filter(F.col("segment_users") >= min_users)
    )
    order = Window.partitionBy(*keys).orderBy(
        F.col("score").desc(), F.col("n_users").desc(), F.col("product_id").asc()
    )
    return (
        frame.groupBy(*keys, "product_id")
        .agg(F.sum("score").alias("score"), F.count(F.lit(1)).alias("n_users"))
        .join(F.broadcast(sizes), on=keys)
        .withColumn("rank", F.row_number().over(order).cast("int"))
        .filter(F.col("rank") <= cfg.top_k)
    )


def scored_interactions(
    interactions: DataFrame,
    users: DataFrame,
    cfg: PopularityConfig,
    as_of: datetime,
    unknown: str,
) -> DataFrame:
    """One row per (user, product): the summed decayed score, the user's age group and
    region (unknown segments labelled)."""
    from pyspark.sql import functions as F

    return (
        interactions.select(
            "user_id",
            "product_id",
            decay_weight(F.col("weight"), F.col("event_ts"), as_of, cfg.half_life_days).alias(
                "score"
            ),
        )
        .groupBy("user_id", "product_id")
        .agg(F.sum("score").alias("score"))
        .join(users.select("user_id", "age_group", "region"), on="user_id", how="left")
        .fillna(unknown, subset=["age_group", "region"])
    )


def popular_from_scored(scored: DataFrame, cfg: PopularityConfig, unknown: str) -> DataFrame:
    """Every segment level's top k, in the POPULAR schema and the local artifact's order.

    `scored` (see `scored_interactions`) is read once per level: cache it when it is
    expensive to recompute."""
    from pyspark.sql import functions as F

    tables = []
    for position, (level, cols) in enumerate(SEGMENT_LEVELS.items()):
        ranked = rank_popular(scored, cols, cfg, unknown)
        tables.append(
            ranked.select(
                F.lit(level).alias("segment_type"),
                (F.col("age_group") if "age_group" in cols else F.lit(None).cast("string")).alias(
                    "age_group"
                ),
                (F.col("region") if "region" in cols else F.lit(None).cast("string")).alias(
                    "region"
                ),
                "rank",
                "product_id",
                "score",
                "n_users",
                F.lit(position).alias("_lvl"),
            )
        )
    union = tables[0]
    for table in tables[1:]:
        union = union.unionByName(table)
    return union.orderBy(
        "_lvl", F.col("age_group").asc_nulls_first(), F.col("region").asc_nulls_first(), "rank"
    ).select(*POPULAR_SCHEMA.names)


def popular_products(
    interactions: DataFrame,
    users: DataFrame,
    cfg: PopularityConfig,
    as_of: datetime,
    unknown: str,
) -> DataFrame:
    """`stages.popular.popular_products` on Spark: the same rows in the same order."""
    return popular_from_scored(
        scored_interactions(interactions, users, cfg, as_of, unknown), cfg, unknown
    )


def build_popular(
    spark: SparkSession,
    config: RetailerConfig,
    paths: RunPaths,
    interactions_path: Path,
    users_path: Path,
    as_of: date,
) -> dict[str, Any]:
    """Stage entry point: the popularity dataset and the local stage's summary."""
    from pyspark.sql import functions as F

    interactions = spark.read.parquet(str(interactions_path)).select(
        "user_id", "product_id", "event_ts", "weight"
    )
    users = spark.read.parquet(str(users_path)).select("user_id", "age_group", "region")
    unknown = config.demographics.unknown_label
    scored = scored_interactions(
        interactions, users, config.popularity, as_of_timestamp(as_of), unknown
    ).cache()
    table = popular_from_scored(scored, config.popularity, unknown).cache()
    path = write_spark_artifact(paths, POPULAR, table)
    segments = (
        table.select("segment_type", "age_group", "region")
        .distinct()
        .groupBy("segment_type")
        .agg(F.count(F.lit(1)).alias("segments"))
        .join(table.groupBy("segment_type").agg(F.count(F.lit(1)).alias("rows")), "segment_type")
        .collect()
    )
    summary = {
        row["segment_type"]: {"segments": row["segments"], "rows": row["rows"]} for row in segments
    }
    top = [
        row["product_id"]
        for row in table.filter(F.col("segment_type") == "overall")
        .orderBy("rank")
        .limit(10)
        .collect()
    ]
    n_rows = sum(s["rows"] for s in summary.values())
    log.info("popular (spark): %d rows; segments %s; overall top 3 %s", n_rows, summary, top[:3])
    table.unpersist()
    scored.unpersist()
    return {"popular_products": str(path), "segments": summary, "overall_top10": top}
