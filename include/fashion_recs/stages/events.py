"""Stage 3, `events`: the seed's chunked filtering of the app's event log, in bounded memory.

The seed read the log with `pandas.read_csv(chunksize=100_000)`, pulled product ids out of
noisy cells with the regex `[a-zA-Z0-9]{3,}`, exploded multi-id cells into
`product_id_cleaned` / `product_id_cleaned2`, kept the events and buttons of interest and
concatenated everything in memory. Here the same steps are one lazy polars query run by its
streaming engine: the CSV is parsed once, in chunks of `events.chunk_size` rows, on every
core; rows are filtered to the events of interest *before* the regex runs (most of a log is
events nobody asked for); ids are exploded and checked against the catalogue; and the results
stream straight into the events, quarantine and id-count outputs, so memory stays flat
whatever the file size. `bench/events.py` measures this against the seed's loop.

Every source row ends up in exactly one place: kept (at least one catalogue id), filtered
(not an event of interest), or quarantined with a reason (no user, bad timestamp, no id, only
ids unknown to the catalogue). Unknown ids are also counted per id in `event_product_ids`.
A line with more fields than the header is cut to the header's width by the CSV reader.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, atomic_path
from fashion_recs.config import EventColumns, EventsConfig, RetailerConfig
from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, EVENTS_SCHEMA, quarantine
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate
from fashion_recs.stages.raw_csv import header_of, require_columns

log = logging.getLogger(__name__)

STAGE = "events"
SLOT_NAMES = ("product_id_cleaned", "product_id_cleaned2")


def parse_timestamps(column: str, formats: list[str]) -> pl.Expr:
    """The first format that parses wins; unparseable values become null (then quarantined)."""
    parsed = [
        pl.col(column).str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True, cache=False)
        for fmt in formats
    ]
    return (pl.coalesce(parsed) if len(parsed) > 1 else parsed[0]).dt.replace_time_zone("UTC")


@dataclass(frozen=True)
class EventQueries:
    """The three outputs of the stage as lazy queries over one shared scan."""

    events: pl.LazyFrame
    rejected: pl.LazyFrame
    id_counts: pl.LazyFrame
    verdicts: pl.LazyFrame


def event_queries(
    sources: list[Path], cols: EventColumns, cfg: EventsConfig, catalogue: pl.Series
) -> EventQueries:
    """Build the stage's lazy queries: scan, filter, extract, verdict, explode."""
    raw_cols = cols.raw_columns
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    known = catalogue.implode()
    interesting = pl.col(cols.event_name).is_in(cfg.events_of_interest) | pl.col(
        cols.button_name
    ).is_in(cfg.buttons_of_interest)
    ids = pl.col("all_ids")
    reason = (
        pl.when(pl.col("user") == "")
        .then(pl.lit("missing_user_id"))
        .when(pl.col("event_ts").is_null())
        .then(pl.lit("bad_timestamp"))
        .when(ids.list.len() == 0)
        .then(pl.lit("no_product_id"))
        .when(~ids.list.eval(pl.element().is_in(known)).list.any())
        .then(pl.lit("unknown_product_id"))
    )
    column = (
        pl.when(pl.col("user") == "")
        .then(pl.lit(cols.user_id))
        .when(pl.col("event_ts").is_null())
        .then(pl.lit(cols.timestamp))
        .otherwise(pl.lit("|".join(cols.product_columns)))
    )
    rows = (
        pl.scan_csv(
            [str(s) for s in sources],
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=True,
            row_index_name="row_number",
            include_file_paths="source_file",
        )
        .select("row_number", "source_file", *raw_cols)
        .with_columns(pl.col(c).fill_null("") for c in raw_cols)
        .filter(interesting)
        .with_columns(
            *[
                pl.col(src).str.extract_all(cfg.id_pattern).alias(slot)
                for src, slot in zip(cols.product_columns, slots, strict=True)
            ],
            parse_timestamps(cols.timestamp, cfg.timestamp_formats).alias("event_ts"),
            pl.col(cols.user_id).str.strip_chars().alias("user"),
        )
        .with_columns(pl.concat_list(slots).alias("all_ids"))
        .with_columns(reason.alias("reason"))
    )
    kept = rows.filter(pl.col("reason").is_null()).select(
        pl.col("user").alias("user_id"),
        pl.col(cols.event_name).alias("event_name"),
        pl.when(pl.col(cols.button_name) == "").then(None).otherwise(pl.col(cols.button_name))
        .alias("button_name"),
        "event_ts",
        ids.alias("product_id"),
        pl.concat_list(
            [pl.col(slot).list.eval(pl.lit(slot)) for slot in slots]
        ).alias("product_slot"),
    )  # fmt: skip
    events = (
        kept.explode("product_id", "product_slot")
        .filter(pl.col("product_id").is_in(known))
        .select(EVENTS_SCHEMA.names)
    )
    first_row = pl.col("source_file").replace_strict(_file_offsets(sources), return_dtype=pl.UInt64)
    rejected = rows.filter(pl.col("reason").is_not_null()).select(
        "reason",
        column.alias("column"),
        (pl.col("row_number") - first_row).cast(pl.String).alias("source_row"),
        "source_file",
        *raw_cols,
    )  # fmt: skip
    id_counts = (
        rows.select(ids.alias("product_id"))
        .explode("product_id")
        .drop_nulls()
        .group_by("product_id")
        .agg(pl.len().cast(pl.Int64).alias("n_events"))
        .with_columns(pl.col("product_id").is_in(known).alias("in_catalogue"))
        .sort("product_id")
    )
    verdicts = rows.group_by(pl.col("reason").fill_null("kept")).agg(pl.len().alias("rows"))
    return EventQueries(events, rejected, id_counts, verdicts)


