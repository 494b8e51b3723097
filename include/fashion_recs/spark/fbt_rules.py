"""`mine_fbt_rules` on Spark: frequent itemsets and association rules with DataFrames.

The same itemsets as the local engines for the same threshold (`fbt.mining.support_threshold`):
single items and pairs are plain DataFrame counts (a self-join of each basket's frequent
items); itemsets of three items and more come from MLlib's FPGrowth, run only on the baskets
that hold three or more items of frequent pairs (no other basket can contain one), with a
minimum support that reproduces the exact basket-count threshold. Rules are then derived from
the integer counts with the thresholds and measures of `fbt.rules.association_rules`, so they
equal the local rules; only the `engine` column says which engine mined them.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import MiningConfig, RetailerConfig
from fashion_recs.contract import FBT_RULES, FBT_RULES_SCHEMA
from fashion_recs.fbt.mining import support_threshold
from fashion_recs.fbt.rules import SEPARATOR
from fashion_recs.spark.datasets import write_dataset

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

ENGINE = "spark_fpgrowth"


def frequent_itemsets(baskets: DataFrame, min_count: int, max_len: int) -> DataFrame:
    """Itemsets in at least `min_count` baskets, up to `max_len` items.

    Columns: `items` (sorted product ids), `k` (their number), `n` (baskets holding them).
    """
    from pyspark.ml.fpm import FPGrowth
    from pyspark.sql import functions as F

    rows = baskets.select("basket_id", "product_id").distinct()
    singles = (
        rows.groupBy("product_id")
        .agg(F.count(F.lit(1)).alias("n"))
        .filter(F.col("n") >= min_count)
        .cache()
    )
    found = [singles.select(F.array("product_id").alias("items"), F.lit(1).alias("k"), "n")]
    if max_len < 2:
        return found[0]
    frequent_rows = rows.join(singles.select("product_id"), "product_id", "left_semi")
    left, right = frequent_rows.alias("a"), frequent_rows.alias("b")
    pairs = (
        left.join(
            right,
            (F.col("a.basket_id") == F.col("b.basket_id"))
            & (F.col("a.product_id") < F.col("b.product_id")),
        )
        .groupBy(F.col("a.product_id").alias("x"), F.col("b.product_id").alias("y"))
        .agg(F.count(F.lit(1)).alias("n"))
        .filter(F.col("n") >= min_count)
        .cache()
    )
    found.append(pairs.select(F.array("x", "y").alias("items"), F.lit(2).alias("k"), "n"))
    if max_len >= 3:
        found.append(_longer_itemsets(frequent_rows, pairs, min_count, max_len, FPGrowth))
    union = found[0]
    for frame in found[1:]:
        union = union.unionByName(frame)
    return union


def _longer_itemsets(
    rows: DataFrame, pairs: DataFrame, min_count: int, max_len: int, fpgrowth: Any
) -> DataFrame:
    """Itemsets of 3..max_len items by FPGrowth on the baskets that can hold one."""
    from pyspark.sql import functions as F

    in_pairs = pairs.select(F.col("x").alias("product_id")).unionByName(
        pairs.select(F.col("y").alias("product_id"))
    )
    candidates = (
        rows.join(in_pairs.distinct(), "product_id", "left_semi")
        .groupBy("basket_id")
        .agg(F.collect_list("product_id").alias("items"))
        .filter(F.size("items") >= 3)
        .cache()
    )
    n_candidates = candidates.count()
    empty = candidates.sparkSession.createDataFrame([], "items array<string>, k int, n long")
    if n_candidates < min_count:
        return empty
    # FPGrowth keeps itemsets with freq >= ceil(minSupport * baskets); half a basket below
    # the threshold makes that ceiling exactly `min_count`, whatever the float rounding.
    model = fpgrowth(
        itemsCol="items", minSupport=(min_count - 0.5) / n_candidates, minConfidence=1.0
    ).fit(candidates)
    return model.freqItemsets.select(
        F.array_sort("items").alias("items"),
        F.size("items").alias("k"),
        F.col("freq").cast("long").alias("n"),
    ).filter((F.col("k") >= 3) & (F.col("k") <= max_len))


def _side(items: Column, positions: tuple[int, ...]) -> Column:
    from pyspark.sql import functions as F

    return F.concat_ws(SEPARATOR, *[items[p] for p in positions])


def association_rules(
    itemsets: DataFrame,
    lengths: list[int],
    n_baskets: int,
    mining: MiningConfig,
) -> DataFrame:
    """`fbt.rules.association_rules` on Spark: every rule A -> C splitting a frequent itemset
    of one of `lengths`, thresholds on the exact counts, the same measures, the same order."""
    from pyspark.sql import functions as F

    keyed = itemsets.select(F.concat_ws(SEPARATOR, "items").alias("key"), "items", "k", "n")
    counts = keyed.select("key", "n")
    candidates = []
    for k in (k for k in lengths if k >= 2):
        of_k = keyed.filter(F.col("k") == k)
        for size in range(1, k):
            for ante in itertools.combinations(range(k), size):
                cons = tuple(p for p in range(k) if p not in ante)
                candidates.append(
                    of_k.select(
                        _side(F.col("items"), ante).alias("antecedent"),
                        _side(F.col("items"), cons).alias("consequent"),
                        F.lit(size).cast("int").alias("antecedent_len"),
                        F.lit(k - size).cast("int").alias("consequent_len"),
                        F.col("n").alias("n_both"),
                    )
                )
    if not candidates:
        return itemsets.sparkSession.createDataFrame([], _spark_schema())
    rules = candidates[0]
    for frame in candidates[1:]:
        rules = rules.unionByName(frame)
    n = F.lit(n_baskets)
    n_a, n_c, n_ac = F.col("n_antecedent"), F.col("n_consequent"), F.col("n_both")
    rules = (
        rules.join(
            counts.select(F.col("key").alias("antecedent"), F.col("n").alias("n_antecedent")),
            "antecedent",
        )
        .join(
            counts.select(F.col("key").alias("consequent"), F.col("n").alias("n_consequent")),
            "consequent",
        )
        .filter(
            (n_ac.cast("double") >= F.lit(mining.min_confidence) * n_a)
            & (n_ac.cast("double") * n >= F.lit(mining.min_lift) * (n_a.cast("double") * n_c))
        )
    )
    sup_a, sup_c, sup = n_a / n, n_c / n, n_ac / n
    confidence = sup / sup_a
    return rules.select(
        "antecedent",
        "consequent",
        "antecedent_len",
        "consequent_len",
        "n_antecedent",
        "n_consequent",
        "n_both",
        n.cast("long").alias("n_baskets"),
        sup_a.alias("antecedent_support"),
        sup_c.alias("consequent_support"),
        sup.alias("support"),
        confidence.alias("confidence"),
        (confidence / sup_c).alias("lift"),
        (sup - sup_a * sup_c).alias("leverage"),
        # Infinite when the rule never fails: null, as in the local rules.
        F.when(n_ac == n_a, F.lit(None).cast("double"))
        .otherwise((F.lit(1.0) - sup_c) / (F.lit(1.0) - confidence))
        .alias("conviction"),
        F.lit(ENGINE).alias("engine"),
    ).orderBy(F.col("antecedent"), F.col("confidence").desc(), F.col("consequent"))


def _spark_schema() -> str:
    """FBT_RULES as a Spark DDL string, for an empty rules frame."""
    types = {"string": "string", "int32": "int", "int64": "long", "double": "double"}
    return ", ".join(f"{f.name} {types[str(f.type)]}" for f in FBT_RULES_SCHEMA)


def rules_stage(
    spark: SparkSession, config: RetailerConfig, paths: RunPaths, baskets: Path
) -> dict[str, Any]:
    """Stage entry point: the rules dataset and the local stage's summary."""
    from pyspark.sql import functions as F

    mining = config.fbt.mining
    started = time.perf_counter()
    frame = spark.read.parquet(str(baskets)).select("basket_id", "product_id").cache()
    sizes = frame.agg(
        F.countDistinct("basket_id").alias("baskets"), F.countDistinct("product_id").alias("items")
    ).first()
    n_baskets, n_items = int(sizes["baskets"]), int(sizes["items"])
    t = support_threshold(n_baskets, mining.min_support, mining.min_count)
    itemsets = frequent_itemsets(frame, t, mining.max_len).cache()
    by_length = {int(r["k"]): int(r["count"]) for r in itemsets.groupBy("k").count().collect()}
    lengths = sorted(k for k, count in by_length.items() if count)
    rules = association_rules(itemsets, lengths, n_baskets, mining)
    path = paths.path(FBT_RULES)
    n_rules = write_dataset(rules, path, FBT_RULES_SCHEMA)
    seconds = time.perf_counter() - started
    itemsets.unpersist()
    frame.unpersist()
    if n_rules == 0:
        log.warning(
            "fbt (spark): no rule passed min_support %g (%d baskets), min_confidence %g and "
            "min_lift %g on %d baskets; the rules table is empty and lists fall back. Lower "
            "fbt.mining.min_support / min_count to find rules.",
            mining.min_support,
            t,
            mining.min_confidence,
            mining.min_lift,
            n_baskets,
        )
    log.info(
        "fbt (spark): %d itemsets by length %s, %d rules in %.2f s",
        sum(by_length.values()),
        by_length,
        n_rules,
        seconds,
    )
    return {
        "fbt_rules": str(path),
        "engine": ENGINE,
        "seconds": round(seconds, 3),
        "n_baskets": n_baskets,
        "n_items": n_items,
        "min_count": t,
        "itemsets_by_length": {str(k): by_length[k] for k in lengths},
        "n_rules": n_rules,
    }
