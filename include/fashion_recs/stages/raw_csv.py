"""Reading a retailer's raw CSV exports as strings, keeping records the CSV parser rejects.

Raw exports are untrusted: every column is read as text (types are the parsers' job) and no
record can fail a stage. `split_records` cuts bytes into records the way a CSV reader does (a
line break ends a record when an even number of `"` precede it) and checks each record's field
count; a record that is malformed (wrong field count), oversized, or that an unbalanced quote
runs past the end of the file is quarantined with its line number and its raw bytes (cut), and
reading resumes at the next line. Only the records that passed go to the fast parser.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fashion_recs.errors import SourceError
from fashion_recs.quality.quarantine import quarantine_frame

MALFORMED_CSV_ROW = "malformed_csv_row"
UNTERMINATED_QUOTE = "unterminated_quote"
OVERSIZED_RECORD = "oversized_record"
INVALID_UTF8 = "invalid_utf8"
REPLACEMENT = "\ufffd"
BOM = b"\xef\xbb\xbf"
# A record longer than this is quarantined, never parsed: one hostile field must not cost the
# stage its memory or its parser (config quality.max_record_bytes).
MAX_RECORD_BYTES = 1 << 20
# How much of a rejected record the quarantine keeps.
RAW_BYTES_KEPT = 2_000
# Control characters never meant to be in text (tab, line feed and carriage return are).
CONTROL_CHARACTERS = "".join(chr(c) for c in (*range(0, 9), 11, 12, *range(14, 32), 127))
_STRIP_CONTROL = str.maketrans("", "", CONTROL_CHARACTERS)
_CONTROL_BYTES = CONTROL_CHARACTERS.encode()


def strip_bom(data: bytes) -> bytes:
    return data[len(BOM) :] if data.startswith(BOM) else data


def header_of(path: Path) -> list[str]:
    """The column names of a CSV file, from its first record only (the rest may be broken).
    A UTF-8 byte-order mark before the first name is not part of it."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), None)
    if not header or not any(name.strip() for name in header):
        raise SourceError(f"{path}: the file is empty or has no header line")
    return header


def require_columns(path: Path, present: list[str], required: list[str]) -> None:
    """Fail with the file and the missing column names when an export lacks columns."""
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {missing}; the file has {present}. Fix the export or "
            "map the names under `columns:` in the retailer config."
        )


def header_record(data: bytes) -> int:
    """Bytes of the header record at the start of `data` (with its line break)."""
    end = 0
    while True:
        nl = data.find(b"\n", end)
        if nl < 0:
            return len(data)
        end = nl + 1
        if data.count(b'"', 0, end) % 2 == 0:
            return end


@dataclass
class Records:
    """What `split_records` found in a buffer: the good records and the rejected ones.

    Offsets are into the buffer; lines are 0-based physical lines of the buffer. `consumed`
    bytes (`lines_consumed` lines) were settled; the rest is an incomplete record to carry.
    """

    starts: np.ndarray
    ends: np.ndarray
    first_lines: np.ndarray
    n_lines: np.ndarray
    rejected: list[tuple[int, int, int, int, str]] = field(default_factory=list)
    blank_lines: int = 0
    consumed: int = 0
    lines_consumed: int = 0
    # One oversized record skipped without holding it: the buffer is its first bytes only.
    skipped: bool = False

    @property
    def clean(self) -> bool:
        """Every record one line, none rejected, no blank line: the buffer parses as is."""
        return not self.rejected and not self.blank_lines and bool(np.all(self.n_lines == 1))

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """Record order of (good records, rejected records) among all records, by position."""
        good = self.starts
        bad = np.array([r[0] for r in self.rejected], dtype=np.int64)
        rank = np.argsort(np.concatenate([good, bad]), kind="stable")
        position = np.empty_like(rank)
        position[rank] = np.arange(len(rank))
        return position[: len(good)], position[len(good) :]


