"""`map_interactions` on Spark, and the interaction expressions the Spark stages share,
written to match the local engine's.

Time is read as integer microseconds since the epoch (`unix_micros`), never through the
session time zone, so a cluster in any zone computes the local engine's UTC numbers.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fashion_recs.artifacts import RunPaths, read_frame
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import InteractionRule, RetailerConfig
from fashion_recs.contract import (
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    USER_ITEMS,
    USER_ITEMS_SCHEMA,
    quarantine,
)
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate
from fashion_recs.spark.datasets import write_dataset, write_spark_artifact
from fashion_recs.stages.interactions import SECONDS_PER_DAY, STAGE

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS_PER_SECOND = 1_000_000


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def decay_weight(weight: Column, ts: Column, as_of: datetime, half_life_days: float) -> Column:
    """`stages.interactions.decay_weight` in Spark: weight * 0.5 ** (age in days / half-life),
    the age counted in whole seconds (as polars' `total_seconds` does), events after as-of
    at full weight."""
    from pyspark.sql import functions as F

    age_us = F.lit(epoch_micros(as_of)) - F.unix_micros(ts)
    # Whole seconds, truncated toward zero like polars: the remainder (sign of the dividend,
    # as in Java) off first, so the division is exact.
    age_seconds = (age_us - age_us % MICROS_PER_SECOND) / MICROS_PER_SECOND
    age_days = F.greatest(age_seconds / F.lit(SECONDS_PER_DAY), F.lit(0.0))
    return weight * F.pow(F.lit(0.5), age_days / F.lit(float(half_life_days)))


def utc_text(ts: Column) -> Column:
    """A timestamp as polars writes a UTC datetime cast to text
    (`2026-10-30 12:00:00.000000+00:00`), whatever the session time zone."""
    from pyspark.sql import functions as F

    wall = F.to_utc_timestamp(ts, F.current_timezone())
    return F.concat(F.date_format(wall, "yyyy-MM-dd HH:mm:ss.SSSSSS"), F.lit("+00:00"))


def read_in_order(spark: SparkSession, path: Path, source: int = 0) -> DataFrame:
    """A Parquet artifact (file or dataset directory) with `_order`, its rows' order.

    The local stage keeps the events file's order among events that tie on (user, time,
    product); Spark reads row groups in any order, so each row carries its place: the part's
    name (parts are numbered in row order) and its index inside the part, after `source`.
    """
    from pyspark.sql import functions as F

    frame = spark.read.parquet(str(path))
    return frame.select(
        *frame.columns,
        F.struct(
            F.lit(source).alias("source"),
            F.col("_metadata.file_name").alias("file"),
            F.col("_metadata.row_index").alias("row"),
        ).alias("_order"),
    )


def weight_events(events: DataFrame, rules: list[InteractionRule]) -> DataFrame:
    """`stages.interactions.weight_events` in Spark: category and weight by the first rule
    that matches (exact button rules before any-button ones); null where none does."""
    from pyspark.sql import functions as F

    exact = [r for r in rules if r.button_name is not None]
    any_button = [r for r in rules if r.button_name is None]
    category = weight = None
    for rule in [*exact, *any_button]:
        matches = F.col("event_name") == rule.event_name
        if rule.button_name is not None:
            matches = matches & (F.col("button_name") == rule.button_name)
        if category is None:
            category = F.when(matches, F.lit(rule.category))
            weight = F.when(matches, F.lit(float(rule.weight)))
        else:
            category = category.when(matches, F.lit(rule.category))
            weight = weight.when(matches, F.lit(float(rule.weight)))
    if category is None or weight is None:
        category, weight = F.lit(None).cast("string"), F.lit(None).cast("double")
    return events.withColumn("category", category).withColumn("weight", weight)


def aggregate_user_items(weighted: DataFrame, as_of: datetime, half_life_days: float) -> DataFrame:
    """`stages.interactions.aggregate_user_items` in Spark, sorted by (user, product).

    The strongest signal is the (weight, category) maximum of the pair's events: the largest
    weight, ties to the larger category name, as the local rank does."""
    from pyspark.sql import functions as F

    decayed = decay_weight(F.col("weight"), F.col("event_ts"), as_of, half_life_days)
    return (
        weighted.groupBy("user_id", "product_id")
        .agg(
            F.count(F.lit(1)).alias("n_events"),
            F.sum("weight").alias("weight_sum"),
            F.sum(decayed).alias("decayed_weight"),
            F.max(F.struct("weight", "category")).alias("_signal"),
            F.min("event_ts").alias("first_ts"),
            F.max("event_ts").alias("last_ts"),
        )
        .withColumn("strongest_category", F.col("_signal.category"))
        .orderBy("user_id", "product_id")
        .select(*USER_ITEMS_SCHEMA.names)
    )


def build_interactions(
    spark: SparkSession,
    config: RetailerConfig,
    paths: RunPaths,
    events_path: Path,
    as_of: date,
    logged_path: Path | None = None,
) -> dict[str, Any]:
    """`stages.interactions.build_interactions` on Spark: the same two artifacts (dataset
    directories), the same quarantine of unmapped events (a dataset directory too) and the
    same summary.

    Weighted events are sorted by (user, time, product) and, among ties, by their place in the
    events artifact then the interaction log, which is the local stage's stable sort.
    """
    from pyspark.sql import functions as F

    events = read_in_order(spark, events_path)
    columns = [c for c in events.columns if c != "_order"]
    n_logged = 0
    if logged_path is not None:
        logged = read_in_order(spark, logged_path, source=1).select(*columns, "_order")
        events = events.unionByName(logged)
    weighted_all = weight_events(events, config.interactions.rules).cache()
    weighted = (
        weighted_all.filter(F.col("category").isNotNull())
        .orderBy("user_id", "event_ts", "product_id", "_order")
        .select(*INTERACTIONS_SCHEMA.names)
        .cache()
    )
    as_of_ts = as_of_timestamp(as_of)
    user_items = aggregate_user_items(
        weighted, as_of_ts, config.interactions.half_life_days
    ).cache()
    interactions_path = write_spark_artifact(paths, INTERACTIONS, weighted)
    user_items_path = write_spark_artifact(paths, USER_ITEMS, user_items)

    q_path = paths.path(quarantine(STAGE))
    rejected = weighted_all.filter(F.col("category").isNull()).orderBy("_order")
    q_columns = ["reason", "column", *columns]
    write_dataset(
        rejected.select(
            F.lit("unmapped_interaction").alias("reason"),
            F.lit("event_name|button_name").alias("column"),
            *[
                (utc_text(F.col(c)) if c == "event_ts" else F.col(c).cast("string")).alias(c)
                for c in columns
            ],
        ),
        q_path,
        pa.schema([pa.field(c, pa.string()) for c in q_columns]),
    )
    totals = weighted_all.agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.count("category").alias("rows_out"),
        F.sum(F.col("_order.source")).alias("logged"),
    ).first()
    assert totals is not None
    n_logged = int(totals["logged"] or 0)
    n_unmapped = int(totals["rows_in"]) - int(totals["rows_out"])
    counts = StageCounts(
        stage=STAGE,
        rows_in=int(totals["rows_in"]),
        rows_out=int(totals["rows_out"]),
        rows_quarantined=n_unmapped,
        reasons={"unmapped_interaction": n_unmapped} if n_unmapped else {},
        quarantine_path=str(q_path),
    )
    by_category = sorted(
        (row["category"], int(row["count"]))
        for row in weighted.groupBy("category").count().collect()
    )
    n_user_items = user_items.count()
    n_users = weighted.select("user_id").distinct().count()
    log.info(
        "interactions (spark): %d events -> %d weighted (%s), %d user-product pairs, %d unmapped",
        counts.rows_in,
        counts.rows_out,
        dict(by_category),
        n_user_items,
        n_unmapped,
    )
    for frame in (user_items, weighted, weighted_all):
        frame.unpersist()
    threshold = config.quality.threshold(STAGE)
    if counts.reject_rate > threshold:
        enforce_reject_rate(counts, threshold, read_frame(q_path, ["reason", "column"]))
    return {
        "interactions": str(interactions_path),
        "user_items": str(user_items_path),
        "counts": counts.as_dict(),
        "categories": dict(by_category),
        "n_user_items": n_user_items,
        "n_users": n_users,
        "logged_events": n_logged,
        "as_of": as_of_ts.isoformat(),
    }
