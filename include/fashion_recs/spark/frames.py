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


def number_lines(frame: DataFrame, file: str, block: str, name: str) -> DataFrame:
    """`frame`, line-based reads of files (`spark.read.text`, unions of them), with `name`:
    each line's 0-based index in its file.

    `file` tells the files apart and `block` is the start offset of the split a line was read
    in (`_metadata.file_block_start`, selected at the read). One task reads a split from its
    start on, in line order, and its lines stay together in one partition, so a line's index
    is the lines of the file's earlier splits plus its place in its own split: the splits'
    sizes (one small row each) are counted first. No sort or shuffle of the lines themselves.
    """
    from pyspark.sql import functions as F

    placed = frame.withColumn("_mid", F.monotonically_increasing_id())
    blocks = placed.groupBy(file, block).agg(
        F.min("_mid").alias("_first"), F.count(F.lit(1)).alias("_lines")
    )
    offsets: dict[tuple[object, int], int] = {}
    totals: dict[object, int] = {}
    for row in sorted(blocks.collect(), key=lambda r: (r[file], r[block])):
        key = row[file]
        offsets[(key, row[block])] = totals.get(key, 0) - row["_first"]
        totals[key] = totals.get(key, 0) + row["_lines"]
    rows = [(key, block, offset) for (key, block), offset in offsets.items()]
    spark = frame.sparkSession
    shift = spark.createDataFrame(rows, f"{file} long, {block} long, _shift long")
    return (
        placed.join(F.broadcast(shift), on=[file, block])
        .withColumn(name, F.col("_mid") + F.col("_shift"))
        .drop("_mid", "_shift")
    )
