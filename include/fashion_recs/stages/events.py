"""Stage 3, `events`: the seed's chunked filtering of the app's event log, in bounded memory.

The seed read the log with `pandas.read_csv(chunksize=100_000)`, pulled product ids out of
noisy cells with the regex `[a-zA-Z0-9]{3,}`, exploded multi-id cells into
`product_id_cleaned` / `product_id_cleaned2`, kept the events and buttons of interest and
concatenated everything in memory. Here a file whose records are one line each (the common
export; `single_line_records` checks in two quick scans) goes through one polars streaming
query that parses, filters to the events of interest *before* the regex runs (most of a log
is events nobody asked for) and classifies every row on all cores, handing its rows of
interest over in batches. Any other file (a line break inside quotes, an unclosed quote,
blank lines, bytes that are not UTF-8, an oversized record) is read in blocks of about
`events.chunk_size` rows cut at record ends, each parsed by a reader thread while the one
before is classified by the same query, and what the CSV reader cannot read is quarantined
with its line. Both readers give the same artifacts (tested), and memory stays flat
whatever the file size. Most rows name one id per column, so their events are read off plain
columns; only rows with several ids in a cell are exploded. A writer thread appends each
batch's events and rejects to their Parquet files. `bench/events.py` measures this against
the seed's loop and against a plain polars and DuckDB query.

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
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import (
    RunPaths,
    atomic_path,
    statistics_columns,
    to_table,
    write_artifact,
)
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import EventColumns, EventsConfig, RetailerConfig
from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, EVENTS_SCHEMA, quarantine
from fashion_recs.errors import SourceError
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate
from fashion_recs.stages.raw_csv import (
    BOM,
    INVALID_UTF8,
    MAX_RECORD_BYTES,
    OVERSIZED_RECORD,
    RAW_BYTES_KEPT,
    REPLACEMENT,
    Records,
    good_bytes,
    header_of,
    parse_records_slowly,
    raw_bytes,
    require_columns,
    split_records,
    strip_bom,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "events"
SLOT_NAMES = ("product_id_cleaned", "product_id_cleaned2")
AFTER_AS_OF = "after_as_of"
CONTROL_PATTERN = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"
PROGRESS_EVERY_S = 5.0
# Rows of interest the streaming reader hands over at a time: large enough that the
# per-batch steps cost little, small enough to keep memory flat.
STREAM_BATCH_ROWS = 200_000
# Splits no line: the streaming reader's check reads each line as one field.
LINE_SEPARATOR = "\x1f"
# zstd's fastest level: the same file size as the default level here, in 60 % of the time.
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 1}
# Timestamps are nearly all distinct and rising: a dictionary is built and then abandoned,
# where delta encoding is cheaper and smaller. Statistics as every artifact keeps them (the
# time's, not the string columns', which cost a fifth of the write).
EVENTS_WRITE_OPTIONS = {
    **WRITE_OPTIONS,
    "use_dictionary": [n for n in EVENTS_SCHEMA.names if n != "event_ts"],
    "column_encoding": {"event_ts": "DELTA_BINARY_PACKED"},
    "write_statistics": statistics_columns(EVENTS_SCHEMA),
}
# A block of the file holds about `events.chunk_size` rows of a typical log line (~75 bytes):
# 8 MiB by default.
BYTES_PER_ROW = 80
DUPLICATE_EVENT = "duplicate_event"
CONTROL_CHARACTERS = "control_characters"
# Filtered by design, not quarantined: rows after as-of (a later run's) and exact repeats.
FILTERED_VERDICTS = (AFTER_AS_OF, DUPLICATE_EVENT)
# Orders a block's events by row, then slot.
_KEY = "_key"
# A row of interest's raw columns, hashed: exact repeats of a row share it.
ROW_HASH = "_row_hash"
ROW_HASH_SEED = 7


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


def _records(
    handle: BinaryIO, n_fields: int, block_bytes: int, max_record_bytes: int
) -> Iterator[tuple[bytes, Records | None]]:
    """The data lines of a CSV file after its header, in blocks of whole records.

    A block ends at a line break with an even number of `"` before it, which is how the CSV
    reader itself tells a record's end from a line break inside a quoted field. A block comes
    alone when it was cut that simply; with the `Records` that `split_records` found in it when
    it was not (an unbalanced quote, a record longer than `max_record_bytes`): those records
    were checked, and the rejected ones are to be quarantined. Memory holds about one block
    plus one record, whatever the file.
    """
    carried = b""
    while True:
        data = handle.read(block_bytes)
        if not data:
            if carried and carried.count(b'"') % 2 == 0:
                yield carried, None
            elif carried:
                yield (
                    carried,
                    split_records(
                        carried,
                        n_fields,
                        final=True,
                        max_record_bytes=max_record_bytes,
                        ragged_ok=True,
                    ),
                )
            return
        buffer = carried + data if carried else data
        cut = buffer.rfind(b"\n")
        if cut >= 0 and buffer.count(b'"', 0, cut) % 2 == 0:
            yield buffer[: cut + 1], None
            carried = buffer[cut + 1 :]
            continue
        records = split_records(
            buffer, n_fields, final=False, max_record_bytes=max_record_bytes, ragged_ok=True
        )
        if records.consumed:
            yield buffer[: records.consumed], records
            carried = buffer[records.consumed :]
        elif len(buffer) > max_record_bytes:  # one record, no line break in sight: skip it
            size, rest = len(buffer), b""
            while more := handle.read(block_bytes):
                nl = more.find(b"\n")
                if nl >= 0:
                    size, rest = size + nl + 1, more[nl + 1 :]
                    break
                size += len(more)
            head = buffer[:RAW_BYTES_KEPT]
            empty = np.empty(0, dtype=np.int64)
            oversized = Records(empty, empty, empty, empty, [(0, size, 0, 1, OVERSIZED_RECORD)])
            oversized.consumed, oversized.lines_consumed, oversized.skipped = size, 1, True
            yield head, oversized
            carried = rest
        else:
            carried = buffer


def _header_line(handle: BinaryIO) -> bytes:
    """The header record's bytes (more than one line if a quoted name holds a line break),
    without a UTF-8 byte-order mark."""
    header = handle.readline()
    while header.count(b'"') % 2:
        more = handle.readline()
        if not more:
            break
        header += more
    header = strip_bom(header)
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


def one_of(column: str, values: list[str]) -> pl.Expr:
    """`column` is one of `values`: a few comparisons (twice as fast as `is_in`'s hash set
    for the handful of events and buttons a config names), `is_in` for a long list."""
    if not values or len(values) > 8:
        return pl.col(column).is_in(values)
    return pl.any_horizontal(pl.col(column) == value for value in values)


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
    `_n<i>`, its first id `_id<i>` (in the second slot null when it repeats the first)
    and whether that id is in the catalogue `_k<i>`, and `reason` (null when the row is
    kept; `after_as_of` for a row that belongs to a later run, which the caller counts as
    filtered).
    """
    query = classify_query(rows.lazy(), cols, cfg, known, as_of)
    return settle_several_ids(query.collect(), cols, known)


