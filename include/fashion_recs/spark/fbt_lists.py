"""`fbt_recommendations` on Spark: the gated FBT lists from DataFrames, the same artifacts.

What grows with the events is done with DataFrames: the baskets' product pairs and their
counts (one self-join per basket, counted for every basket and for the gate's training
share in the same pass), each product's best co-occurring candidates, the merge with the
popularity pads, and basket completion on the held-out baskets. What stays catalogue-sized
or is a handful of numbers runs on the driver with the local code: the popularity pads and
the plain popularity lists (`fbt.recommend`), the cleaned catalogue, and the gate's decision
(`fbt.gate.GateDecision`).

Parity with `stages.fbt.lists_stage`: the gate holds out the same baskets (the local
`default_rng(seed).random(n_baskets)` draw, indexed by the basket's position in basket-id
order; each partition advances its own PCG64 to its first basket instead of drawing every
number on the driver), every score is computed with the same float operations in the same
order (ties in the ranking therefore fall the same way), and ties between candidates of
equal score and product keep the local concatenation order (evidence, then audience pad,
then overall pad).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import FbtListsConfig, RetailerConfig
from fashion_recs.contract import (
    FBT_GATE_METRICS,
    FBT_RECOMMENDATIONS,
    FBT_RECOMMENDATIONS_SCHEMA,
)
from fashion_recs.fbt.gate import CONFIGURED, POPULARITY, GateDecision, choose_variant
from fashion_recs.fbt.recommend import (
    NO_GROUP,
    SOURCES,
    _clean,
    _pads,
    _warn_demoted,
    popularity_lists,
)
from fashion_recs.spark.datasets import write_spark_artifact
from fashion_recs.spark.frames import number_in_order
from fashion_recs.stages.fbt import _catalogue

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Candidate sources in the local concatenation order: the tie-break of equal scores.
_SOURCE_ORDER = {"co_viewed": 0, "audience_popularity": 1, "popularity": 2}


@dataclass(frozen=True)
class CoCounts:
    """The co-occurrence statistics of one set of baskets (what `BasketMatrix` gives the
    local lists): how many baskets, how many hold each product, how many each ordered pair."""

    n_baskets: int
    # Baskets holding each product, positive counts only, in product-id order (float64, as
    # the local `recommend` keeps them).
    counts: pd.Series
    items: DataFrame  # product_id, n_item
    # product_id, recommended_product_id, n_both (both orders, a != b), n_antecedent and
    # n_rec (the two products' basket counts); hash-partitioned by product_id and cached,
    # so each variant's per-product ranking needs no further shuffle.
    pairs: DataFrame


def variant_configs(config: FbtListsConfig) -> dict[str, FbtListsConfig | None]:
    """The gate's variants in `fbt.gate.variants` order, each as the list config it builds
    with (None: plain popularity). The names and order are the local gate's (tested)."""
    out: dict[str, FbtListsConfig | None] = {}
    loose = config.model_copy(update={"exclude_same_department": False})
    for name, base in ((CONFIGURED, config), ("with_substitutes", loose)):
        if name == "with_substitutes" and not config.exclude_same_department:
            continue
        out[name] = base
        out[f"{name}_blend"] = base.model_copy(update={"shrinkage": max(base.shrinkage, 1.0) * 5})
    out[POPULARITY] = None
    return out


