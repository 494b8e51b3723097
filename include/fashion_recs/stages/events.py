"""Stage 3, `events`: the seed's chunked filtering of the app's event log, in bounded memory.

The seed read the log with `pandas.read_csv(chunksize=100_000)`, pulled product ids out of
noisy cells with the regex `[a-zA-Z0-9]{3,}`, exploded multi-id cells into
`product_id_cleaned` / `product_id_cleaned2`, kept the events and buttons of interest and
concatenated everything in memory. Here the row-level steps are one lazy polars query run by
its streaming engine on every core: the CSV is parsed once, rows are filtered to the events of
interest *before* the regex runs (most of a log is events nobody asked for), and each row gets
its verdict. The query hands over chunks of `events.chunk_size` rows; each chunk's ids are
exploded, checked against the catalogue and appended to the output Parquet files at once, so
memory stays flat whatever the file size. `bench/events.py` measures this against the seed's loop.

Every source row ends up in exactly one place: kept (at least one catalogue id), filtered
(not an event of interest), or quarantined with a reason (no user, bad timestamp, no id, only
ids unknown to the catalogue). Unknown ids are also counted per id in `event_product_ids`.
A line with more fields than the header is cut to the header's width by the CSV reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

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

STAGE = "events"
SLOT_NAMES = ("product_id_cleaned", "product_id_cleaned2")
AFTER_AS_OF = "after_as_of"
PROGRESS_EVERY_S = 5.0
# zstd's fastest level: the same file size as the default level here, in 60 % of the time.
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 1}


def parse_timestamps(column: str, formats: list[str]) -> pl.Expr:
    """The first format that parses wins; unparseable values become null (then quarantined).

    Formats with an offset (%z) are converted to UTC; formats without one are read as UTC.
    """
    aware = any("%z" in f or "%Z" in f for f in formats)
    dtype = pl.Datetime("us", "UTC") if aware else pl.Datetime("us")
    parsed = [
        pl.col(column).str.strptime(dtype, fmt, strict=False, exact=True, cache=False)
        for fmt in formats
    ]
    combined = pl.coalesce(parsed) if len(parsed) > 1 else parsed[0]
    return combined if aware else combined.dt.replace_time_zone("UTC")


def classify_rows(
    source: Path,
    cols: EventColumns,
    cfg: EventsConfig,
    known: pl.Series,
    as_of: datetime | None = None,
) -> pl.LazyFrame:
    """The row-level part of the stage as one lazy query over an events file.

    Reading, the filter to events of interest, the regex and each row's verdict run inside
    polars' streaming engine. Columns: the raw ones, `row_number` (0-based data row of the
    file), one id list per product column (`product_id_cleaned`, `..2`), `event_ts`, the
    stripped `user`, and `reason` (null when the row is kept; `after_as_of` for a row that
    belongs to a later run, which the caller counts as filtered). Ids are lower-cased like the
    catalogue's hex ids. Files are scanned one at a time: the CSV reader's memory grows with
    the size of the file it reads. Invalid UTF-8 is decoded lossily (U+FFFD), never fatal.
    """
    raw_cols = cols.raw_columns
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    interesting = pl.col(cols.event_name).is_in(cfg.events_of_interest) | pl.col(
        cols.button_name
    ).is_in(cfg.buttons_of_interest)
    # Per-slot list expressions: concatenating the slots' lists costs more than the regex.
    n_ids = pl.sum_horizontal([pl.col(slot).list.len() for slot in slots])
    any_known = pl.any_horizontal(
        [pl.col(slot).list.eval(pl.element().is_in(known.implode())).list.any() for slot in slots]
    )
    ts = pl.col("event_ts")
    if as_of is None:
        implausible = after = pl.lit(False)
    else:
        earliest = as_of - timedelta(days=cfg.max_days_before_as_of)
        latest = as_of + timedelta(days=cfg.max_days_after_as_of)
        implausible = (ts < pl.lit(earliest)) | (ts > pl.lit(latest))
        after = ts > pl.lit(as_of)
    reason = (
        pl.when(pl.col("user") == "")
        .then(pl.lit("missing_user_id"))
        .when(ts.is_null())
        .then(pl.lit("bad_timestamp"))
        .when(implausible)
        .then(pl.lit("implausible_timestamp"))
        .when(after)
        .then(pl.lit(AFTER_AS_OF))
        .when(n_ids == 0)
        .then(pl.lit("no_product_id"))
        .when(~any_known)
        .then(pl.lit("unknown_product_id"))
    )
    return (
        pl.scan_csv(
            source,
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=True,
            row_index_name="row_number",
            encoding="utf8-lossy",
        )
        .select("row_number", *raw_cols)
        .with_columns(pl.col(c).fill_null("") for c in raw_cols)
        .filter(interesting)
        .with_columns(
            *[
                pl.col(src).str.to_lowercase().str.extract_all(cfg.id_pattern).alias(slot)
                for src, slot in zip(cols.product_columns, slots, strict=True)
            ],
            parse_timestamps(cols.timestamp, cfg.timestamp_formats).alias("event_ts"),
            pl.col(cols.user_id).str.strip_chars().alias("user"),
        )
        .with_columns(reason.alias("reason"))
    )


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
    chunk: pl.DataFrame, ids: pl.DataFrame, cols: EventColumns, known: pl.Series
) -> pl.DataFrame:
    """The events artifact's rows of a chunk: catalogue ids of its kept rows.

    `ids` is the chunk's exploded ids (`explode_ids`), shared with the per-id counts.
    """
    facts = chunk.filter(pl.col("reason").is_null()).select(
        "row_number",
        pl.col("user").alias("user_id"),
        pl.col(cols.event_name).alias("event_name"),
        pl.when(pl.col(cols.button_name) == "")
        .then(None)
        .otherwise(pl.col(cols.button_name))
        .alias("button_name"),
        "event_ts",
    )
    return (
        ids.filter(pl.col("product_id").is_in(known.implode()))
        .join(facts, on="row_number", how="inner", maintain_order="left")
        .select(EVENTS_SCHEMA.names)
    )


def _readable(chunks: Iterator[pl.DataFrame], source: Path) -> Iterator[pl.DataFrame]:
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


def _merge_id_counts(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema={"product_id": pl.String, "n_events": pl.Int64})
    return (
        pl.concat(frames)
        .group_by("product_id")
        .agg(pl.col("n_events").sum().cast(pl.Int64))
        .sort("product_id")
    )


def filter_events(
    sources: list[Path],
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    as_of: datetime | None = None,
) -> tuple[dict[str, int], int, pl.DataFrame]:
    """Stream every events file through the stage; return (rows per verdict, events, id counts).

    The lazy query hands over chunks of `events.chunk_size` rows; each chunk's events and
    rejects are appended to their Parquet files at once, so memory holds a few chunks at most.
    """
    for source in sources:
        require_columns(source, header_of(source), cols.raw_columns)
    known = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    q_names = ["reason", "column", "source_row", "source_file", *cols.raw_columns]
    q_schema = pa.schema([pa.field(n, pa.string()) for n in q_names])
    column = (
        pl.when(pl.col("reason") == "missing_user_id")
        .then(pl.lit(cols.user_id))
        .when(pl.col("reason").is_in(["bad_timestamp", "implausible_timestamp"]))
        .then(pl.lit(cols.timestamp))
        .otherwise(pl.lit("|".join(cols.product_columns)))
    )
    verdicts: dict[str, int] = {}
    id_counts: list[pl.DataFrame] = []
    n_events = 0
    started = last_log = time.monotonic()
    with (
        atomic_path(events_path) as ev_tmp,
        atomic_path(quarantine_path) as q_tmp,
        pq.ParquetWriter(ev_tmp, EVENTS_SCHEMA, **WRITE_OPTIONS) as ev_writer,
        pq.ParquetWriter(q_tmp, q_schema, **WRITE_OPTIONS) as q_writer,
    ):
        for source in sources:
            chunks = classify_rows(source, cols, cfg, known, as_of).collect_batches(
                chunk_size=cfg.chunk_size
            )
            for chunk in _readable(chunks, source):
                for reason, n in chunk.group_by(pl.col("reason").fill_null("kept")).len().rows():
                    verdicts[reason] = verdicts.get(reason, 0) + n
                rejected = chunk.filter(
                    pl.col("reason").is_not_null() & (pl.col("reason") != AFTER_AS_OF)
                )
                if rejected.height:
                    table = rejected.select(
                        "reason",
                        column.alias("column"),
                        pl.col("row_number").cast(pl.String).alias("source_row"),
                        pl.lit(str(source)).alias("source_file"),
                        *cols.raw_columns,
                    ).to_arrow()
                    q_writer.write_table(table.cast(q_schema))
                ids = explode_ids(chunk, slots)
                events = events_of(chunk, ids, cols, known)
                if events.height:
                    ev_writer.write_table(events.to_arrow().cast(EVENTS_SCHEMA))
                    n_events += events.height
                mentioned = ids.group_by("product_id").len("n_events")
                id_counts.append(mentioned.with_columns(pl.col("n_events").cast(pl.Int64)))
                if len(id_counts) > 64:  # keep the per-id tallies small
                    id_counts = [_merge_id_counts(id_counts)]
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    done = sum(verdicts.values())
                    log.info(
                        "events: %s rows of interest so far, %s events, %.0f s",
                        f"{done:,}",
                        f"{n_events:,}",
                        last_log - started,
                    )
    merged = _merge_id_counts(id_counts).with_columns(
        pl.col("product_id").is_in(known.implode()).alias("in_catalogue")
    )
    return verdicts, n_events, merged


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
    rows_in = sum(count_data_rows(s) for s in sources)
    log.info("events: %s rows in %d file(s); filtering ...", f"{rows_in:,}", len(sources))
    started = time.monotonic()
    as_of_ts = as_of_timestamp(as_of) if as_of else None
    verdicts, events_out, ids = filter_events(
        sources, config.columns.events, config.events, catalogue_ids, events_path, q_path, as_of_ts
    )
    elapsed = time.monotonic() - started
    kept = verdicts.pop("kept", 0)
    after_as_of = verdicts.pop(AFTER_AS_OF, 0)
    verdicts = dict(sorted(verdicts.items()))
    ids_path = write_artifact(paths, EVENT_PRODUCT_IDS, ids.to_arrow())
    unknown = ids.filter(~pl.col("in_catalogue"))
    counts = StageCounts(
        stage=STAGE,
        rows_in=rows_in,
        rows_out=kept,
        rows_quarantined=sum(verdicts.values()),
        rows_filtered=rows_in - kept - sum(verdicts.values()),
        reasons=verdicts,
        quarantine_path=str(q_path),
    )
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
    if counts.reject_rate > config.quality.threshold(STAGE):
        rejected = pq.read_table(q_path, columns=["reason", "column"]).to_pandas()
        enforce_reject_rate(counts, config.quality.threshold(STAGE), rejected)
    return {
        "events": str(events_path),
        "event_product_ids": str(ids_path),
        "counts": counts.as_dict(),
        "events_out": events_out,
        "unknown_ids": {
            "distinct": unknown.height,
            "mentions": int(unknown["n_events"].sum() or 0),
        },
        "rows_after_as_of": after_as_of,
    }
