"""Artifacts are written atomically, reproducibly, readable by others; rows are accounted for."""

from __future__ import annotations

import stat

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from fashion_recs import artifacts
from fashion_recs.artifacts import (
    RunPaths,
    atomic_path,
    read_frame,
    run_key,
    to_table,
    write_table,
)
from fashion_recs.contract import PRODUCTS
from fashion_recs.errors import RejectRateExceeded
from fashion_recs.quality.quarantine import StageCounts, enforce_reject_rate, write_quarantine

SCHEMA = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.string())])


def test_run_key_is_filesystem_safe() -> None:
    assert run_key("manual__2026-11-01T00:00:00+00:00") == "manual__2026-11-01T00-00-00-00-00"
    with pytest.raises(ValueError):
        run_key("::")


def test_run_paths_place_artifacts_by_layer(tmp_path) -> None:
    paths = RunPaths(tmp_path, "demo", "scheduled__2026-11-01")
    assert (
        paths.path(PRODUCTS)
        == tmp_path / "runs/demo/scheduled__2026-11-01/03_primary/products.parquet"
    )


def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1], "b": ["x"]}), target, SCHEMA)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp files left behind
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_same_data_gives_identical_bytes_and_schema_is_enforced(tmp_path) -> None:
    frame = pd.DataFrame({"b": ["x", "y"], "a": [1, 2]})
    write_table(frame, tmp_path / "1.parquet", SCHEMA)
    write_table(frame, tmp_path / "2.parquet", SCHEMA)
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    assert list(read_frame(tmp_path / "1.parquet").columns) == ["a", "b"]
    with pytest.raises(ValueError, match="lacks columns"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "3.parquet", SCHEMA)


def test_a_column_too_large_for_one_chunk_is_sliced_before_the_cast(tmp_path, monkeypatch) -> None:
    """Arrow's `string` cannot hold a chunk over 2 GiB, so a polars column of one chunk that
    large is cut into slices before the cast; the file is the same either way."""
    frame = pl.DataFrame({"a": range(10_000), "b": [f"user-{i:08d}" for i in range(10_000)]})
    frame = frame.sort("b", descending=True).rechunk()
    write_table(frame, tmp_path / "whole.parquet", SCHEMA)
    monkeypatch.setattr(artifacts, "CHUNK_BYTES", 20_000)
    table = to_table(frame, SCHEMA)
    assert table.schema == SCHEMA
    assert table.column("b").num_chunks > 1
    assert max(chunk.nbytes for chunk in table.column("b").chunks) <= 2 * 20_000
    assert pl.from_arrow(table).equals(frame)
    write_table(frame, tmp_path / "sliced.parquet", SCHEMA)
    assert (tmp_path / "sliced.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    # An Arrow table in one piece: its slices are copied to offsets of their own.
    whole = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).combine_chunks()
    sliced = to_table(whole, SCHEMA)
    assert sliced.column("b").num_chunks > 1
    assert all(chunk.offset == 0 for chunk in sliced.column("b").chunks)
    assert pl.from_arrow(sliced).equals(frame)


def test_stage_counts_refuse_to_lose_rows() -> None:
    with pytest.raises(AssertionError, match="lost rows"):
        StageCounts(stage="x", rows_in=10, rows_out=5, rows_quarantined=2, rows_filtered=2)


def test_reject_rate_ignores_filtered_rows_and_names_the_top_reason(tmp_path) -> None:
    rows = pd.DataFrame({"v": ["1", "2", "3"]})
    q = pd.concat(
        [
            rows.assign(reason="bad_value", column="v"),
            rows.iloc[:1].assign(reason="other", column="w"),
        ]
    )
    n, reasons = write_quarantine([q], tmp_path / "x_quarantine.parquet")
    assert (n, reasons) == (4, {"bad_value": 3, "other": 1})
    counts = StageCounts(
        "x",
        rows_in=100,
        rows_out=6,
        rows_quarantined=4,
        rows_filtered=90,
        reasons=reasons,
        quarantine_path=str(tmp_path / "x_quarantine.parquet"),
    )
    assert counts.reject_rate == pytest.approx(0.4)
    enforce_reject_rate(counts, 0.5, q)
    with pytest.raises(RejectRateExceeded, match=r"reason 'bad_value' in column 'v' \(3 rows\)"):
        enforce_reject_rate(counts, 0.1, q)


def test_empty_quarantine_is_still_written(tmp_path) -> None:
    n, reasons = write_quarantine([], tmp_path / "q.parquet")
    assert (n, reasons) == (0, {})
    assert list(read_frame(tmp_path / "q.parquet").columns) == ["reason", "column"]