def split_records(
    buf: bytes,
    n_fields: int,
    *,
    final: bool,
    max_record_bytes: int = MAX_RECORD_BYTES,
    delimiter: bytes = b",",
    ragged_ok: bool = False,
) -> Records:
    """Cut `buf` (data lines, no header) into CSV records and check each one's field count.

    Vectorised over the buffer: a record ends at a line break preceded by an even number of
    quotes since the record's start, and its fields are the delimiters at even quote parity
    plus one. A record with the wrong field count is quarantined as malformed. When a record
    runs over several lines and its field count is wrong, or runs to the end of the file, an
    unbalanced quote is the likely cause: its first line is quarantined and reading resumes at
    the next line. Without `final` the incomplete tail is left to the caller, unless it is
    already longer than `max_record_bytes`. With `ragged_ok`, a one-line record may have any
    number of fields (the reader pads or cuts it).
    """
    a = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    if final and len(buf) and buf[-1:] != b"\n":
        nl = np.append(nl, len(buf))  # a last record without its line break
    quotes = np.flatnonzero(a == 34)
    delims = np.flatnonzero(a == delimiter[0])
    q_at_nl = np.searchsorted(quotes, nl)
    q_at_delim = np.searchsorted(quotes, delims)
    starts, ends, first_lines, n_lines = [], [], [], []
    out = Records(*(np.empty(0, dtype=np.int64) for _ in range(4)))

    def reject(start: int, end: int, line: int, lines: int, why: str) -> None:
        out.rejected.append((start, min(end, len(buf)), line, lines, why))

    pos, line = 0, 0  # the next record starts at byte `pos`, on line `line`
    while pos < len(buf) and line < len(nl):
        base = np.searchsorted(quotes, pos)
        rel = (q_at_nl[line:] - base) & 1
        end_idx = line + np.flatnonzero(rel == 0)
        prev = np.concatenate([[line - 1], end_idx[:-1]])
        r_starts = np.concatenate([[pos], nl[end_idx[:-1]] + 1]).astype(np.int64)
        r_ends = (nl[end_idx] + 1).astype(np.int64)
        r_lines = end_idx - prev
        d_lo = np.searchsorted(delims, r_starts)
        d_hi = np.searchsorted(delims, r_ends)
        even = np.concatenate([[0], np.cumsum(((q_at_delim - base) & 1) == 0)])
        fields = 1 + even[d_hi] - even[d_lo]
        length = np.minimum(r_ends, len(buf)) - r_starts
        blank = (r_lines == 1) & (
            (length <= 1) | ((length == 2) & (a[np.minimum(r_starts, len(buf) - 1)] == 13))
        )
        wrong = (fields != n_fields) & ~blank
        for i in np.flatnonzero(~wrong & (r_lines > 1)):
            wrong[i] = _swallows_records(
                nl, delims, quotes, int(prev[i] + 1), int(r_lines[i]), n_fields
            )
        broken = np.flatnonzero(wrong & (r_lines > 1))
        if ragged_ok:
            wrong &= r_lines > 1
        stop = int(broken[0]) if len(broken) else len(r_starts)
        take = slice(0, stop)
        big = length[take] > max_record_bytes
        bad = (wrong[take] | big) & ~blank[take]
        good = ~bad & ~blank[take]
        starts.append(r_starts[take][good])
        ends.append(r_ends[take][good])
        first_lines.append(prev[take][good] + 1)
        n_lines.append(r_lines[take][good])
        out.blank_lines += int(blank[take].sum())
        for i in np.flatnonzero(bad):
            why = OVERSIZED_RECORD if big[i] else MALFORMED_CSV_ROW
            reject(int(r_starts[i]), int(r_ends[i]), int(prev[i] + 1), int(r_lines[i]), why)
        if stop < len(r_starts):  # an unbalanced quote: give up its first line only
            first = int(prev[stop] + 1)
            reject(int(r_starts[stop]), int(nl[first] + 1), first, 1, MALFORMED_CSV_ROW)
            pos, line = int(nl[first] + 1), first + 1
            continue
        pos = int(r_ends[-1]) if len(r_ends) else pos
        line = int(end_idx[-1] + 1) if len(end_idx) else line
        if line >= len(nl) or pos >= len(buf):
            break
        # What is left has an odd number of quotes up to every later line break.
        if final or len(buf) - pos > max_record_bytes:
            reject(pos, int(nl[line] + 1), line, 1, UNTERMINATED_QUOTE)
            pos, line = int(nl[line] + 1), line + 1
            continue
        break
    out.starts = np.concatenate(starts) if starts else out.starts
    out.ends = np.concatenate(ends) if ends else out.ends
    out.first_lines = np.concatenate(first_lines) if first_lines else out.first_lines
    out.n_lines = np.concatenate(n_lines) if n_lines else out.n_lines
    out.consumed, out.lines_consumed = min(pos, len(buf)), line
    out.rejected.sort()
    return out


