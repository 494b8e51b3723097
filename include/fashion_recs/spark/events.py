"""`filter_events` on Spark: `stages.events` with DataFrames, the same artifacts and summary.

Reading. Spark reads each events file itself, line by line (`spark.read.text` with `\\n` as
the only line break, as the local reader has it), and numbers the lines in file order
without a sort (`frames.number_lines`: a split's lines are read in order from its start
offset, so a line's index is the lines of the file's earlier splits plus its place in its
split). That index is the stable row number the order-dependent outputs need: events are
written in (file, row, slot, cell) order and a repeated row loses to its first occurrence.

A file whose records are one line each (the common export, checked in the same scan: no
line with an odd number of `"`, no blank line, no `\\r` but a CRLF's, valid UTF-8, no
byte-order mark, no line over `quality.max_record_bytes`) is parsed line by line with
`from_csv` (all columns strings, `"` as quote and as its own escape): a line with fewer
fields than the header is padded with "", one with more is cut to the header's width, as
the local reader does, and every line is a record, so row = line - 2. Any other file (a
quoted line break, an unbalanced quote, blank lines, bytes that are not UTF-8, an oversized
record) is cut into records by the local block reader (`stages.events.read_blocks`) on the
driver, streamed block by block into a temporary Parquet file that Spark then reads: its
recovery rules (resume at the next line after a broken quote, skip blank lines, keep the
file's record numbers) are sequential by nature, such exports are rare, and this gives
them exactly the local quarantine reasons and rows. Memory on the driver stays one block.

Classifying is `stages.events.classify_query` in Spark expressions (the same verdicts in the
same order), ids are the same regex's matches, lower-cased, one row per (row, id) after an
id repeated within a row is dropped, and the catalogue is a broadcast join. Timestamps are
parsed from the configured strptime formats translated into a regular expression and
`try_make_timestamp` in UTC (`chrono_timestamp`), not through Spark's datetime patterns,
whose widths and whitespace rules differ from the local parser's.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import EventColumns, EventsConfig, RetailerConfig
from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, EVENTS_SCHEMA, quarantine
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate
from fashion_recs.spark.datasets import write_dataset
from fashion_recs.spark.frames import number_lines
from fashion_recs.stages.events import (
    AFTER_AS_OF,
    BYTES_PER_ROW,
    CONTROL_CHARACTERS,
    CONTROL_PATTERN,
    DUPLICATE_EVENT,
    FILTERED_VERDICTS,
    SLOT_NAMES,
    STAGE,
    count_verdicts,
    read_blocks,
    readable_batches,
)
from fashion_recs.stages.raw_csv import MAX_RECORD_BYTES, header_of, require_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

BOM_TEXT = "\ufeff"
# Whitespace as Rust's `char::is_whitespace` (Unicode White_Space): what polars strips.
_STRIP = r"(?U)^\s+|\s+$"
_DIGITS = "[0-9]"
_SPACE = r"(?U)\s*"
# Each strptime directive the translation knows: its expression and the field it fills.
# Numbers skip leading whitespace, as the local parser does.
_DIRECTIVES: dict[str, tuple[str, str | None]] = {
    "%Y": (rf"{_SPACE}(\+{_DIGITS}+|-{_DIGITS}+|{_DIGITS}{{1,4}})", "year"),
    "%m": (rf"{_SPACE}({_DIGITS}{{1,2}})", "month"),
    "%d": (rf"{_SPACE}({_DIGITS}{{1,2}})", "day"),
    "%H": (rf"{_SPACE}({_DIGITS}{{1,2}})", "hour"),
    "%M": (rf"{_SPACE}({_DIGITS}{{1,2}})", "minute"),
    "%S": (rf"{_SPACE}({_DIGITS}{{1,2}})", "second"),
    "%.f": (rf"(?:\.({_DIGITS}+))?", "fraction"),
    "%z": (rf"{_SPACE}([+-]{_DIGITS}{{2}}:?{_DIGITS}{{2}})", "offset"),
    "%%": ("%", None),
}
_ALIASES = {"%F": "%Y-%m-%d", "%T": "%H:%M:%S"}


def chrono_pattern(fmt: str) -> tuple[str, list[str]]:
    """A strptime format (as the local engine's parser reads it) as an anchored regular
    expression, and the field each of its groups holds.

    A space in the format matches any whitespace, none included, as in the local parser.
    A directive without a translation fails the stage at its start, naming it."""
    for alias, full in _ALIASES.items():
        fmt = fmt.replace(alias, full)
    parts, fields, i = [], [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            key = fmt[i : i + 3] if fmt.startswith("%.f", i) else fmt[i : i + 2]
            if key not in _DIRECTIVES:
                raise ValueError(
                    f"events.timestamp_formats: {key!r} in {fmt!r} has no Spark translation "
                    f"(known: {sorted(_DIRECTIVES)}); use engine local for this stage"
                )
            expression, field = _DIRECTIVES[key]
            parts.append(expression)
            if field is not None:
                fields.append(field)
            i += len(key)
        elif fmt[i].isspace():
            parts.append(_SPACE)
            i += 1
        else:
            parts.append(re.escape(fmt[i]))
            i += 1
    return "^" + "".join(parts) + r"\z", fields


def chrono_timestamp(value: Column, fmt: str) -> Column:
    """`value` parsed with one strptime format, as a UTC timestamp; null when it does not
    match the whole value or names no valid time. Without an offset the time is UTC;
    fractions of a second are cut to microseconds."""
    from pyspark.sql import functions as F

    pattern, fields = chrono_pattern(fmt)
    group = {name: F.regexp_extract(value, pattern, i + 1) for i, name in enumerate(fields)}

    def number(name: str, default: int) -> Column:
        if name not in group:
            return F.lit(default)
        return F.regexp_replace(group[name], r"^\+", "").try_cast("int")

    fraction = (
        F.rpad(F.substring(group["fraction"], 1, 6), 6, "0") if "fraction" in group else F.lit("0")
    )
    seconds = F.concat(number("second", 0).cast("string"), F.lit("."), fraction)
    parsed = F.try_make_timestamp(
        number("year", 1970),
        number("month", 1),
        number("day", 1),
        number("hour", 0),
        number("minute", 0),
        seconds.cast("decimal(16,6)"),
        F.lit("UTC"),
    )
    if "offset" in group:
        digits = F.regexp_replace(group["offset"], ":", "")
        sign = F.when(F.substring(digits, 1, 1) == "-", -1).otherwise(1)
        minutes = sign * (
            F.substring(digits, 2, 2).cast("int") * 60 + F.substring(digits, 4, 2).cast("int")
        )
        parsed = F.timestamp_micros(F.unix_micros(parsed) - minutes * 60_000_000)
    return F.when(value.rlike(pattern), parsed)


def parse_timestamps(value: Column, formats: list[str]) -> Column:
    """The first format that parses wins (`stages.events.parse_timestamps`)."""
    from pyspark.sql import functions as F

    return F.coalesce(*[chrono_timestamp(value, fmt) for fmt in formats])


def _one_of(column: str, values: list[str]) -> Column:
    from pyspark.sql import functions as F

    return F.col(column).isin(values) if values else F.lit(False)


def _text_lines(spark: SparkSession, sources: list[Path]) -> DataFrame:
    """Every physical line of every file: `_file` (index in `sources`), `_line` (0-based,
    the header's included) and `value` (the line without its `\\n`)."""
    from pyspark.sql import functions as F

    reads = [
        spark.read.option("lineSep", "\n")
        .text(str(source))
        .select(
            F.lit(i).cast("long").alias("_file"),
            F.col("_metadata.file_block_start").alias("_block"),
            "value",
        )
        for i, source in enumerate(sources)
    ]
    union = reads[0]
    for read in reads[1:]:
        union = union.unionByName(read)
    return number_lines(union, "_file", "_block", "_line").drop("_block")


def _line_checks(lines: DataFrame, max_record_bytes: int) -> dict[int, dict[str, Any]]:
    """Per file: its data lines, and whether every one of them is a whole record that
    `from_csv` reads as the local reader would (see the module docstring)."""
    from pyspark.sql import functions as F

    value = F.col("value")
    quotes = F.length(value) - F.length(F.regexp_replace(value, '"', ""))
    header = F.col("_line") == 0
    bad = (
        (quotes % 2 == 1)
        | ~F.is_valid_utf8(value)
        | F.regexp_replace(value, "\r$", "").contains("\r")
        | (F.octet_length(value) + 2 > max_record_bytes)
        | (header & value.startswith(BOM_TEXT))
        | (~header & ((value == "") | (value == "\r")))
    )
    rows = (
        lines.groupBy("_file")
        .agg(
            F.sum(F.when(header, 0).otherwise(1)).alias("data_lines"),
            F.max(bad.cast("int")).alias("odd"),
        )
        .collect()
    )
    return {
        int(row["_file"]): {"data_lines": int(row["data_lines"]), "simple": not row["odd"]}
        for row in rows
    }


def _from_lines(
    lines: DataFrame, names: dict[int, list[str]], raw_columns: list[str]
) -> list[DataFrame]:
    """The records of one-record-a-line files: `_file`, `row_number`, `line_number` and the
    raw columns ("" where missing)."""
    from pyspark.sql import functions as F

    frames = []
    for file, header in names.items():
        schema = ", ".join(f"`_c{i}` string" for i in range(len(header)))
        where = {name: header.index(name) for name in raw_columns}
        parsed = F.from_csv(
            F.regexp_replace(F.col("value"), "\r$", ""),
            schema,
            {"quote": '"', "escape": '"', "mode": "PERMISSIVE"},
        )
        frames.append(
            lines.filter((F.col("_file") == file) & (F.col("_line") > 0)).select(
                "_file",
                (F.col("_line") - 1).alias("row_number"),
                (F.col("_line") + 1).alias("line_number"),
                *[
                    F.coalesce(parsed[f"_c{where[name]}"], F.lit("")).alias(name)
                    for name in raw_columns
                ],
            )
        )
    return frames


def _from_blocks(
    source: Path,
    file: int,
    cols: EventColumns,
    block_bytes: int,
    max_record_bytes: int,
    build: Path,
) -> tuple[Path, list[dict[str, Any]], int, int]:
    """A file the line reader cannot take, cut into records by the local block reader:
    its rows into a Parquet file under `build`, and (reader rejects, records, lines)."""
    raw = cols.raw_columns
    schema = pa.schema(
        [
            ("_file", pa.int64()),
            ("row_number", pa.int64()),
            ("line_number", pa.int64()),
            *[(name, pa.string()) for name in raw],
        ]
    )
    target = build / f"records-{file:05d}.parquet"
    rejected: list[dict[str, Any]] = []
    records = lines = 0
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        blocks = read_blocks(source, raw, block_bytes, max_record_bytes)
        for block in readable_batches(blocks, source):
            rows = block.rows.to_arrow()
            n = rows.num_rows
            table = pa.table(
                {
                    "_file": pa.array([file] * n, pa.int64()),
                    "row_number": rows.column("row_number").cast(pa.int64()),
                    "line_number": rows.column("line_number").cast(pa.int64()),
                    **{name: rows.column(name).cast(pa.string()) for name in raw},
                },
                schema=schema,
            )
            writer.write_table(table)
            for reject in block.rejected.to_dicts():
                rejected.append({**reject, "_file": file})
            records += n + block.rejected.height
            lines += block.lines
    return target, rejected, records, lines


def classify(
    records: DataFrame,
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue: DataFrame,
    as_of: datetime | None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(rows of interest with their verdict, their ids, the persisted parsed rows both come
    from, for the caller to unpersist once it has written them): `stages.events.
    classify_query`, `settle_several_ids` and `mark_repeats` in Spark.

    Rows: `_file`, `row_number`, `line_number`, the raw columns, `user`, `event_ts`,
    `reason` (null when kept). Ids: one row per (row, id), an id repeated within a row
    once, at its first place (`_slot`, `_pos`), with `known` (in the catalogue)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    interesting = _one_of(cols.event_name, cfg.events_of_interest) | _one_of(
        cols.button_name, cfg.buttons_of_interest
    )
    # Both outputs start from these rows: kept once (spilling to disk when large) instead of
    # reading and parsing the files again for each.
    rows = (
        records.filter(interesting)
        .select(
            "*",
            F.regexp_replace(F.col(cols.user_id), _STRIP, "").alias("user"),
            parse_timestamps(F.col(cols.timestamp), cfg.timestamp_formats).alias("event_ts"),
            *[
                F.regexp_extract_all(F.lower(F.col(src)), F.lit(cfg.id_pattern), 0).alias(slot)
                for src, slot in zip(cols.product_columns, slots, strict=True)
            ],
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    key = ["_file", "row_number"]
    exploded = None
    for i, slot in enumerate(slots):
        part = rows.select(*key, F.lit(i).alias("_slot"), F.posexplode(slot).alias("_pos", "id"))
        exploded = part if exploded is None else exploded.unionByName(part)
    assert exploded is not None
    first = Window.partitionBy(*key, "id").orderBy("_slot", "_pos")
    ids = (
        exploded.withColumn("_nth", F.row_number().over(first))
        .filter(F.col("_nth") == 1)
        .drop("_nth")
        .join(F.broadcast(catalogue), on="id", how="left")
        .withColumn("known", F.coalesce(F.col("known"), F.lit(False)))
        .withColumnRenamed("id", "product_id")
    )
    any_known = ids.groupBy(*key).agg(F.max("known").alias("_any_known"))
    ts = F.col("event_ts")
    n_ids = sum((F.size(slot) for slot in slots), F.lit(0))
    reason = (
        F.when(F.col("user") == "", "missing_user_id")
        .when(F.col("user").rlike(CONTROL_PATTERN), CONTROL_CHARACTERS)
        .when(ts.isNull(), "bad_timestamp")
    )
    if as_of is not None:
        from datetime import timedelta

        earliest = as_of - timedelta(days=cfg.max_days_before_as_of)
        latest = as_of + timedelta(days=cfg.max_days_after_as_of)
        reason = reason.when(
            (ts < F.lit(earliest)) | (ts > F.lit(latest)), "implausible_timestamp"
        ).when(ts > F.lit(as_of), AFTER_AS_OF)
    reason = reason.when(n_ids == 0, "no_product_id").when(
        ~F.coalesce(F.col("_any_known"), F.lit(False)), "unknown_product_id"
    )
    classified = (
        rows.join(any_known, on=key, how="left").withColumn("reason", reason).drop("_any_known")
    )
    if cfg.duplicate_events == "filter":
        # A kept row that repeats an earlier kept row exactly: filtered, the first one stays.
        earlier = Window.partitionBy(*cols.raw_columns).orderBy(*key)
        kept = classified.filter(F.col("reason").isNull()).withColumn(
            "_nth", F.row_number().over(earlier)
        )
        classified = classified.filter(F.col("reason").isNotNull()).unionByName(
            kept.withColumn("reason", F.when(F.col("_nth") > 1, F.lit(DUPLICATE_EVENT))).drop(
                "_nth"
            )
        )
    return classified.drop(*slots), ids, rows


def filter_events(
    spark: SparkSession,
    sources: list[Path],
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    ids_path: Path,
    as_of: datetime | None = None,
    max_record_bytes: int | None = None,
) -> tuple[int, dict[str, int], int, int]:
    """`stages.events.filter_events` on Spark: writes the events, the quarantine and the
    per-id counts (dataset directories); returns (records read, records per verdict, events
    written, physical data lines read)."""
    from pyspark.sql import functions as F

    names = {i: header_of(source) for i, source in enumerate(sources)}
    for i, source in enumerate(sources):
        require_columns(source, names[i], cols.raw_columns)
    max_record_bytes = max_record_bytes or MAX_RECORD_BYTES
    raw = cols.raw_columns
    lines = _text_lines(spark, sources)
    checks = _line_checks(lines, max_record_bytes)
    simple = {i: names[i] for i in names if checks.get(i, {"simple": True})["simple"]}
    # A one-record-a-line file's records are its data lines.
    lines_in = sum(checks[i]["data_lines"] for i in simple if i in checks)
    rows_in = lines_in
    parts = _from_lines(lines, simple, raw)
    read_rejects: list[dict[str, Any]] = []
    events_path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".events.", suffix=".tmp", dir=events_path.parent))
    try:
        block_bytes = cfg.chunk_size * BYTES_PER_ROW
        for i, source in enumerate(sources):
            if i in simple:
                continue
            log.info("events (spark): %s: not one record a line, read in blocks", source)
            target, rejected, records, n_lines = _from_blocks(
                source, i, cols, block_bytes, max_record_bytes, build
            )
            parts.append(spark.read.parquet(str(target)))
            read_rejects += rejected
            rows_in += records
            lines_in += n_lines
        union = parts[0]
        for part in parts[1:]:
            union = union.unionByName(part)
        catalogue = spark.createDataFrame(
            [(i,) for i in sorted(set(catalogue_ids))], "id string"
        ).withColumn("known", F.lit(True))
        classified, ids, parsed = classify(union, cols, cfg, catalogue, as_of)
        classified = classified.cache()
        ids = ids.cache()
        verdicts: dict[str, int] = {}
        for row in classified.groupBy("reason").count().collect():
            verdicts[row["reason"] or "kept"] = int(row["count"])
        for reject in read_rejects:
            verdicts[reject["reason"]] = verdicts.get(reject["reason"], 0) + 1

        files = F.element_at(
            F.array(*[F.lit(str(s)) for s in sources]), (F.col("_file") + 1).cast("int")
        )
        column = (
            F.when(F.col("reason").isin("missing_user_id", CONTROL_CHARACTERS), F.lit(cols.user_id))
            .when(
                F.col("reason").isin("bad_timestamp", "implausible_timestamp"),
                F.lit(cols.timestamp),
            )
            .otherwise(F.lit("|".join(cols.product_columns)))
        )
        q_names = ["reason", "column", "source_row", "source_line", "source_file", "raw_line", *raw]
        q_schema = pa.schema([pa.field(n, pa.string()) for n in q_names])
        rejected = classified.filter(~F.col("reason").isin(*FILTERED_VERDICTS)).select(
            "_file",
            F.col("row_number").alias("_row"),
            "reason",
            column.alias("column"),
            F.col("row_number").cast("string").alias("source_row"),
            F.col("line_number").cast("string").alias("source_line"),
            files.alias("source_file"),
            F.lit(None).cast("string").alias("raw_line"),
            *raw,
        )
        if read_rejects:
            reader_schema = ", ".join(
                ["_file long", "_row long", *[f"`{n}` string" for n in q_names]]
            )
            reader_rows = [
                (
                    r["_file"],
                    int(r["source_row"]),
                    *[r.get(n) for n in ("reason", "column", "source_row", "source_line")],
                    str(sources[r["_file"]]),
                    r.get("raw_line"),
                    *[r.get(n) for n in raw],
                )
                for r in read_rejects
            ]
            rejected = rejected.unionByName(spark.createDataFrame(reader_rows, reader_schema))
        write_dataset(rejected.orderBy("_file", "_row"), quarantine_path, q_schema)

        kept = classified.filter(F.col("reason").isNull()).select(
            "_file",
            "row_number",
            F.col("user").alias("user_id"),
            F.col(cols.event_name).alias("event_name"),
            F.when(F.col(cols.button_name) != "", F.col(cols.button_name)).alias("button_name"),
            "event_ts",
        )
        slot_name = F.element_at(F.array(*[F.lit(s) for s in SLOT_NAMES]), F.col("_slot") + 1)
        events = (
            ids.filter("known")
            .join(kept, on=["_file", "row_number"])
            .withColumn("product_slot", slot_name)
            .orderBy("_file", "row_number", "_slot", "_pos")
            .select(*EVENTS_SCHEMA.names)
        )
        n_events = write_dataset(events, events_path, EVENTS_SCHEMA)
        mentioned = (
            ids.groupBy("product_id")
            .agg(F.count(F.lit(1)).alias("n_events"), F.first("known").alias("in_catalogue"))
            .orderBy("product_id")
        )
        write_dataset(mentioned, ids_path, EVENT_PRODUCT_IDS.schema)
        classified.unpersist()
        ids.unpersist()
        parsed.unpersist()
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return rows_in, verdicts, n_events, lines_in


def build_events(
    spark: SparkSession,
    config: RetailerConfig,
    paths: RunPaths,
    sources: list[Path],
    catalogue_ids: list[str],
    as_of: date | None = None,
) -> dict[str, Any]:
    """Stage entry point (`stages.events.build_events` on Spark): the events, the per-id
    counts and the quarantine as dataset directories, and the local stage's summary."""
    from pyspark.sql import functions as F

    events_path = paths.path(EVENTS)
    q_path = paths.path(quarantine(STAGE))
    ids_path = paths.path(EVENT_PRODUCT_IDS)
    started = time.monotonic()
    as_of_ts = as_of_timestamp(as_of) if as_of else None
    rows_in, verdicts, events_out, lines_in = filter_events(
        spark,
        sources,
        config.columns.events,
        config.events,
        catalogue_ids,
        events_path,
        q_path,
        ids_path,
        as_of_ts,
        config.quality.max_record_bytes,
    )
    counts, after_as_of = count_verdicts(STAGE, rows_in, verdicts, q_path)
    counts.lines = {"lines_in": lines_in}
    counts.source = ", ".join(str(s) for s in sources)
    unknown = (
        spark.read.parquet(str(ids_path))
        .filter(~F.col("in_catalogue"))
        .agg(F.count(F.lit(1)).alias("distinct"), F.sum("n_events").alias("mentions"))
        .first()
    )
    assert unknown is not None
    log.info(
        "events (spark): %s rows in %.1f s: %s kept -> %s events, %s filtered, %s quarantined %s",
        f"{rows_in:,}",
        time.monotonic() - started,
        f"{counts.rows_out:,}",
        f"{events_out:,}",
        f"{counts.rows_filtered:,}",
        f"{counts.rows_quarantined:,}",
        counts.reasons,
    )
    _enforce(counts, config.quality.threshold(STAGE))
    return {
        "events": str(events_path),
        "event_product_ids": str(ids_path),
        "counts": counts.as_dict(),
        "events_out": events_out,
        "unknown_ids": {
            "distinct": int(unknown["distinct"]),
            "mentions": int(unknown["mentions"] or 0),
        },
        "rows_after_as_of": after_as_of,
        "duplicate_events": counts.filtered_reasons.get(DUPLICATE_EVENT, 0),
    }


def _enforce(counts: StageCounts, threshold: float) -> None:
    """The local stage's reject-rate failure, from the quarantine dataset's columns."""
    if counts.reject_rate <= threshold:
        return
    columns = ["reason", "column", "source_line", "source_file"]
    rejected = pq.read_table(counts.quarantine_path, columns=columns).to_pandas()
    enforce_reject_rate(counts, threshold, rejected)
