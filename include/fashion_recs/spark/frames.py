"""DataFrame helpers the Spark stages share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Spark's monotonically_increasing_id: partition id in the upper bits, row in the lower 33.
_ROW_BITS = 33


def number_in_order(frame: DataFrame, order: list[Column], name: str) -> DataFrame:
    """`frame` sorted by `order` with `name`: 0, 1, 2, ... in that order.

    A global row number without moving every row into one partition: the sorted frame's rows
    are counted per partition, and each row's number is its partition's offset plus its
    position inside the partition.
    """
    from pyspark.sql import functions as F

    ranked = (
        frame.orderBy(*order)
        .withColumn("_part", F.spark_partition_id())
        .withColumn("_mid", F.monotonically_increasing_id())
        .cache()
    )
    counts = dict(ranked.groupBy("_part").count().collect())
    offsets, total = {}, 0
    for part in sorted(counts):
        offsets[part], total = total, total + counts[part]
    offset = (
        F.create_map(*[F.lit(v).cast("long") for kv in offsets.items() for v in kv])
        if offsets
        else None
    )
    position = F.col("_mid") - F.shiftleft(F.col("_part").cast("long"), _ROW_BITS)
    number = (offset[F.col("_part").cast("long")] + position) if offset is not None else position
    return ranked.withColumn(name, number.cast("long")).drop("_part", "_mid")
