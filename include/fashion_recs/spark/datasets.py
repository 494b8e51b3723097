"""Spark DataFrames written as Parquet dataset directories with the local artifacts' schemas.

A Spark stage's artifact is a directory at the path where the local engine writes a file
(`06_models/popular_products.parquet/part-00000.parquet`, ...), so the run layout does not
change and pyarrow, polars and pandas read either with the same call. Each part is written
by the executor that holds the partition, with pyarrow and the contract's Arrow schema
(`fashion_recs.contract`): the dataset has exactly the local artifact's column types and
nullability, which Spark's own Parquet writer cannot give (it marks every column nullable).
Executors therefore need pyarrow (PySpark's Arrow support needs it anyway) and the run
directory on a filesystem every executor mounts at the same path.

The directory is built beside its target under a temporary name and renamed into place, the
old one (or an old single-file artifact) removed after the swap, so a reader sees the old
artifact or the new one, never a half-written directory. A retried task rewrites its own
part under the same name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, replace_dir, statistics_columns
from fashion_recs.contract import Artifact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PART_RESULT = "part string, rows long"


def _part_writer(build: str, schema: pa.Schema):
    """The function each partition runs: its rows, cast to `schema`, into one part file.

    A closure, so Spark ships it by value and executors need pyarrow but not this package.
    """
    required = [f.name for f in schema if not f.nullable]
    statistics = statistics_columns(schema)  # the local writer's; captured as a plain list
    result = pa.schema([("part", pa.string()), ("rows", pa.int64())])

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        task = TaskContext.get()
        name = f"part-{task.partitionId():05d}.parquet"
        tmp = os.path.join(build, f".{name}.{task.attemptNumber()}.tmp")
        writer, rows = None, 0
        try:
            for batch in batches:
                table = pa.Table.from_batches([batch]).select(schema.names)
                for column in required:
                    if table.column(column).null_count:
                        raise ValueError(
                            f"column {column!r} holds nulls, but the artifact's schema says it "
                            f"never does ({build})"
                        )
                table = table.cast(schema)
                if writer is None:
                    writer = pq.ParquetWriter(
                        tmp, schema, compression="zstd", write_statistics=statistics
                    )
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(build, name))
        yield pa.RecordBatch.from_pydict({"part": [name], "rows": [rows]}, schema=result)

    return write


def write_dataset(frame: DataFrame, target: Path, schema: pa.Schema) -> int:
    """Write `frame` as the dataset directory `target` with exactly `schema`; return its rows.

    Rows keep the frame's order: parts are numbered by partition, and readers read them in
    name order (sort the frame first where the order matters). An empty frame still gives one
    (empty) part, so the directory always carries the schema.
    """
    target = Path(target)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} required by the schema of {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        written = (
            frame.select(*schema.names).mapInArrow(_part_writer(str(build), schema), PART_RESULT)
        ).collect()
        if not written:
            pq.write_table(schema.empty_table(), build / "part-00000.parquet", compression="zstd")
        # mkdtemp makes a private directory; artifacts are read by other users.
        os.chmod(build, 0o755)
        replace_dir(build, target)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return int(sum(row["rows"] for row in written))


def write_spark_artifact(paths: RunPaths, artifact: Artifact, frame: DataFrame) -> Path:
    """Write `frame` as `artifact` of the run (a dataset directory with the artifact's schema)."""
    if artifact.schema is None:
        raise ValueError(f"artifact {artifact.name} has no fixed schema to write a dataset with")
    path = paths.path(artifact)
    write_dataset(frame, path, artifact.schema)
    return path