def _file_offsets(sources: list[Path]) -> dict[str, int]:
    """Global row number of each file's first data row (the scan numbers rows across files)."""
    offsets, total = {}, 0
    for source in sources:
        offsets[str(source)] = total
        total += count_data_rows(source)
    return offsets


def count_data_rows(path: Path) -> int:
    """Data rows of a CSV file, for the stage's row accounting (rows filtered = the rest)."""
    query = pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=True)
    return query.select(pl.len()).collect().item()


def filter_events(
    sources: list[Path],
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    ids_path: Path,
) -> dict[str, int]:
    """Run the stage's queries in one streaming pass; return rows per verdict (`kept`, ...)."""
    for source in sources:
        require_columns(source, header_of(source), cols.raw_columns)
    catalogue = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    queries = event_queries(sources, cols, cfg, catalogue)
    with (
        atomic_path(events_path) as ev_tmp,
        atomic_path(quarantine_path) as q_tmp,
        atomic_path(ids_path) as ids_tmp,
        pl.Config(streaming_chunk_size=cfg.chunk_size),
    ):
        sinks = [
            queries.events.sink_parquet(ev_tmp, compression="zstd", lazy=True),
            queries.rejected.sink_parquet(q_tmp, compression="zstd", lazy=True),
            queries.id_counts.sink_parquet(ids_tmp, compression="zstd", lazy=True),
            queries.verdicts,
        ]
        *_, verdicts = pl.collect_all(sinks, engine="streaming")
    return dict(verdicts.sort("reason").rows())


def build_events(
    config: RetailerConfig, paths: RunPaths, sources: list[Path], catalogue_ids: list[str]
) -> dict:
    """Stage entry point: filtered, exploded events plus the unique product ids they mention."""
    events_path = paths.path(EVENTS)
    q_path = paths.path(quarantine(STAGE))
    ids_path = paths.path(EVENT_PRODUCT_IDS)
    rows_in = sum(count_data_rows(s) for s in sources)
    log.info("events: %s rows in %d file(s); filtering ...", f"{rows_in:,}", len(sources))
    started = time.monotonic()
    verdicts = filter_events(
        sources, config.columns.events, config.events, catalogue_ids, events_path, q_path, ids_path
    )
    elapsed = time.monotonic() - started
    kept = verdicts.pop("kept", 0)
    events_out = pq.read_metadata(events_path).num_rows
    ids = pl.read_parquet(ids_path)
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
        "seconds": round(elapsed, 2),
    }
