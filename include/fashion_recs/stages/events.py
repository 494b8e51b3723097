"""Stage 3, `events`: the seed's chunked filtering of the app's event log, in bounded memory.

The seed read the log with `pandas.read_csv(chunksize=100_000)`, pulled product ids out of
noisy cells with the regex `[a-zA-Z0-9]{3,}`, exploded multi-id cells into
`product_id_cleaned` / `product_id_cleaned2`, kept the events and buttons of interest and
concatenated everything in memory. Here each file is read in blocks of about
`events.chunk_size` rows cut at record ends, so memory stays flat whatever the file size. A
reader thread parses the next block with polars' CSV reader while one query classifies the
current one: rows are filtered to the events of interest *before* the regex runs (most of a
log is events nobody asked for), and each row gets its verdict. Most rows name one id per
column, so their events are read off plain columns; only rows with several ids in a cell are
exploded. A writer thread appends each block's events and rejects to their Parquet files.
`bench/events.py` measures this against the seed's loop.

Every source row ends up in exactly one place: kept (at least one catalogue id), filtered
(not an event of interest), or quarantined with a reason (no user, bad timestamp, no id, only
ids unknown to the catalogue). Unknown ids are also counted per id in `event_product_ids`.
A line with more fields than the header is cut to the header's width by the CSV reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, atomic_path, write_artifact
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import EventColumns, EventsConfig, RetailerConfig
from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, EVENTS_SCHEMA, quarantine
from fashion_recs.errors import SourceError
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate
from fashion_recs.stages.raw_csv import header_of, require_columns

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "events"
SLOT_NAMES = ("product_id_cleaned", "product_id_cleaned2")
AFTER_AS_OF = "after_as_of"
PROGRESS_EVERY_S = 5.0
# zstd's fastest level: the same file size as the default level here, in 60 % of the time.
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 1}
# Timestamps are nearly all distinct and rising: a dictionary is built and then abandoned,
# where delta encoding is cheaper and smaller.
EVENTS_WRITE_OPTIONS = {
    **WRITE_OPTIONS,
    "use_dictionary": [n for n in EVENTS_SCHEMA.names if n != "event_ts"],
    "column_encoding": {"event_ts": "DELTA_BINARY_PACKED"},
}
# A block of the file holds about `events.chunk_size` rows of a typical log line (~75 bytes):
# 8 MiB by default. A quoted field longer than 16 blocks is taken for an unterminated quote.
BYTES_PER_ROW = 80
MAX_BLOCKS_PER_RECORD = 16
# Orders a block's events by row, then slot.
_KEY = "_key"


def parse_timestamps(column: str, formats: list[str]) -> pl.Expr:
    """The first format that parses wins; unparseable values become null (then quarantined).

    Formats with an offset (%z) are converted to UTC; formats without one are read as UTC.
    A later format only sees the values the earlier ones left null, so it costs nothing on
    a log written in the first format.
    """
    aware = any("%z" in f or "%Z" in f for f in formats)
    dtype = pl.Datetime("us", "UTC") if aware else pl.Datetime("us")
    combined: pl.Expr | None = None
    for fmt in formats:
        values = (
            pl.col(column) if combined is None else pl.when(combined.is_null()).then(pl.col(column))
        )
        parsed = values.str.strptime(dtype, fmt, strict=False, exact=True, cache=False)
        combined = parsed if combined is None else pl.coalesce(combined, parsed)
    assert combined is not None  # the config requires at least one format
    return combined if aware else combined.dt.replace_time_zone("UTC")


def _records(handle: BinaryIO, source: Path, block_bytes: int) -> Iterator[bytes]:
    """The data lines of a CSV file after its header, in blocks of whole records.

    A block ends at a line break with an even number of `"` before it, which is how the CSV
    reader itself tells a record's end from a line break inside a quoted field.
    """
    carried = b""
    while True:
        data = handle.read(block_bytes)
        if not data:
            if carried:
                yield carried
            return
        buffer = carried + data if carried else data
        quotes = buffer.count(b'"')
        cut = buffer.rfind(b"\n")
        after = buffer.count(b'"', cut) if cut >= 0 else quotes
        while cut >= 0 and (quotes - after) % 2:
            previous = buffer.rfind(b"\n", 0, cut)
            after += buffer.count(b'"', max(previous, 0), cut)
            cut = previous
        if cut < 0:
            if len(buffer) > MAX_BLOCKS_PER_RECORD * block_bytes:
                raise SourceError(
                    f"{source}: a quoted field runs over {len(buffer) >> 20} MiB; an "
                    "unterminated quote in the export. Fix or re-export the file."
                )
            carried = buffer
            continue
        yield buffer[: cut + 1]
        carried = buffer[cut + 1 :]


def _header_line(handle: BinaryIO) -> bytes:
    """The header record's bytes (more than one line if a quoted name holds a line break)."""
    header = handle.readline()
    while header.count(b'"') % 2:
        more = handle.readline()
        if not more:
            break
        header += more
    return header if header.endswith(b"\n") else header + b"\n"