def classify_query(
    rows: pl.LazyFrame,
    cols: EventColumns,
    cfg: EventsConfig,
    known: pl.Series,
    as_of: datetime | None = None,
) -> pl.LazyFrame:
    """`classify_rows` as a query, before `settle_several_ids`: the streaming reader runs it
    over a whole file, the block reader over one block."""
    interesting = one_of(cols.event_name, cfg.events_of_interest) | one_of(
        cols.button_name, cfg.buttons_of_interest
    )
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    ids = [f"_id{i}" for i in range(len(slots))]
    counts = [f"_n{i}" for i in range(len(slots))]
    ts = pl.col("event_ts")
    implausible, after = as_of_window(ts, cfg, as_of)
    known_flags = [f"_k{i}" for i in range(len(slots))]
    # Rows with several ids in a cell are rare; `settle_several_ids` settles their check.
    one_known = pl.any_horizontal(known_flags)
    reason = (
        pl.when(pl.col("user") == "")
        .then(pl.lit("missing_user_id"))
        .when(pl.col("user").str.contains(CONTROL_PATTERN))
        .then(pl.lit(CONTROL_CHARACTERS))
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
        rows.filter(interesting)
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
    # Whether each first id is in the catalogue: the verdict's check, and `events_of`'s.
    query = query.with_columns(
        pl.col(c).is_in(known.implode()).fill_null(False).alias(k)
        for c, k in zip(ids, known_flags, strict=True)
    )
    extra = []
    if cfg.duplicate_events == "filter":  # what `mark_repeats` compares, hashed in the query
        extra.append(pl.struct(cols.raw_columns).hash(ROW_HASH_SEED).alias(ROW_HASH))
    return query.with_columns(reason.alias("reason"), *extra)


def settle_several_ids(
    classified: pl.DataFrame, cols: EventColumns, known: pl.Series
) -> pl.DataFrame:
    """A row whose first ids are unknown is kept after all when another id in a cell with
    several is in the catalogue."""
    slots = list(SLOT_NAMES[: len(cols.product_columns)])
    counts = [f"_n{i}" for i in range(len(slots))]
    several = classified.filter(pl.any_horizontal(pl.col(n) > 1 for n in counts))
    if several.height:
        any_known = pl.any_horizontal(
            pl.col(s).list.eval(pl.element().is_in(known.implode())).list.any() for s in slots
        )
        found = several.filter((pl.col("reason") == "unknown_product_id") & any_known)
        if found.height:
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
        block.filter(~several & kept & pl.col(f"_k{i}")).select(
            (key + i).alias(_KEY),
            *facts,
            pl.col(c).alias("product_id"),
            pl.lit(slot).alias("product_slot"),
        )
        for i, (c, slot) in enumerate(zip(ids, slots, strict=True))
    ]
    events, mentioned, multi = pl.collect_all(
        [
            pl.concat(by_slot),
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
        events = pl.concat([events, several_events])
    # One stable sort puts the block's events in row, slot, then cell order (a row's ids
    # come from one of the two parts, in cell order).
    return events.sort(_KEY, maintain_order=True).select(EVENTS_SCHEMA.names), mentioned


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


@dataclass
class Block:
    """A block of an events file: its readable rows (`row_number`, `line_number`, the raw
    columns as strings, missing as ""), the records it could not read (quarantine rows), the
    file's bytes read so far, and the physical lines it held."""

    rows: pl.DataFrame
    rejected: pl.DataFrame
    read_bytes: int
    lines: int


def _parse_block(header: bytes, block: bytes, raw_columns: list[str]) -> pl.DataFrame:
    return pl.read_csv(
        header + block,
        columns=raw_columns,
        infer_schema=False,
        empty_string_is_null=False,
        truncate_ragged_lines=True,
        encoding="utf8-lossy",
    )


READ_REJECT_COLUMNS = ("reason", "column", "source_row", "source_line", "raw_line")


def _rejects(source: Path, rows: list[dict[str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema=dict.fromkeys(READ_REJECT_COLUMNS, pl.String),
    ).with_columns(pl.lit(str(source)).alias("source_file"))


def read_blocks(
    source: Path, raw_columns: list[str], block_bytes: int, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[Block]:
    """A file's data rows in blocks, with `row_number` (0-based data record of the file) and
    `line_number` (1-based line of the file where the record starts).

    Memory holds one block of the file, whatever its size. No record fails the read: one with
    an unbalanced quote (its first line), one longer than `max_record_bytes`, or one with bytes
    that are not UTF-8 is rejected with its line and raw bytes (cut), and reading resumes at
    the next line. A line with more fields than the header is cut to its width, one with fewer
    is padded with "". The common block (one line a record, valid UTF-8) is parsed as is.
    """
    rows_before = 0
    with open(source, "rb") as handle:
        header = _header_line(handle)
        n_fields = len(header_of(source))
        lines_before = header.count(b"\n")
        for block, records in _records(handle, n_fields, block_bytes, max_record_bytes):
            n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            frame: pl.DataFrame | None = None
            if records is None:
                try:
                    frame = _parse_block(header, block, raw_columns)
                except (pl.exceptions.ComputeError, pl.exceptions.NoDataError):
                    frame = None
                widest, blank = 0, False
                if frame is not None and frame.height:
                    widest, blank = _widest_and_blank(frame, raw_columns)
                if frame is None or frame.height != n_lines or widest > max_record_bytes or blank:
                    records = split_records(
                        block,
                        n_fields,
                        final=True,
                        max_record_bytes=max_record_bytes,
                        ragged_ok=True,
                    )
                    frame = None
            if records is None:
                assert frame is not None
                good_at = np.arange(frame.height)
                bad_at = np.empty(0, dtype=np.int64)
                lines = np.arange(frame.height) + lines_before + 1
                n_lines = frame.height
            else:
                n_lines = 1 if records.skipped else n_lines
                try:
                    frame = _parse_block(header, good_bytes(block, records), raw_columns)
                except (pl.exceptions.ComputeError, pl.exceptions.NoDataError):
                    frame = pl.DataFrame()
                if frame.height != len(records.starts):
                    frame = pl.from_pandas(parse_records_slowly(block, records, raw_columns))
                good_at, bad_at = records.order()
                lines = records.first_lines + lines_before + 1
            frame = frame.select(
                pl.Series("row_number", good_at + rows_before, dtype=pl.UInt32),
                pl.Series("line_number", lines, dtype=pl.UInt32),
                *[pl.col(c).fill_null("") for c in raw_columns],
            )
            rejected = []
            if records is not None:
                rejected = [
                    {
                        "reason": why,
                        "column": "*",
                        "source_row": str(rows_before + int(at)),
                        "source_line": str(lines_before + line + 1),
                        "raw_line": raw_bytes(block, start, end),
                    }
                    for (start, end, line, _, why), at in zip(records.rejected, bad_at, strict=True)
                ]
            if not block.isascii() and not _valid_utf8(block):
                undecodable = pl.any_horizontal(pl.col(raw_columns).str.contains(REPLACEMENT))
                bad = frame.filter(undecodable)
                frame = frame.filter(~undecodable)
                rejected += [
                    {
                        "reason": INVALID_UTF8,
                        "column": "*",
                        "source_row": str(r["row_number"]),
                        "source_line": str(r["line_number"]),
                        "raw_line": ",".join(r[c] for c in raw_columns)[:RAW_BYTES_KEPT],
                        **{c: r[c] for c in raw_columns},
                    }
                    for r in bad.iter_rows(named=True)
                ]
            rows_before += frame.height + len(rejected)
            lines_before += n_lines
            yield Block(frame, _rejects(source, rejected), handle.tell(), n_lines)


def _widest_and_blank(frame: pl.DataFrame, raw_columns: list[str]) -> tuple[int, bool]:
    """The widest record's bytes (a bound: the sum of the columns' widest cells) and whether
    a row is empty in every column, which is how the CSV reader returns a blank line; such a
    block goes through `split_records`, which skips blank lines (rare, so one pass over the
    parsed columns instead of a search of the block's bytes)."""
    widths, empty = frame.select(
        pl.sum_horizontal(pl.col(raw_columns).str.len_bytes().max()).alias("widest"),
        pl.all_horizontal(pl.col(c).is_null() | (pl.col(c) == "") for c in raw_columns)
        .any()
        .alias("blank"),
    ).row(0)
    return int(widths or 0), bool(empty)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SeenRows:
    """64-bit hashes of the rows seen so far, to tell an exact repeat of an earlier row.

    Each call's new hashes are kept as one sorted run (8 bytes a row), and a blocked Bloom
    filter of 2^22 words (32 MiB) marks them: a hash's top bits pick a word, two of its
    low bits' positions must be set in it. A hash whose bits are not all set is new without
    a look-up, so only the few that may repeat (true repeats, and ~0.3 % of new hashes at
    7M rows) are binary-searched in the runs. The filter is read in the batch's order (one
    gather from 32 MiB costs less than sorting the batch first) and written in hash order
    from the sorted new run. Runs are merged into one only when there are `MAX_RUNS` of
    them: merging them as they came cost more than the look-ups it saved. A 10M row log
    costs ~110 MiB.
    """

    WORD_BITS = 22
    MAX_RUNS = 64

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.words = np.zeros(1 << self.WORD_BITS, dtype=np.uint64)

    def _word_and_mask(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        word = (hashes >> np.uint64(64 - self.WORD_BITS)).astype(np.int64)
        one, low = np.uint64(1), np.uint64(63)
        mask = (one << (hashes & low)) | (one << ((hashes >> np.uint64(6)) & low))
        return word, mask

    def repeats(self, hashes: np.ndarray) -> np.ndarray:
        """Which of `hashes` were seen before (earlier in this call or in an earlier one)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        repeated = np.zeros(len(hashes), dtype=bool)
        if not len(hashes):
            return repeated
        word, mask = self._word_and_mask(hashes)
        maybe = np.flatnonzero((self.words[word] & mask) == mask)
        if len(maybe) and self.runs:
            wanted = np.sort(hashes[maybe])  # binary searches in order: cache-friendly
            found = np.zeros(len(maybe), dtype=bool)
            for run in self.runs:
                at = np.minimum(np.searchsorted(run, wanted), len(run) - 1)
                found |= run[at] == wanted
            repeated[maybe] = found[np.searchsorted(wanted, hashes[maybe])]
        fresh = np.flatnonzero(~repeated)
        if not len(fresh):
            return repeated
        run = _sorted(hashes[fresh])
        distinct = np.r_[True, run[1:] != run[:-1]]
        if not distinct.all():  # a hash twice in this call: the later ones repeat it
            repeated[fresh] = ~pl.Series(hashes[fresh]).is_first_distinct().to_numpy()
            run = run[distinct]
        # Words in order: OR each word's bits together, then write each word once.
        word, mask = self._word_and_mask(run)
        at = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
        self.words[word[at]] |= np.bitwise_or.reduceat(mask, at)
        self.runs.append(run)
        if len(self.runs) >= self.MAX_RUNS:
            self.runs = [_sorted(np.concatenate(self.runs))]
        return repeated


def _sorted(values: np.ndarray) -> np.ndarray:
    """`np.sort(values)` on every core (polars' sort of a plain column)."""
    return pl.Series(values).sort().to_numpy()


def _ahead(items: Iterator[T], executor: ThreadPoolExecutor) -> Iterator[T]:
    """The items of an iterator, each produced on `executor` while the previous one is used."""
    coming = executor.submit(next, items, None)
    while (item := coming.result()) is not None:
        coming = executor.submit(next, items, None)
        yield item


@dataclass
class Unit:
    """What the stage takes in at a time from either reader: classified rows of interest,
    the records that could not be read, the data rows and physical lines behind them, and
    the share of the file read so far (for the progress line)."""

    classified: pl.DataFrame
    rejected: pl.DataFrame
    rows_in: int
    lines: int
    share: float


def block_units(
    source: Path,
    cols: EventColumns,
    cfg: EventsConfig,
    known: pl.Series,
    as_of: datetime | None,
    block_bytes: int,
    max_record_bytes: int,
    reader: ThreadPoolExecutor,
) -> Iterator[Unit]:
    """The block reader's units: each block parsed on `reader` while the last is used."""
    size = max(source.stat().st_size, 1)
    blocks = _ahead(read_blocks(source, cols.raw_columns, block_bytes, max_record_bytes), reader)
    for block in readable_batches(blocks, source):
        yield Unit(
            classify_rows(block.rows, cols, cfg, known, as_of),
            block.rejected,
            block.rows.height + block.rejected.height,
            block.lines,
            block.read_bytes / size,
        )


def single_line_records(source: Path, max_record_bytes: int) -> int | None:
    """The data lines of `source` when the streaming reader reads it exactly as the block
    reader would, else None: one header line without a byte-order mark, valid UTF-8, and
    every line one record (as many records as lines, which a line break inside quotes or an
    unbalanced quote breaks), none blank, none longer than `max_record_bytes`. Two quick
    scans of the file on every core, a few percent of the stage's time.
    """
    with open(source, "rb") as handle:
        if handle.read(len(BOM)) == BOM:
            return None
        handle.seek(0)
        if _header_line(handle).count(b"\n") != 1:
            return None
    # Each line as one field: no quote character, a separator that text does not hold.
    lines = pl.scan_csv(
        source,
        quote_char=None,
        separator=LINE_SEPARATOR,
        infer_schema=False,
        truncate_ragged_lines=True,
        new_columns=["line"],
    ).select(
        pl.len().alias("lines"),
        (pl.col("line").is_null() | (pl.col("line") == "\r")).sum().alias("blank"),
        pl.col("line").str.len_bytes().max().alias("widest"),
    )
    records = pl.scan_csv(source, infer_schema=False, truncate_ragged_lines=True).select(
        pl.len().alias("records")
    )
    try:
        # Run one after the other: planned together, polars merges the two scans of one file.
        counted, (n_records,) = lines.collect().row(0), records.collect().row(0)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError):
        return None  # not UTF-8, or nothing the reader can take: the block reader says why
    n_lines, blank, widest = counted
    if n_lines != n_records or blank or (widest or 0) + 2 > max_record_bytes:
        return None
    return int(n_lines)


def stream_units(
    source: Path,
    lines: int,
    cols: EventColumns,
    cfg: EventsConfig,
    known: pl.Series,
    as_of: datetime | None,
) -> Iterator[Unit]:
    """The streaming reader's units: one polars query parses, filters and classifies the
    whole file on every core and hands over its rows of interest in batches. Every line is
    a record here (`single_line_records`), so a row's line is its number plus the header's."""
    empty = _rejects(source, [])
    if lines == 0:
        return
    # Empty cells stay "" as read (the block reader's way), so filling nulls costs nothing
    # but for a short line's missing fields: 8 % of the query's CPU when it turned every
    # empty cell into a null and back.
    query = (
        pl.scan_csv(
            source,
            infer_schema=False,
            truncate_ragged_lines=True,
            encoding="utf8-lossy",
            empty_string_is_null=False,
        )
        .with_row_index("row_number")
        .select(
            pl.col("row_number").cast(pl.UInt32),
            (pl.col("row_number") + 2).cast(pl.UInt32).alias("line_number"),
            *[pl.col(c).fill_null("") for c in cols.raw_columns],
        )
    )
    classified = classify_query(query, cols, cfg, known, as_of)
    first = True
    for batch in classified.collect_batches(chunk_size=STREAM_BATCH_ROWS):
        seen_to = int(batch.get_column("row_number").max() or 0) + 1 if batch.height else 0
        # The file's rows and lines are counted once, with its first batch.
        yield Unit(
            settle_several_ids(batch, cols, known),
            empty,
            lines if first else 0,
            lines if first else 0,
            seen_to / lines,
        )
        first = False
    if first:  # no row of interest in the whole file
        yield Unit(_empty_classified(cols, cfg, known, as_of), empty, lines, lines, 1.0)


def _empty_classified(
    cols: EventColumns, cfg: EventsConfig, known: pl.Series, as_of: datetime | None
) -> pl.DataFrame:
    frame = pl.DataFrame(
        schema={
            "row_number": pl.UInt32,
            "line_number": pl.UInt32,
            **dict.fromkeys(cols.raw_columns, pl.String),
        }
    )
    return classify_rows(frame, cols, cfg, known, as_of)


def filter_events(
    sources: list[Path],
    cols: EventColumns,
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    as_of: datetime | None = None,
    max_record_bytes: int | None = None,
) -> tuple[int, dict[str, int], int, pl.DataFrame, int]:
    """Stream every events file through the stage.

    Returns (records read, records per verdict (rows of interest, and the records that could
    not be read), events written, per-id counts, physical data lines read). Each
    block is parsed by a reader thread while the one before is classified, and its events
    and rejects go to a writer thread, so memory holds about four blocks.
    """
    for source in sources:
        require_columns(source, header_of(source), cols.raw_columns)
    known = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    q_names = [
        "reason",
        "column",
        "source_row",
        "source_line",
        "source_file",
        "raw_line",
        *cols.raw_columns,
    ]
    q_schema = pa.schema([pa.field(n, pa.string()) for n in q_names])
    column = (
        pl.when(pl.col("reason").is_in(["missing_user_id", CONTROL_CHARACTERS]))
        .then(pl.lit(cols.user_id))
        .when(pl.col("reason").is_in(["bad_timestamp", "implausible_timestamp"]))
        .then(pl.lit(cols.timestamp))
        .otherwise(pl.lit("|".join(cols.product_columns)))
    )
    block_bytes = cfg.chunk_size * BYTES_PER_ROW
    max_record_bytes = max_record_bytes or MAX_RECORD_BYTES
    total_bytes = sum(s.stat().st_size for s in sources)
    rows_in = done_bytes = n_events = lines_in = 0
    verdicts: dict[str, int] = {}
    seen = SeenRows() if cfg.duplicate_events == "filter" else None
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
                ev_writer.write_table(to_table(events, EVENTS_SCHEMA))
            if rejected.height:
                q_writer.write_table(to_table(rejected.select(q_names), q_schema))

        for source in sources:
            file_bytes = source.stat().st_size
            lines = None
            if cfg.reader == "auto":
                lines = single_line_records(source, max_record_bytes)
            if lines is not None:
                units: Iterator[Unit] = stream_units(source, lines, cols, cfg, known, as_of)
            else:
                units = block_units(
                    source, cols, cfg, known, as_of, block_bytes, max_record_bytes, reader
                )
            for unit in units:
                rows_in += unit.rows_in
                lines_in += unit.lines
                rows = unit.classified
                if seen is not None:
                    rows = mark_repeats(rows, seen)
                reasons = rows.get_column("reason")
                verdicts["kept"] = verdicts.get("kept", 0) + reasons.null_count()
                for verdict in (reasons, unit.rejected.get_column("reason")):
                    for reason, n in verdict.drop_nulls().value_counts().rows():
                        verdicts[reason] = verdicts.get(reason, 0) + n
                rejected = rows.filter(
                    pl.col("reason").is_not_null() & ~pl.col("reason").is_in(FILTERED_VERDICTS)
                ).select(
                    "reason",
                    column.alias("column"),
                    pl.col("row_number").cast(pl.String).alias("source_row"),
                    pl.col("line_number").cast(pl.String).alias("source_line"),
                    pl.lit(str(source)).alias("source_file"),
                    pl.lit(None, dtype=pl.String).alias("raw_line"),
                    *cols.raw_columns,
                )
                if unit.rejected.height:
                    rejected = pl.concat([unit.rejected, rejected], how="diagonal_relaxed")
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
                    progress = (done_bytes + unit.share * file_bytes) / max(total_bytes, 1)
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
    return rows_in, verdicts, n_events, merged, lines_in


def mark_repeats(rows: pl.DataFrame, seen: SeenRows) -> pl.DataFrame:
    """Kept rows that repeat an earlier row of the log exactly get the `duplicate_event`
    verdict (filtered, as the seed's `drop_duplicates` did), so a double submission is not
    counted twice in the weights. Rows are compared by the hash of their raw columns that
    `classify_query` adds when repeats are filtered."""
    kept = rows.get_column("reason").is_null()
    if not kept.any():
        return rows
    hashes = rows.get_column(ROW_HASH).filter(kept).to_numpy()
    repeated = seen.repeats(hashes)
    if not repeated.any():
        return rows
    flags = np.zeros(rows.height, dtype=bool)
    flags[np.flatnonzero(kept.to_numpy())] = repeated
    return rows.with_columns(
        pl.when(pl.Series(flags)).then(pl.lit(DUPLICATE_EVENT)).otherwise("reason").alias("reason")
    )


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
    rows_in, verdicts, events_out, ids, lines_in = filter_events(
        sources,
        config.columns.events,
        config.events,
        catalogue_ids,
        events_path,
        q_path,
        as_of_ts,
        config.quality.max_record_bytes,
    )
    elapsed = time.monotonic() - started
    counts, after_as_of = count_verdicts(STAGE, rows_in, verdicts, q_path)
    counts.lines = {"lines_in": lines_in}
    counts.source = ", ".join(str(s) for s in sources)
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
    after_as_of = verdicts.get(AFTER_AS_OF, 0)
    filtered = {k: verdicts.pop(k) for k in FILTERED_VERDICTS if verdicts.get(k)}
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
        filtered_reasons=filtered,
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
    ids_path = write_artifact(paths, EVENT_PRODUCT_IDS, ids)
    unknown = ids.filter(~pl.col("in_catalogue"))
    threshold = config.quality.threshold(counts.stage)
    if counts.reject_rate > threshold:
        wanted = ["reason", "column", "source_line", "source_file"]
        present = pq.read_schema(counts.quarantine_path).names
        columns = [c for c in wanted if c in present]
        rejected = pq.read_table(counts.quarantine_path, columns=columns).to_pandas()
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
        "duplicate_events": counts.filtered_reasons.get(DUPLICATE_EVENT, 0),
    }