def _swallows_records(
    nl: np.ndarray, delims: np.ndarray, quotes: np.ndarray, first: int, n_lines: int, n_fields: int
) -> bool:
    """Whether a record over several lines holds, after its first line, a line that is a whole
    record by itself (the header's field count, no quote): the mark of an unbalanced quote
    that swallowed records, not of a quoted value with line breaks."""
    ends = nl[first : first + n_lines]
    starts = ends[:-1] + 1
    inner_ends = ends[1:]
    d = np.searchsorted(delims, inner_ends) - np.searchsorted(delims, starts)
    q = np.searchsorted(quotes, inner_ends) - np.searchsorted(quotes, starts)
    return bool(np.any((d == n_fields - 1) & (q == 0)))


def raw_bytes(buf: bytes, start: int, end: int) -> str:
    """A rejected record's bytes for the quarantine, cut, decoded lossily."""
    cut = buf[start : min(end, start + RAW_BYTES_KEPT)]
    text = cut.decode("utf-8", errors="replace").rstrip("\r\n")
    return text + (f" ... [{end - start:,} bytes]" if end - start > RAW_BYTES_KEPT else "")


def rejected_frame(buf: bytes, records: Records, line_offset: int, source: Path) -> pd.DataFrame:
    """The quarantine rows of the records `split_records` rejected, with 1-based file lines."""
    rows = records.rejected
    frame = pd.DataFrame(
        {
            "source_line": pd.Series([str(r[2] + line_offset) for r in rows], dtype="string"),
            "source_lines": pd.Series([str(r[3]) for r in rows], dtype="string"),
            "source_file": pd.Series([str(source)] * len(rows), dtype="string"),
            "raw_line": pd.Series([raw_bytes(buf, r[0], r[1]) for r in rows], dtype="string"),
        }
    )
    return quarantine_frame(frame, pd.Series([r[4] for r in rows], dtype="string"), "*")


def good_bytes(buf: bytes, records: Records) -> bytes:
    """The good records of a buffer, one after the other, each ending in a line break."""
    if records.clean and records.consumed == len(buf):
        return buf if buf.endswith(b"\n") or not buf else buf + b"\n"
    parts = [buf[s:e] for s, e in zip(records.starts, records.ends, strict=True)]
    if parts and not parts[-1].endswith(b"\n"):
        parts[-1] += b"\n"
    return b"".join(parts)


def parse_records_slowly(buf: bytes, records: Records, names: list[str]) -> pd.DataFrame:
    """Each good record through Python's CSV reader: the fallback when the fast parser and
    `split_records` disagree on where records end."""
    csv.field_size_limit(1 << 31 - 1)
    rows = []
    for s, e in zip(records.starts, records.ends, strict=True):
        text = buf[s:e].decode("utf-8", errors="replace")
        parsed = next(csv.reader(io.StringIO(text)), [])
        rows.append((parsed + [""] * len(names))[: len(names)])
    return pd.DataFrame(rows, columns=names, dtype=object)


@dataclass
class RawCsv:
    """A CSV export read as strings: its rows, the records rejected while reading, and where
    each row came from (1-based line of the file, and how many lines the record spans)."""

    source: Path
    rows: pd.DataFrame
    rejected: pd.DataFrame
    lines: np.ndarray
    lines_per_row: np.ndarray
    data_lines: int
    blank_lines: int
    control_characters: pd.DataFrame

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.rejected)

    def locate(self, quarantined: pd.DataFrame) -> pd.DataFrame:
        """Add the source file and line (and lines spanned) to quarantine rows that name a
        `source_row` of `rows`."""
        if "source_row" not in quarantined.columns or "source_line" in quarantined.columns:
            return quarantined
        out = quarantined.copy()
        index = pd.to_numeric(out["source_row"]).to_numpy(dtype=np.int64)
        out.insert(3, "source_line", pd.Series(self.lines[index], dtype="string"))
        out.insert(4, "source_lines", pd.Series(self.lines_per_row[index], dtype="string"))
        out.insert(5, "source_file", str(self.source))
        return out

    def line_counts(self, quarantined: list[pd.DataFrame]) -> dict[str, int]:
        """Lines of the file by where they went; `lines_in` = the other three, or it raises."""
        located = [q for q in quarantined if len(q) and "source_lines" in q.columns]
        lines_quarantined = sum(int(pd.to_numeric(q["source_lines"]).sum()) for q in located)
        rows_quarantined = {int(r) for q in located if "source_row" in q for r in q["source_row"]}
        kept_rows = np.setdiff1d(np.arange(len(self.rows)), list(rows_quarantined))
        counts = {
            "lines_in": self.data_lines,
            "lines_kept": int(self.lines_per_row[kept_rows].sum()),
            "lines_quarantined": lines_quarantined,
            "lines_blank": self.blank_lines,
        }
        if counts["lines_in"] != sum(v for k, v in counts.items() if k != "lines_in"):
            raise AssertionError(f"{self.source}: lines not accounted for: {counts}")
        return counts


