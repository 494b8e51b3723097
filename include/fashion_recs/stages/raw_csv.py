"""Reading a retailer's raw CSV exports as strings, keeping lines the CSV parser rejects.

Raw exports are untrusted: every column is read as text (types are the parsers' job) and a
line with the wrong number of fields becomes a quarantine row instead of an exception.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fashion_recs.errors import SourceError
from fashion_recs.quality.quarantine import quarantine_frame

MALFORMED_CSV_ROW = "malformed_csv_row"


def header_of(path: Path) -> list[str]:
    """The column names of a CSV file, read from its first line only."""
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 16),
        convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False),
    )
    return reader.schema.names


def require_columns(path: Path, present: list[str], required: list[str]) -> None:
    """Fail with the file and the missing column names when an export lacks columns."""
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {missing}; the file has {present}. Fix the export or "
            "map the names under `columns:` in the retailer config."
        )


def read_raw_csv(path: Path, required: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a whole CSV as strings (empty cells as ""); return (rows, quarantined bad lines)."""
    bad_lines: list[str] = []

    def keep_bad_line(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row.text or "")
        return "skip"

    names = header_of(path)
    require_columns(path, names, required)
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(
            newlines_in_values=True, invalid_row_handler=keep_bad_line
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False
        ),
        read_options=pacsv.ReadOptions(use_threads=True),
    )
    frame = table.to_pandas()
    frame = frame.astype({c: object for c in frame.columns})
    bad = pd.DataFrame({"raw_line": pd.Series(bad_lines, dtype="string")})
    return frame, quarantine_frame(bad, MALFORMED_CSV_ROW, "*")