def as_of_window(ts: pl.Expr, cfg: EventsConfig, as_of: datetime | None) -> tuple[pl.Expr, pl.Expr]:
    """(implausible, after as-of) for an event time: a time outside the configured days around
    as-of is quarantined, a plausible one after as-of belongs to a later run. Without as-of,
    neither applies. One rule for every source format's events."""
    if as_of is None:
        return pl.lit(False), pl.lit(False)
    earliest = as_of - timedelta(days=cfg.max_days_before_as_of)
    latest = as_of + timedelta(days=cfg.max_days_after_as_of)
    return (ts < pl.lit(earliest)) | (ts > pl.lit(latest)), ts > pl.lit(as_of)


def classify_rows(
    rows: pl.DataFrame,
    cols: EventColumns,
    cfg: EventsConfig,
    known: pl.Series,
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """The rows of interest of a block of the file, each with its ids and its verdict.

    `rows` holds the raw columns (nulls as "") and `row_number` (0-based data row of the
    file). Added: `event_ts`, the stripped `user`, per product column the list of ids in it
    (`product_id_cleaned`, `..2`; lower-cased like the catalogue's hex ids), its length
    `_n<i>` and its first id `_id<i>` (in the second slot null when it repeats the first),
    and `reason` (null when the row is kept; `after_as_of` for a row that belongs to a later
    run, which the caller counts as filtered).
    """
    interesting = pl.col(cols.event_name).is_in(cfg.events_of_interest) | pl.col(
        cols.button_name
    ).is_in(cfg.buttons_of_interest)
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    ids = [f"_id{i}" for i in range(len(slots))]
    counts = [f"_n{i}" for i in range(len(slots))]
    ts = pl.col("event_ts")
    implausible, after = as_of_window(ts, cfg, as_of)
    # Rows with several ids in a cell are rare; `_several_known` settles their catalogue check.
    one_known = pl.any_horizontal(pl.col(c).is_in(known.implode()).fill_null(False) for c in ids)
    reason = (
        pl.when(pl.col("user") == "")
        .then(pl.lit("missing_user_id"))
        .when(ts.is_null())
        .then(pl.lit("bad_timestamp"))
        .when(implausible)
        .then(pl.lit("implausible_timestamp"))
        .when(after)
        .then(pl.lit(AFTER_AS_OF))
        .when(pl.sum_horizontal(counts) == 0)
        .then(pl.lit("no_product_id"))
        .when(~one_known)
        .then(pl.lit("unknown_product_id"))
    )
    query = (
        rows.lazy()
        .filter(interesting)
        .with_columns(
            *[
                pl.col(src).str.to_lowercase().str.extract_all(cfg.id_pattern).alias(slot)
                for src, slot in zip(cols.product_columns, slots, strict=True)
            ],
            parse_timestamps(cols.timestamp, cfg.timestamp_formats).alias("event_ts"),
            pl.col(cols.user_id).str.strip_chars().alias("user"),
        )
        .with_columns(
            *[pl.col(slot).list.len().alias(n) for slot, n in zip(slots, counts, strict=True)],
            *[pl.col(slot).list.first().alias(c) for slot, c in zip(slots, ids, strict=True)],
        )
    )
    if len(ids) == 2:  # an id in both cells is one event, from the first
        query = query.with_columns(
            pl.when(pl.col(ids[1]).ne_missing(pl.col(ids[0]))).then(pl.col(ids[1])).alias(ids[1])
        )
    classified = query.with_columns(reason.alias("reason")).collect()
    several = classified.filter(pl.any_horizontal(pl.col(n) > 1 for n in counts))
    if several.height:
        any_known = pl.any_horizontal(
            pl.col(s).list.eval(pl.element().is_in(known.implode())).list.any() for s in slots
        )
        found = several.filter((pl.col("reason") == "unknown_product_id") & any_known)
        classified = classified.with_columns(
            pl.when(pl.col("row_number").is_in(found.get_column("row_number").implode()))
            .then(None)
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
    return classified


def explode_ids(rows: pl.DataFrame, slots: list[str]) -> pl.DataFrame:
    """One row per (source row, slot, id), in row then slot order."""
    parts = [
        rows.select(
            "row_number", pl.col(slot).alias("product_id"), pl.lit(slot).alias("product_slot")
        ).explode("product_id")
        for slot in slots
    ]
    # An id repeated within a row (twice in a cell, or in both cells) is one event, not two.
    return (
        pl.concat(parts)
        .drop_nulls("product_id")
        .sort("row_number", maintain_order=True)
        .unique(["row_number", "product_id"], keep="first", maintain_order=True)
    )


def events_of(
    rows: pl.DataFrame, cols: EventColumns, known: pl.Series
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The events artifact's rows of a classified block, and how many rows mention each id.

    A kept row gives one event per catalogue id, in row, slot, then cell order; every row of
    interest (kept or not) counts once for each id it mentions. Rows with at most one id per
    cell are read off their `_id<i>` columns; only rows with several ids in a cell are
    exploded.
    """
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    ids = [f"_id{i}" for i in range(len(slots))]
    several = pl.any_horizontal(pl.col(f"_n{i}") > 1 for i in range(len(slots)))
    kept = pl.col("reason").is_null()
    facts = [
        pl.col("user").alias("user_id"),
        pl.col(cols.event_name).alias("event_name"),
        pl.when(pl.col(cols.button_name) == "")
        .then(None)
        .otherwise(pl.col(cols.button_name))
        .alias("button_name"),
        "event_ts",
    ]
    key = pl.col("row_number").cast(pl.UInt64) * len(slots)
    block = rows.lazy()
    by_slot = [
        block.filter(~several & kept & pl.col(c).is_in(known.implode())).select(
            (key + i).alias(_KEY),
            *facts,
            pl.col(c).alias("product_id"),
            pl.lit(slot).alias("product_slot"),
        )
        for i, (c, slot) in enumerate(zip(ids, slots, strict=True))
    ]
    events, mentioned, multi = pl.collect_all(
        [
            pl.concat(by_slot).sort(_KEY),
            pl.concat([block.filter(~several).select(pl.col(c).alias("product_id")) for c in ids])
            .drop_nulls()
            .group_by("product_id")
            .len("n_events")
            .with_columns(pl.col("n_events").cast(pl.Int64)),
            block.filter(several).select("row_number", *slots, *facts, kept.alias("kept")),
        ]
    )
    if multi.height:
        exploded = explode_ids(multi, slots)
        mentioned = pl.concat(
            [
                mentioned,
                exploded.group_by("product_id").len("n_events").cast({"n_events": pl.Int64}),
            ]
        )
        several_events = (
            exploded.filter(pl.col("product_id").is_in(known.implode()))
            .join(multi.filter("kept"), on="row_number", how="inner", maintain_order="left")
            .select(key.alias(_KEY), *EVENTS_SCHEMA.names)
        )
        events = pl.concat([events, several_events]).sort(_KEY, maintain_order=True)
    return events.select(EVENTS_SCHEMA.names), mentioned


def readable_batches(chunks: Iterator[pl.DataFrame], source: Path) -> Iterator[pl.DataFrame]:
    """Chunks of a file, with a CSV the reader cannot parse reported as a source error."""
    try:
        yield from chunks
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        first_line = str(exc).strip().splitlines()[0][:300]
        raise SourceError(
            f"{source}: the CSV reader stopped ({first_line}); an unterminated quote or a "
            "broken line in the export. Fix or re-export the file."
        ) from None


def count_data_rows(path: Path) -> int:
    """Data rows of a CSV file, for the stage's row accounting (rows filtered = the rest)."""
    query = pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy")
    try:
        return query.select(pl.len()).collect().item()
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise SourceError(
            f"{path}: cannot be read as CSV ({str(exc).splitlines()[0][:300]})"
        ) from None


def merge_id_counts(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Sum per-chunk (product_id, n_events) counts into one table (kept small while reading)."""
    if not frames:
        return pl.DataFrame(schema={"product_id": pl.String, "n_events": pl.Int64})
    return (
        pl.concat(frames)
        .group_by("product_id")
        .agg(pl.col("n_events").sum().cast(pl.Int64))
        .sort("product_id")
    )


def read_blocks(
    source: Path, raw_columns: list[str], block_bytes: int
) -> Iterator[tuple[pl.DataFrame, int]]:
    """A file's data rows as frames of its raw columns (as strings, missing as ""), each with
    `row_number` (0-based data row of the file), and the bytes read so far.

    Memory holds one block of the file, whatever its size. Invalid UTF-8 is decoded lossily
    (U+FFFD), never fatal; a line with more fields than the header is cut to its width.
    """
    rows_before = 0
    with open(source, "rb") as handle:
        header = _header_line(handle)
        for block in _records(handle, source, block_bytes):
            frame = pl.read_csv(
                header + block,
                columns=raw_columns,
                infer_schema=False,
                empty_string_is_null=False,
                truncate_ragged_lines=True,
                encoding="utf8-lossy",
            )
            frame = frame.select(
                pl.int_range(rows_before, rows_before + frame.height, dtype=pl.UInt32).alias(
                    "row_number"
                ),
                *[pl.col(c).fill_null("") for c in raw_columns],
            )
            rows_before += frame.height
            yield frame, handle.tell()


def _ahead(items: Iterator[T], executor: ThreadPoolExecutor) -> Iterator[T]:
    """The items of an iterator, each produced on `executor` while the previous one is used."""
    coming = executor.submit(next, items, None)
    while (item := coming.result()) is not None:
        coming = executor.submit(next, items, None)
        yield item


def filter_events(
    sources: list[Path],
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    as_of: datetime | None = None,
) -> tuple[int, dict[str, int], int, pl.DataFrame]:
    """Stream every events file through the stage.

    Returns (rows read, rows of interest per verdict, events written, per-id counts). Each
    block is parsed by a reader thread while the one before is classified, and its events
    and rejects go to a writer thread, so memory holds about four blocks.
    """
    for source in sources:
        require_columns(source, header_of(source), cols.raw_columns)
    known = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    q_names = ["reason", "column", "source_row", "source_file", *cols.raw_columns]
    q_schema = pa.schema([pa.field(n, pa.string()) for n in q_names])
    column = (
        pl.when(pl.col("reason") == "missing_user_id")
        .then(pl.lit(cols.user_id))
        .when(pl.col("reason").is_in(["bad_timestamp", "implausible_timestamp"]))
        .then(pl.lit(cols.timestamp))
        .otherwise(pl.lit("|".join(cols.product_columns)))
    )
    block_bytes = cfg.chunk_size * BYTES_PER_ROW
    total_bytes = sum(s.stat().st_size for s in sources)
    rows_in = done_bytes = n_events = 0
    verdicts: dict[str, int] = {}
    id_counts: list[pl.DataFrame] = []
    pending: Future | None = None
    started = last_log = time.monotonic()
    with (
        atomic_path(events_path) as ev_tmp,
        atomic_path(quarantine_path) as q_tmp,
        pq.ParquetWriter(ev_tmp, EVENTS_SCHEMA, **EVENTS_WRITE_OPTIONS) as ev_writer,
        pq.ParquetWriter(q_tmp, q_schema, **WRITE_OPTIONS) as q_writer,
        ThreadPoolExecutor(max_workers=1) as reader,
        ThreadPoolExecutor(max_workers=1) as writer,
    ):

        def write(events: pl.DataFrame, rejected: pl.DataFrame) -> None:
            if events.height:
                ev_writer.write_table(events.to_arrow().cast(EVENTS_SCHEMA))
            if rejected.height:
                q_writer.write_table(rejected.to_arrow().cast(q_schema))

        for source in sources:
            file_bytes = 0
            for block, read_bytes in readable_batches(
                _ahead(read_blocks(source, cols.raw_columns, block_bytes), reader), source
            ):
                rows_in += block.height
                file_bytes = read_bytes
                rows = classify_rows(block, cols, cfg, known, as_of)
                for reason, n in rows.group_by(pl.col("reason").fill_null("kept")).len().rows():
                    verdicts[reason] = verdicts.get(reason, 0) + n
                rejected = rows.filter(
                    pl.col("reason").is_not_null() & (pl.col("reason") != AFTER_AS_OF)
                ).select(
                    "reason",
                    column.alias("column"),
                    pl.col("row_number").cast(pl.String).alias("source_row"),
                    pl.lit(str(source)).alias("source_file"),
                    *cols.raw_columns,
                )
                events, mentioned = events_of(rows, cols, known)
                n_events += events.height
                if pending is not None:
                    pending.result()
                pending = writer.submit(write, events, rejected)
                id_counts.append(mentioned)
                if len(id_counts) > 64:  # keep the per-id tallies small
                    id_counts = [merge_id_counts(id_counts)]
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    progress = (done_bytes + file_bytes) / max(total_bytes, 1)
                    elapsed = last_log - started
                    log.info(
                        "events: %s rows read (%.0f%%), %s events, %.0f s, about %.0f s left",
                        f"{rows_in:,}",
                        100 * progress,
                        f"{n_events:,}",
                        elapsed,
                        elapsed / max(progress, 1e-9) - elapsed,
                    )
            done_bytes += file_bytes
        if pending is not None:
            pending.result()
    merged = merge_id_counts(id_counts).with_columns(
        pl.col("product_id").is_in(known.implode()).alias("in_catalogue")
    )
    return rows_in, verdicts, n_events, merged


def build_events(
    config: RetailerConfig,
    paths: RunPaths,
    sources: list[Path],
    catalogue_ids: list[str],
    as_of: date | None = None,
) -> dict:
    """Stage entry point: filtered, exploded events plus the unique product ids they mention.

    With `as_of`, events after the end of that day are left to later runs (counted as
    filtered) and timestamps far outside the window are quarantined as implausible.
    """
    events_path = paths.path(EVENTS)
    q_path = paths.path(quarantine(STAGE))
    size_mib = sum(s.stat().st_size for s in sources) / 2**20
    log.info("events: %d file(s), %.0f MiB; filtering ...", len(sources), size_mib)
    started = time.monotonic()
    as_of_ts = as_of_timestamp(as_of) if as_of else None
    rows_in, verdicts, events_out, ids = filter_events(
        sources, config.columns.events, config.events, catalogue_ids, events_path, q_path, as_of_ts
    )
    elapsed = time.monotonic() - started
    counts, after_as_of = count_verdicts(STAGE, rows_in, verdicts, q_path)
    kept, verdicts = counts.rows_out, counts.reasons
    unknown = ids.filter(~pl.col("in_catalogue"))
    log.info(
        "events: %s rows in %.1f s (%s rows/s): %s kept -> %s events, %s filtered, "
        "%s quarantined %s; %d distinct unknown ids",
        f"{rows_in:,}",
        elapsed,
        f"{rows_in / max(elapsed, 1e-9):,.0f}",
        f"{kept:,}",
        f"{events_out:,}",
        f"{counts.rows_filtered:,}",
        f"{counts.rows_quarantined:,}",
        verdicts,
        unknown.height,
    )
    return finish_events(config, paths, counts, ids, events_out, after_as_of)


def count_verdicts(
    stage: str, rows_in: int, verdicts: dict[str, int], q_path: Path
) -> tuple[StageCounts, int]:
    """The stage's row accounting from its per-reason verdicts; also the rows after as-of.

    `kept` rows are the output, rows after the as-of time are filtered (left to later runs),
    every other verdict is a quarantine reason.
    """
    verdicts = dict(verdicts)
    kept = verdicts.pop("kept", 0)
    after_as_of = verdicts.pop(AFTER_AS_OF, 0)
    reasons = dict(sorted(verdicts.items()))
    quarantined = sum(reasons.values())
    counts = StageCounts(
        stage=stage,
        rows_in=rows_in,
        rows_out=kept,
        rows_quarantined=quarantined,
        rows_filtered=rows_in - kept - quarantined,
        reasons=reasons,
        quarantine_path=str(q_path),
    )
    return counts, after_as_of


def finish_events(
    config: RetailerConfig,
    paths: RunPaths,
    counts: StageCounts,
    ids: pl.DataFrame,
    events_out: int,
    after_as_of: int,
) -> dict:
    """Write the per-id counts, enforce the reject rate and return the stage's summary
    (shared by every source format's events stage)."""
    ids_path = write_artifact(paths, EVENT_PRODUCT_IDS, ids.to_arrow())
    unknown = ids.filter(~pl.col("in_catalogue"))
    threshold = config.quality.threshold(counts.stage)
    if counts.reject_rate > threshold:
        rejected = pq.read_table(counts.quarantine_path, columns=["reason", "column"]).to_pandas()
        enforce_reject_rate(counts, threshold, rejected)
    return {
        "events": str(paths.path(EVENTS)),
        "event_product_ids": str(ids_path),
        "counts": counts.as_dict(),
        "events_out": events_out,
        "unknown_ids": {
            "distinct": unknown.height,
            "mentions": int(unknown["n_events"].sum() or 0),
        },
        "rows_after_as_of": after_as_of,
    }