def _decoded(data: bytes) -> bytes:
    """Valid UTF-8 as is; otherwise each bad byte becomes U+FFFD (and its row is quarantined)."""
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")


def strip_control_characters(frame: pd.DataFrame) -> pd.DataFrame:
    """Remove control characters from every cell in place; return (row, column, value) of each
    cell that held one, for the stage's field issues."""
    found = []
    for name in frame.columns:
        values = frame[name]
        hit = values.str.contains(f"[{CONTROL_CHARACTERS}]", regex=True)
        for i in np.flatnonzero(hit.to_numpy(dtype=bool)):
            found.append((int(i), name, repr(values.iat[i][:200])))
        if hit.any():
            frame.loc[hit, name] = values[hit].str.translate(_STRIP_CONTROL)
    return pd.DataFrame(found, columns=["source_row", "column", "value"])


def read_raw_csv(
    path: Path,
    required: list[str],
    max_record_bytes: int = MAX_RECORD_BYTES,
    allow_empty: bool = False,
) -> RawCsv:
    """Read a whole CSV as strings (empty cells as ""), never failing on a record.

    Quarantined: records with the wrong field count, records an unbalanced quote leaves
    unterminated (their first line only), records over `max_record_bytes`, and rows holding
    bytes that are not UTF-8 (decoded as U+FFFD, so their values are not to be trusted).
    Control characters are removed from the rows (listed in `control_characters`). A file
    with a header and no rows is a source error unless `allow_empty`. Meant for the catalogue
    and survey exports, which fit in memory.
    """
    names = header_of(path)
    require_columns(path, names, required)
    data = _decoded(strip_bom(path.read_bytes()))
    head = header_record(data)
    header_lines = data.count(b"\n", 0, head)
    body = data[head:]
    records = split_records(body, len(names), final=True, max_record_bytes=max_record_bytes)
    rejected = rejected_frame(body, records, header_lines + 1, path)
    frame = pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
    if len(records.starts):
        good = good_bytes(body, records)
        try:
            frame = _parse(data[:head] + good, names, max_record_bytes)
        except pa.ArrowInvalid:
            frame = frame.iloc[:0]
        if len(frame) != len(records.starts):
            frame = parse_records_slowly(body, records, names)
    if len(frame) + len(rejected) == 0 and not allow_empty:
        raise SourceError(f"{path}: {path.name} has no rows (only a header line). Fix the export.")
    frame = frame.astype({c: object for c in frame.columns}).reset_index(drop=True)
    lines = records.first_lines + header_lines + 1
    undecodable = frame.apply(lambda col: col.str.contains(REPLACEMENT, regex=False)).any(axis=1)
    undecodable = undecodable.to_numpy(dtype=bool) if len(frame) else np.zeros(0, dtype=bool)
    bad_rows = frame[undecodable].reset_index(drop=True)
    bad_rows.insert(0, "source_line", pd.Series(lines[undecodable], dtype="string"))
    bad_rows.insert(1, "source_lines", pd.Series(records.n_lines[undecodable], dtype="string"))
    bad_rows.insert(2, "source_file", str(path))
    kept = frame[~undecodable].reset_index(drop=True)
    control = strip_control_characters(kept)
    return RawCsv(
        source=path,
        rows=kept,
        rejected=pd.concat(
            [rejected, quarantine_frame(bad_rows, INVALID_UTF8, "*")], ignore_index=True
        ),
        lines=lines[~undecodable],
        lines_per_row=records.n_lines[~undecodable],
        data_lines=data.count(b"\n", head) + (0 if not body or body.endswith(b"\n") else 1),
        blank_lines=records.blank_lines,
        control_characters=control,
    )


def _parse(data: bytes, names: list[str], max_record_bytes: int) -> pd.DataFrame:
    block = max(16 << 20, 4 * max_record_bytes)
    table = pacsv.read_csv(
        pa.BufferReader(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False
        ),
        read_options=pacsv.ReadOptions(use_threads=True, block_size=block),
    )
    return table.to_pandas()
