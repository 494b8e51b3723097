"""What a run left on disk, read back for its report: tasks, quarantine, checks and metrics.

Everything here reads a run directory as it is, including a run that failed half-way: a
missing file means the stage never got there, and the report says so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths
from fashion_recs.contract import QUALITY_DIR, RUN_TASKS_SCHEMA, TASKS_DIR

QUARANTINE_LAYER = "09_quarantine"
REPORTING_LAYER = "08_reporting"
TASK_COLUMNS = RUN_TASKS_SCHEMA.names


def task_table(paths: RunPaths, expected: list[str] | None = None) -> pd.DataFrame:
    """One row per task: its record (`pipeline.run_step`) or, for an expected task with no
    record, status `not run` (an upstream task failed, or the run is still going)."""
    rows: dict[str, dict[str, Any]] = {}
    for file in sorted(paths.file(TASKS_DIR).glob("*.json")):
        record = json.loads(file.read_text())
        counts = record.get("counts") or {}
        rows[record["task_id"]] = {
            "task_id": record["task_id"],
            "step": record.get("step"),
            "status": record.get("status", "unknown"),
            "try_number": record.get("try_number"),
            "started": record.get("started"),
            "seconds": record.get("seconds"),
            "rows_in": counts.get("rows_in"),
            "rows_out": counts.get("rows_out"),
            "rows_quarantined": counts.get("rows_quarantined"),
            "rows_filtered": counts.get("rows_filtered"),
            "error": record.get("error"),
        }
    for task_id in expected or []:
        rows.setdefault(task_id, {"task_id": task_id, "status": "not run"})
    table = pd.DataFrame(list(rows.values()), columns=TASK_COLUMNS)
    # Epoch seconds -> UTC timestamps at the contract's microsecond precision.
    started = pd.to_numeric(table["started"], errors="coerce").mul(1e6).round()
    table["started"] = pd.to_datetime(started, unit="us", utc=True).astype("datetime64[us, UTC]")
    order = {t: i for i, t in enumerate(expected or [])}
    table["_order"] = [
        order.get(t, len(order)) for t in table["task_id"]
    ]  # DAG order first, then by start time
    table = table.sort_values(["_order", "started", "task_id"], na_position="last")
    return table.drop(columns="_order").reset_index(drop=True)


@dataclass
class QuarantineFile:
    """One quarantine file: how many rows, why, and a few of them."""

    name: str
    relpath: str
    rows: int
    by_reason: pd.DataFrame  # reason, column, rows
    samples: dict[str, pd.DataFrame] = field(default_factory=dict)  # reason -> sample rows


def quarantine_files(paths: RunPaths, samples: int = 5) -> list[QuarantineFile]:
    """Every quarantine file of the run with counts by reason and the first rows of each."""
    files = []
    for file in sorted(paths.file(QUARANTINE_LAYER).glob("*.parquet")):
        frame = pq.read_table(file).to_pandas()
        if "reason" not in frame.columns:
            continue
        group = ["reason", "column"] if "column" in frame.columns else ["reason"]
        by_reason = (
            frame.groupby(group, dropna=False)
            .size()
            .rename("rows")
            .reset_index()
            .sort_values(["rows", *group], ascending=[False, *[True] * len(group)])
            .reset_index(drop=True)
        )
        sample_rows = {
            str(reason): part.head(samples).reset_index(drop=True)
            for reason, part in frame.groupby("reason", sort=True)
        }
        files.append(
            QuarantineFile(
                name=file.stem,
                relpath=str(file.relative_to(paths.run_dir)),
                rows=len(frame),
                by_reason=by_reason,
                samples=sample_rows if samples else {},
            )
        )
    return files


def check_results(paths: RunPaths) -> list[dict[str, Any]]:
    """The digest of every Great Expectations result the run saved, failed ones first."""
    from fashion_recs.quality.checks import failure_message, summarize

    results = []
    for file in sorted(paths.file(QUALITY_DIR).glob("*.json")):
        digest = summarize(file.stem, json.loads(file.read_text()))
        digest["message"] = "" if digest["success"] else failure_message(digest)
        results.append(digest)
    return sorted(results, key=lambda r: (r["success"], r["artifact"]))


def metric_tables(paths: RunPaths) -> pd.DataFrame:
    """All evaluation metrics of the run (model, metric, k, value, n_users, family)."""
    frames = []
    for file in sorted(paths.file(REPORTING_LAYER).glob("*metrics*.parquet")):
        frame = pq.read_table(file).to_pandas()
        if {"model", "metric", "value"} <= set(frame.columns):
            frames.append(frame.assign(family=_family(file.stem)))
    if not frames:
        return pd.DataFrame(columns=["model", "metric", "k", "value", "n_users", "family"])
    return pd.concat(frames, ignore_index=True)


def _family(stem: str) -> str:
    if stem.startswith("personal_metrics"):
        return "personal"
    if stem.startswith("similar_metrics"):
        return "similar"
    if stem.startswith("fbt_metrics"):
        return "fbt"
    return "baselines"


def read_optional(
    path: Path, columns: list[str] | None = None, filters: list[tuple] | None = None
) -> pd.DataFrame | None:
    """A Parquet artifact, a file or (spark engine) a dataset directory, with only the rows
    `filters` keep; None when the run never wrote it."""
    if not path.exists():
        return None
    return pq.read_table(path, columns=columns, filters=filters).to_pandas()
