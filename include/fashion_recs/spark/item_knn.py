"""Item-kNN neighbours on Spark: the item-item cosine of `personal.item_knn.ItemKNN`.

The part of item-kNN that grows with the events is the co-occurrence: every pair of items a
user touched, its weight product summed over users. Here it is a self-join of the user x item
entries on the user, so it spreads over executors like the FBT pair counts; what comes back
is catalogue-sized (`n_neighbours` rows per item).

Same definition as the local fit: entries weighted (`raw` or `log1p`), each item's column
scaled to unit length, the cosine of every pair of distinct items that share a user rounded
to `SIMILARITY_QUANTUM`, only positive similarities, each item's `n_neighbours` best kept,
ties by the lower item code. Both engines sum float64 products, in different orders, and
round: they give the same table unless a sum lands within a few ulps of a rounding boundary
(about one value in a billion), which moves it by one quantum (~1e-6).

How it plugs in: `SparkItemNeighbours` is an `ItemNeighbourSearch`, so `ItemKNN(search=...)`
holds exactly this table as `item_similarity` (a CSR item x item matrix, `to_similarity`
builds it), and `similar_items` / the `item_knn_similar` artifact are its first rows per
item; the pipeline hands it to the item-kNN fits when `engine_for("item_knn")` is spark. Its
entries are the model's unit item vectors (`vector_entries`: the same float64 products as
the local search); `item_neighbours` starts from raw entries instead (`matrix_entries`, or at
scale the `interactions` aggregated per (user, item) with `spark.interactions.decay_weight`,
with item codes from the catalogue's order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from fashion_recs.personal.item_knn import SIMILARITY_QUANTUM
from fashion_recs.personal.matrix import WEIGHTINGS, UserItemMatrix

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

NEIGHBOUR_COLUMNS = ["item", "neighbour", "similarity", "rank"]


def matrix_entries(spark: SparkSession, matrix: UserItemMatrix) -> DataFrame:
    """The stored entries of `matrix` as (user, item, value): row and column codes."""
    coo = matrix.values.tocoo()
    return spark.createDataFrame(
        pa.table(
            {
                "user": coo.row.astype(np.int64),
                "item": coo.col.astype(np.int64),
                "value": coo.data.astype(np.float64),
            }
        )
    )


def vector_entries(spark: SparkSession, item_vectors: sp.csr_matrix) -> DataFrame:
    """The stored entries of item x user `item_vectors` as (user, item, w)."""
    coo = item_vectors.tocoo()
    return spark.createDataFrame(
        pa.table(
            {
                "user": coo.col.astype(np.int64),
                "item": coo.row.astype(np.int64),
                "w": coo.data.astype(np.float64),
            }
        )
    )


def _weighted(value: Column, weighting: str) -> Column:
    from pyspark.sql import functions as F

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is not one of {sorted(WEIGHTINGS)}")
    return F.log1p(value) if weighting == "log1p" else value


def item_neighbours(
    entries: DataFrame, n_items: int, n_neighbours: int, weighting: str = "log1p"
) -> DataFrame:
    """Each item's `n_neighbours` most similar other items (see the module docstring).

    `entries`: (user, item, value), one row per (user, item), `item` the item's code (its
    place in the catalogue, which breaks ties) below `n_items`. Returns NEIGHBOUR_COLUMNS:
    item, neighbour (codes), similarity (rounded cosine, > 0), rank (1 = most similar).
    """
    from pyspark.sql import functions as F

    weighted = entries.select("user", "item", _weighted(F.col("value"), weighting).alias("w"))
    norms = weighted.groupBy("item").agg(F.sqrt(F.sum(F.col("w") * F.col("w"))).alias("norm"))
    unit = (
        weighted.join(F.broadcast(norms.filter(F.col("norm") > 0)), "item")
        .select("user", "item", (F.col("w") / F.col("norm")).alias("w"))
        .filter(F.col("w") != 0)
    )
    return cooccurrence_neighbours(unit, n_items, n_neighbours)


def cooccurrence_neighbours(unit: DataFrame, n_items: int, n_neighbours: int) -> DataFrame:
    """`item_neighbours` from unit-length item vectors' entries (user, item, w): the
    self-join on the user, each pair's products summed, rounded, ranked."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kk = min(n_neighbours, max(n_items - 1, 0))
    left = unit.select("user", "item", F.col("w").alias("w_item"))
    right = unit.select("user", F.col("item").alias("neighbour"), F.col("w").alias("w_other"))
    order = Window.partitionBy("item").orderBy(F.col("similarity").desc(), F.col("neighbour"))
    # `quantize` in Spark: floor(x / q + 0.5) * q, exact in float64 for q = 2^-20.
    rounded = F.floor(F.col("cosine") / SIMILARITY_QUANTUM + 0.5) * SIMILARITY_QUANTUM
    return (
        left.join(right, "user")
        .filter(F.col("item") != F.col("neighbour"))
        .groupBy("item", "neighbour")
        .agg(F.sum(F.col("w_item") * F.col("w_other")).alias("cosine"))
        .select("item", "neighbour", rounded.alias("similarity"))
        .filter(F.col("similarity") > 0)
        .withColumn("rank", F.row_number().over(order).cast("int"))
        .filter(F.col("rank") <= kk)
        .select(*NEIGHBOUR_COLUMNS)
    )


class SparkItemNeighbours:
    """An `ItemNeighbourSearch` on Spark: the item vectors' entries go to the session, the
    co-occurrence runs there, each item's neighbours come back (catalogue-sized)."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def __call__(self, item_vectors: sp.csr_matrix, n_neighbours: int) -> sp.csr_matrix:
        n_items = item_vectors.shape[0]
        unit = vector_entries(self.spark, item_vectors)
        neighbours = cooccurrence_neighbours(unit, n_items, n_neighbours).toPandas()
        return to_similarity(neighbours, n_items)


def to_similarity(neighbours: pd.DataFrame, n_items: int) -> sp.csr_matrix:
    """The collected neighbour table as `ItemKNN.item_similarity`: a float32 CSR matrix,
    row = item, column = neighbour, value = similarity."""
    return sp.csr_matrix(
        (
            neighbours["similarity"].to_numpy(dtype=np.float32),
            (neighbours["item"].to_numpy(), neighbours["neighbour"].to_numpy()),
        ),
        shape=(n_items, n_items),
        dtype=np.float32,
    )
