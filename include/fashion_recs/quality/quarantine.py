"""Quarantine: malformed rows are kept, with a reason, counted, and bounded by a threshold.

A stage never drops a row silently and never crashes on one: it splits its input into rows it
keeps, rows it filters out by design (events nobody asked for), and rows it quarantines with a
`reason` and the `column` at fault. The quarantine file is always written, empty or not, so a
run's directory says for certain that nothing was rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fashion_recs.artifacts import write_table
from fashion_recs.errors import RejectRateExceeded

QUARANTINE_LEADING = ["reason", "column"]


@dataclass
class StageCounts:
    """Row accounting for one stage: rows_in == rows_out + rows_filtered + rows_quarantined."""

    stage: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    rows_filtered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    quarantine_path: str = ""
    # Rows filtered by design, by reason (duplicates, events nobody asked for ...).
    filtered_reasons: dict[str, int] = field(default_factory=dict)
    # Physical lines of the source file by where they went (a record may span several).
    lines: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        accounted = self.rows_out + self.rows_filtered + self.rows_quarantined
        if accounted != self.rows_in:
            raise AssertionError(
                f"stage {self.stage!r} lost rows: {self.rows_in} in, {self.rows_out} out + "
                f"{self.rows_filtered} filtered + {self.rows_quarantined} quarantined = {accounted}"
            )

    @property
    def rows_considered(self) -> int:
        """Rows the stage tried to use: filtered-by-design rows are not rejects."""
        return self.rows_in - self.rows_filtered

    @property
    def reject_rate(self) -> float:
        considered = self.rows_considered
        return self.rows_quarantined / considered if considered else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reject_rate"] = round(self.reject_rate, 6)
        return out


def quarantine_frame(
    rows: pd.DataFrame, reason: str | pd.Series, column: str | pd.Series
) -> pd.DataFrame:
    """Tag raw rows with why and where they were rejected; values become strings for inspection."""
    tagged = rows.reset_index(drop=True).astype("string")
    # An export may have its own `reason` or `column` column: keep it, under another name.
    tagged = tagged.rename(columns={c: f"raw_{c}" for c in (*QUARANTINE_LEADING, "source_row")})
    for name, value in (("column", column), ("reason", reason)):
        tagged.insert(0, name, value.to_numpy() if isinstance(value, pd.Series) else value)
    return tagged


class RowVerdicts:
    """Why each row of a raw frame is rejected, and in which column. The first reason found
    for a row wins, so a stage flags from the most basic defect to the most specific."""

    def __init__(self, index: pd.Index) -> None:
        self.reason = pd.Series(pd.NA, index=index, dtype="string")
        self.column = pd.Series(pd.NA, index=index, dtype="string")

    def flag(self, mask: pd.Series, why: str, column: str) -> None:
        mask = mask & self.reason.isna()
        self.reason[mask] = why
        self.column[mask] = column

    def split(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        """(quarantine frame of the flagged rows, with their 0-based `source_row`; mask of the
        rows kept)."""
        bad = self.reason.notna()
        rejected = quarantine_frame(
            raw[bad.to_numpy()].reset_index(drop=True),
            self.reason[bad].reset_index(drop=True),
            self.column[bad].reset_index(drop=True),
        )
        rows = pd.Series(np.flatnonzero(bad.to_numpy()), dtype="string")
        rejected.insert(2, "source_row", rows)
        return rejected, ~bad


def write_quarantine(frames: list[pd.DataFrame], path: Path) -> tuple[int, dict[str, int]]:
    """Write every quarantined row of a stage to one Parquet file; return (count, per-reason)."""
    frames = [f for f in frames if len(f)]
    if frames:
        merged = pd.concat(frames, ignore_index=True)
    else:
        merged = pd.DataFrame({c: pd.Series([], dtype="string") for c in QUARANTINE_LEADING})
    ordered = QUARANTINE_LEADING + [c for c in merged.columns if c not in QUARANTINE_LEADING]
    merged = merged[ordered].astype("string")
    schema = pa.schema([pa.field(c, pa.string()) for c in ordered])
    write_table(merged, path, schema)
    reasons = merged["reason"].value_counts().sort_index()
    return len(merged), {str(k): int(v) for k, v in reasons.items()}


WHOLE_ROW = ("*", "unknown", "<NA>", "nan", "")
FIRST_LINES_NAMED = 5


def _where(column: object) -> str:
    if column is None or pd.isna(column) or str(column) in WHOLE_ROW:
        return "the whole row"
    return f"column {column!r}"


def enforce_reject_rate(
    counts: StageCounts, threshold: float, quarantine: pd.DataFrame | None = None
) -> None:
    """Fail the stage, naming the source file, the lines, the column and the reason, when too
    many rows were quarantined."""
    if counts.rows_considered == 0 or counts.reject_rate <= threshold:
        return
    top_reason, top_column, top_n = "unknown", None, 0
    lines = ""
    source = counts.source
    if quarantine is not None and len(quarantine):
        grouped = quarantine.groupby(["reason", "column"], dropna=False).size().sort_values()
        (top_reason, top_column), top_n = grouped.index[-1], int(grouped.iloc[-1])
        if "source_line" in quarantine.columns:
            first = pd.to_numeric(quarantine["source_line"], errors="coerce").dropna()
            first = sorted(int(n) for n in first)[:FIRST_LINES_NAMED]
            lines = f" (first at line(s) {', '.join(map(str, first))})" if first else ""
        if "source_file" in quarantine.columns and not source:
            files = quarantine["source_file"].dropna().unique()
            source = ", ".join(str(f) for f in files[:3])
    elif counts.reasons:
        top_reason, top_n = max(counts.reasons.items(), key=lambda kv: kv[1])
    raise RejectRateExceeded(
        f"stage {counts.stage!r} quarantined {counts.rows_quarantined:,} of "
        f"{counts.rows_considered:,} rows ({counts.reject_rate:.1%}) of {source or 'its input'}, "
        f"above the threshold of {threshold:.1%}. Most common: reason {top_reason!r} in "
        f"{_where(top_column)} ({top_n:,} rows){lines}. Inspect "
        f"{counts.quarantine_path}; fix the export or raise quality.max_reject_rate.{counts.stage}."
    )


def account_rows(
    stage: str,
    frames: list[pd.DataFrame],
    path: Path,
    rows_in: int,
    rows_out: int,
    *,
    lines: dict[str, int] | None = None,
    source: str = "",
) -> StageCounts:
    """Write a stage's quarantine file and return its checked row accounting."""
    n_quarantined, reasons = write_quarantine(frames, path)
    return StageCounts(
        lines=lines or {},
        source=source,
        stage=stage,
        rows_in=rows_in,
        rows_out=rows_out,
        rows_quarantined=n_quarantined,
        reasons=reasons,
        quarantine_path=str(path),
    )