def _held_out(seed: int, share: float):
    """The function each partition of (basket_id, basket_index) runs: the local gate's
    `default_rng(seed).random(n) < share` at each basket's index, as `held`.

    The sorted baskets sit in each partition as one run of indices, so a batch draws only
    its own span after advancing the generator to its first index. A closure, so executors
    need numpy and pyarrow but not this package.
    """

    def mark(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            index = batch.column("basket_index").to_numpy(zero_copy_only=False)
            held = np.zeros(len(index), dtype=bool)
            if len(index):
                lo, hi = int(index.min()), int(index.max())
                bits = np.random.PCG64(seed)
                bits.advance(lo)
                draws = np.random.Generator(bits).random(hi - lo + 1)
                held = draws[index - lo] < share
            yield pa.RecordBatch.from_arrays(
                [batch.column("basket_id"), pa.array(held)], names=["basket_id", "held"]
            )

    return mark


def basket_rows(spark: SparkSession, baskets: Path, seed: int, share: float) -> DataFrame:
    """The distinct (basket_id, product_id) rows with `held`: is the basket in the gate's
    held-out share."""
    from pyspark.sql import functions as F

    rows = spark.read.parquet(str(baskets)).select("basket_id", "product_id").distinct()
    numbered = number_in_order(
        rows.select("basket_id").distinct(), [F.col("basket_id")], "basket_index"
    )
    held = numbered.mapInArrow(_held_out(seed, share), "basket_id long, held boolean")
    return rows.join(held, "basket_id")


def co_counts(rows: DataFrame, train_only: bool) -> tuple[CoCounts, CoCounts | None]:
    """The statistics of every basket and (with `train_only`) of the baskets not held out.

    The pairs are counted once for both: each basket's self-join carries its `held` flag.
    """
    from pyspark.sql import functions as F

    kept = (~F.col("held")).cast("long")
    items = (
        rows.groupBy("product_id")
        .agg(F.count(F.lit(1)).alias("n_item"), F.sum(kept).alias("n_train"))
        .cache()
    )
    left = rows.select("basket_id", "product_id", "held")
    right = rows.select("basket_id", F.col("product_id").alias("recommended_product_id"))
    pairs = (
        left.join(right, "basket_id")
        .filter(F.col("product_id") != F.col("recommended_product_id"))
        .groupBy("product_id", "recommended_product_id")
        .agg(F.count(F.lit(1)).alias("n_both"), F.sum(kept).alias("n_train"))
        .cache()
    )
    sizes = rows.groupBy("basket_id", "held").count()
    totals = sizes.agg(
        F.count(F.lit(1)).alias("all"), F.sum((~F.col("held")).cast("long")).alias("train")
    ).first()
    table = items.orderBy("product_id").toArrow().to_pandas()
    every = _side(int(totals["all"]), table, items, pairs, "n_item", "n_both")
    if not train_only:
        return every, None
    return every, _side(int(totals["train"] or 0), table, items, pairs, "n_train", "n_train")


def _side(
    n_baskets: int,
    table: pd.DataFrame,
    items: DataFrame,
    pairs: DataFrame,
    item_count: str,
    pair_count: str,
) -> CoCounts:
    """One basket set's `CoCounts` from the counts shared by both sets (`item_count` and
    `pair_count` name its columns). Product counts are catalogue-sized: broadcast."""
    from pyspark.sql import functions as F

    own = F.broadcast(
        items.filter(F.col(item_count) > 0).select("product_id", F.col(item_count).alias("n_item"))
    )
    counted = (
        pairs.filter(F.col(pair_count) > 0)
        .select("product_id", "recommended_product_id", F.col(pair_count).alias("n_both"))
        .join(own.select("product_id", F.col("n_item").alias("n_antecedent")), "product_id")
        .join(
            own.select(
                F.col("product_id").alias("recommended_product_id"),
                F.col("n_item").alias("n_rec"),
            ),
            "recommended_product_id",
        )
        .repartition("product_id")
        .cache()
    )
    return CoCounts(n_baskets, _positive(table, item_count), own, counted)


def _positive(table: pd.DataFrame, column: str) -> pd.Series:
    counts = table.set_index("product_id")[column].astype(np.float64)
    counts.index = counts.index.astype(str)
    return counts[counts > 0]


def _evidence(
    side: CoCounts, catalogue: DataFrame, config: FbtListsConfig, depth: int
) -> DataFrame:
    """`fbt.recommend.co_viewed` on Spark: each catalogue product's `depth` best products
    sharing at least `min_coview_count` of its baskets (others before same-department ones
    when excluding, then shrunk confidence, then product id)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    m = float(config.shrinkage)
    n_b = F.col("n_rec").cast("double")
    n_a = F.col("n_antecedent").cast("double")
    score = (F.col("n_both").cast("double") + F.lit(m) * (n_b / F.lit(side.n_baskets))) / (
        n_a + F.lit(m)
    )
    order = Window.partitionBy("product_id").orderBy(
        F.col("demoted").asc(), F.col("score").desc(), F.col("recommended_product_id").asc()
    )
    return (
        _with_departments(
            side.pairs.filter(F.col("n_both") >= config.min_coview_count), catalogue, "left"
        )
        .withColumn("score", score)
        .withColumn("demoted", _same_department(config.exclude_same_department))
        .withColumn("_pos", F.row_number().over(order))
        .filter(F.col("_pos") <= depth)
        .select(
            "product_id",
            "recommended_product_id",
            "score",
            F.col("n_both").cast("double").alias("n_both"),
            n_a.alias("n_antecedent"),
            F.lit("co_viewed").alias("source"),
        )
    )


def _with_departments(pairs: DataFrame, catalogue: DataFrame, how: str) -> DataFrame:
    """Pairs with both products' departments (`dept_a`, `dept_b`): the query product must be
    in the catalogue; the recommended one joins `how` ("left" keeps products it lacks)."""
    from pyspark.sql import functions as F

    return pairs.join(
        F.broadcast(catalogue.select("product_id", F.col("department").alias("dept_a"))),
        "product_id",
    ).join(
        F.broadcast(
            catalogue.select(
                F.col("product_id").alias("recommended_product_id"),
                F.col("department").alias("dept_b"),
            )
        ),
        "recommended_product_id",
        how,
    )


def _same_department(exclude: bool):
    """Column: the pair is demoted (excluding, and both products in the same department);
    `dept_a` / `dept_b` are null for no department."""
    from pyspark.sql import functions as F

    if not exclude:
        return F.lit(False)
    return F.coalesce(
        F.col("dept_a").isNotNull() & (F.col("dept_a") == F.col("dept_b")), F.lit(False)
    )


def _pad_rows(
    spark: SparkSession, catalogue: pd.DataFrame, side: CoCounts, config: FbtListsConfig
) -> DataFrame | None:
    """The popularity pads of the local `recommend` (catalogue-sized, built on the driver
    by `fbt.recommend._pads`), scored on the evidence's scale, as a DataFrame."""
    k, m = config.top_k, config.shrinkage
    pads = _pads(catalogue, side.counts, k + 1, config.exclude_same_department)
    if not len(pads):
        return None
    n = max(side.n_baskets, 1)
    n_a = pads["product_id"].map(side.counts).fillna(0.0).to_numpy()
    prior = pads["count"].to_numpy() / n
    frame = pd.DataFrame(
        {
            "product_id": pads["product_id"].astype(str).to_numpy(),
            "recommended_product_id": pads["recommended_product_id"].astype(str).to_numpy(),
            "score": m * prior / (n_a + m) if m > 0 else prior * 1e-9,
            "n_both": 0.0,
            "n_antecedent": n_a.astype(np.float64),
            "source": pads["source"].to_numpy(),
        }
    )
    return spark.createDataFrame(pa.Table.from_pandas(frame, preserve_index=False))


def recommend(
    spark: SparkSession,
    side: CoCounts,
    catalogue: pd.DataFrame,
    catalogue_frame: DataFrame,
    rule_pairs: DataFrame,
    config: FbtListsConfig,
) -> DataFrame:
    """`fbt.recommend.recommend` on Spark: every catalogue product's `top_k` list, in the
    FBT_RECOMMENDATIONS schema plus `demoted`, with the local rows and scores.

    `catalogue` is the cleaned catalogue (`fbt.recommend._clean`) and `catalogue_frame` the
    same as (product_id, department null for none); `rule_pairs` the one-to-one rules with
    `min_pair_count` joint baskets (antecedent, consequent).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    k = config.top_k
    n = max(side.n_baskets, 1)
    cand = _evidence(side, catalogue_frame, config, 3 * k)
    pads = _pad_rows(spark, catalogue, side, config)
    if pads is not None:
        cand = cand.unionByName(pads)
    source_order = F.create_map(*[F.lit(v) for kv in _SOURCE_ORDER.items() for v in kv])
    best = Window.partitionBy("product_id", "recommended_product_id").orderBy(
        F.col("demoted").asc(), F.col("score").desc(), F.col("_source_order").asc()
    )
    ranked = Window.partitionBy("product_id").orderBy(
        F.col("demoted").asc(), F.col("score").desc(), F.col("recommended_product_id").asc()
    )
    top = (
        _with_departments(
            cand.filter(F.col("product_id") != F.col("recommended_product_id")),
            catalogue_frame,
            "inner",
        )
        # Both windows below rank within a product: one shuffle by product serves them.
        .repartition("product_id")
        .withColumn("demoted", _same_department(config.exclude_same_department))
        .withColumn("_source_order", source_order[F.col("source")])
        .withColumn("_best", F.row_number().over(best))
        .filter(F.col("_best") == 1)
        .withColumn("rank", F.row_number().over(ranked).cast("int"))
        .filter(F.col("rank") <= k)
    )
    is_rule = rule_pairs.select(
        F.col("antecedent").alias("product_id"),
        F.col("consequent").alias("recommended_product_id"),
        F.lit(True).alias("_rule"),
    ).distinct()
    items = side.items.select(
        F.col("product_id").alias("recommended_product_id"),
        F.col("n_item").cast("double").alias("n_rec"),
    )
    evidence = F.col("n_both") > 0
    n_both = F.col("n_both")
    n_a = F.greatest(F.col("n_antecedent"), F.lit(1.0))
    n_b = F.coalesce(F.col("n_rec"), F.lit(0.0))
    none = F.lit(None).cast("double")
    return (
        top.join(F.broadcast(is_rule), ["product_id", "recommended_product_id"], "left")
        .join(F.broadcast(items), "recommended_product_id", "left")
        .select(
            "product_id",
            "rank",
            "recommended_product_id",
            "score",
            F.when(F.col("_rule").isNotNull() & evidence, F.lit("rules"))
            .otherwise(F.col("source"))
            .alias("source"),
            F.when(evidence, n_both / F.lit(n)).otherwise(none).alias("support"),
            F.when(evidence, n_both / n_a).otherwise(none).alias("confidence"),
            F.when(evidence, n_both * F.lit(n) / (n_a * n_b)).otherwise(none).alias("lift"),
            "demoted",
        )
    )


def _popularity(spark: SparkSession, catalogue: pd.DataFrame, side: CoCounts, k: int) -> DataFrame:
    """The plain popularity lists (`fbt.recommend.popularity_lists`, catalogue x k on the
    driver) as a DataFrame."""
    lists = popularity_lists(catalogue, side.counts, side.n_baskets, k)
    table = pa.Table.from_pandas(lists, schema=FBT_RECOMMENDATIONS_SCHEMA, preserve_index=False)
    from pyspark.sql import functions as F

    return spark.createDataFrame(table).withColumn("demoted", F.lit(False))


def completion_queries(held: DataFrame) -> DataFrame:
    """The gate's queries: every (basket_id, product_id) of a held-out basket holding two
    products or more (`held`: the held-out baskets' rows). Cached: every variant reads it."""
    from pyspark.sql import functions as F

    sizes = held.groupBy("basket_id").count().filter(F.col("count") >= 2)
    return held.join(sizes.select("basket_id"), "basket_id", "left_semi").cache()


def completion_hit_rate(lists: DataFrame, queries: DataFrame, n_queries: int, k: int) -> float:
    """`fbt.evaluate.completion_hit_rate` on Spark: the share of the `n_queries` queries (see
    `completion_queries`) whose product's top-k list holds another product of its basket."""
    from pyspark.sql import functions as F

    if n_queries == 0:
        return 0.0
    listed = lists.filter(F.col("rank") <= k).select("product_id", "recommended_product_id")
    others = queries.select("basket_id", F.col("product_id").alias("recommended_product_id"))
    hits = (
        queries.join(listed, "product_id")
        .join(others, ["basket_id", "recommended_product_id"], "left_semi")
        .select("basket_id", "product_id")
        .distinct()
        .count()
    )
    return hits / n_queries


def gated_lists(
    spark: SparkSession,
    rows: DataFrame,
    catalogue: pd.DataFrame,
    rule_pairs: DataFrame,
    config: FbtListsConfig,
) -> tuple[DataFrame, GateDecision]:
    """`fbt.gate.gated_lists` on Spark: the variant to publish, measured on the held-out
    baskets of `rows` (see `basket_rows`), rebuilt on every basket; and the decision."""
    from pyspark.sql import functions as F

    k = config.top_k
    configs = variant_configs(config)
    catalogue_frame = spark.createDataFrame(
        pa.Table.from_pandas(
            pd.DataFrame(
                {
                    "product_id": catalogue["product_id"].astype(str).to_numpy(),
                    "department": catalogue["department"].where(
                        catalogue["department"] != NO_GROUP, None
                    ),
                }
            ),
            preserve_index=False,
        )
    ).cache()

    def build(name: str, side: CoCounts) -> DataFrame:
        cfg = configs[name]
        if cfg is None:
            return _popularity(spark, catalogue, side, k)
        return recommend(spark, side, catalogue, catalogue_frame, rule_pairs, cfg)

    every, train = co_counts(rows, train_only=config.gate)
    if not config.gate or train is None:
        decision = GateDecision(CONFIGURED, k=k, reason="gate off")
        return build(CONFIGURED, every), decision
    queries = completion_queries(rows.filter(F.col("held")).select("basket_id", "product_id"))
    n_queries = queries.count()
    if n_queries < config.gate_min_queries:
        reason = (
            f"{n_queries} held-out queries, fewer than fbt.lists.gate_min_queries "
            f"({config.gate_min_queries}): configured lists published unchecked"
        )
        log.warning("fbt gate (spark): %s", reason)
        queries.unpersist()
        decision = GateDecision(CONFIGURED, n_queries=n_queries, k=k, reason=reason)
        return build(CONFIGURED, every), decision
    hit_rates = {}
    for name in configs:
        hit_rates[name] = completion_hit_rate(build(name, train), queries, n_queries, k)
        log.info(
            "fbt gate (spark): %s completes %.4f of %d held-out queries",
            name,
            hit_rates[name],
            n_queries,
        )
    queries.unpersist()
    train.pairs.unpersist()
    decision = choose_variant(hit_rates, n_queries, k, " (spark)")
    return build(decision.chosen, every), decision


def lists_stage(
    spark: SparkSession,
    config: RetailerConfig,
    paths: RunPaths,
    rules: Path,
    baskets: Path,
    products: Path,
) -> dict[str, Any]:
    """Stage entry point: the lists and gate-metrics datasets and the local stage's summary."""
    from pyspark.sql import functions as F

    lists_config = config.fbt.lists
    catalogue = _clean(_catalogue(products))
    rows = basket_rows(spark, baskets, config.seed, lists_config.gate_holdout_share).cache()
    rule_pairs = (
        spark.read.parquet(str(rules))
        .filter(
            (F.col("antecedent_len") == 1)
            & (F.col("consequent_len") == 1)
            & (F.col("n_both") >= lists_config.min_pair_count)
        )
        .select("antecedent", "consequent")
    )
    lists, decision = gated_lists(spark, rows, catalogue, rule_pairs, lists_config)
    lists = lists.orderBy("product_id", "rank").cache()
    path = write_spark_artifact(paths, FBT_RECOMMENDATIONS, lists)
    gate_rows = pa.Table.from_pandas(
        decision.metric_rows(), schema=FBT_GATE_METRICS.schema, preserve_index=False
    )
    gate_path = write_spark_artifact(paths, FBT_GATE_METRICS, spark.createDataFrame(gate_rows))
    by_source = {r["source"]: int(r["count"]) for r in lists.groupBy("source").count().collect()}
    sources = {s: by_source.get(s, 0) for s in SOURCES}
    totals = lists.agg(
        F.countDistinct("product_id").alias("products"),
        F.countDistinct(F.when(F.col("source") == "rules", F.col("product_id"))).alias("rules"),
    ).first()
    demoted = lists.filter(F.col("demoted")).select("product_id").distinct().toPandas()
    _warn_demoted(demoted.assign(demoted=True), catalogue, config.fbt.lists.exclude_same_department)
    lists.unpersist()
    rows.unpersist()
    products_listed, with_rules = int(totals["products"]), int(totals["rules"])
    log.info(
        "fbt lists (spark): %d products, %d with rules, entries by source %s",
        products_listed,
        with_rules,
        sources,
    )
    return {
        "fbt_recommendations": str(path),
        "fbt_metrics_gate": str(gate_path),
        "products": products_listed,
        "products_with_rules": with_rules,
        "entries_by_source": sources,
        "gate": decision.as_dict(),
    }
