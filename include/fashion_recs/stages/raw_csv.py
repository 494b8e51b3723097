"""Reading a retailer's raw CSV exports as strings, keeping lines the CSV parser rejects.

Raw exports are untrusted: every column is read as text (types are the parsers' job) and a
line with the wrong number of fields becomes a quarantine row instead of an exception.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fashion_recs.errors import SourceError
from fashion_recs.quality.quarantine import quarantine_frame

MALFORMED_CSV_ROW = "malformed_csv_row"
INVALID_UTF8 = "invalid_utf8"
REPLACEMENT = "\ufffd"


def header_of(path: Path) -> list[str]:
    """The column names of a CSV file, from its first record only (the rest may be broken)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
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


def read_raw_csv(path: Path, required: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a whole CSV as strings (empty cells as ""); return (rows, quarantined rows).

    Quarantined: lines the CSV parser rejects (wrong field count, broken quotes) and rows
    holding bytes that are not UTF-8 (decoded as U+FFFD, so their values are not to be
    trusted). Meant for the catalogue and survey exports, which fit in memory.
    """
    bad_lines: list[str] = []

    def keep_bad_line(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row.text or "")
        return "skip"

    names = header_of(path)
    require_columns(path, names, required)
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        table = pacsv.read_csv(
            pa.BufferReader(text.encode("utf-8")),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=keep_bad_line
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
            read_options=pacsv.ReadOptions(use_threads=True),
        )
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{path}: cannot be read as CSV ({exc})") from None
    frame = table.to_pandas()
    frame = frame.astype({c: object for c in frame.columns})
    undecodable = frame.apply(lambda col: col.str.contains(REPLACEMENT, regex=False)).any(axis=1)
    bad = pd.DataFrame({"raw_line": pd.Series(bad_lines, dtype="string")})
    rejected = [
        quarantine_frame(bad, MALFORMED_CSV_ROW, "*"),
        quarantine_frame(frame[undecodable], INVALID_UTF8, "*"),
    ]
    return frame[~undecodable].reset_index(drop=True), pd.concat(rejected, ignore_index=True)
