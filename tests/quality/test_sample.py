"""Quality checks on large artifacts: a seeded sample of row groups, the row count the whole's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_recs import contract
from fashion_recs.errors import QualityCheckFailed
from fashion_recs.quality.checks import run_check
from fashion_recs.quality.sample import read_for_check
from fashion_recs.quality.suites import CheckContext

from .test_checks import CONTEXT, valid_frames


def numbered(n: int, start: int = 0) -> pa.Table:
    return pa.table({"n": pa.array(range(start, start + n), pa.int64())})


def test_an_artifact_under_the_limit_is_read_whole(tmp_path: Path):
    pq.write_table(numbered(1000), tmp_path / "a.parquet", row_group_size=100)

    read = read_for_check(tmp_path / "a.parquet", max_rows=1000)

    assert not read.sampled
    assert read.rows_total == 1000
    assert read.frame["n"].tolist() == list(range(1000))


def test_a_large_dataset_is_sampled_by_row_groups_the_same_way_each_time(tmp_path: Path):
    # A Spark-style dataset directory: two part files of ten 100-row groups each.
    (tmp_path / "ds").mkdir()
    for part in range(2):
        target = tmp_path / "ds" / f"part-{part}.parquet"
        pq.write_table(numbered(1000, part * 1000), target, row_group_size=100)

    read = read_for_check(tmp_path / "ds", max_rows=350, seed=3)
    again = read_for_check(tmp_path / "ds", max_rows=350, seed=3)
    other = read_for_check(tmp_path / "ds", max_rows=350, seed=4)

    values = read.frame["n"].tolist()
    assert read.sampled and read.rows_total == 2000
    assert len(values) == 350
    assert values == again.frame["n"].tolist()
    assert values != other.frame["n"].tolist()
    assert values == sorted(values)  # in file order
    groups = {v // 100 for v in values}
    assert len(groups) == 4  # whole row groups: three and a half of them
    assert all(v // 100 in groups for v in values)


def test_a_sampled_check_validates_the_sample_and_bounds_the_whole(tmp_path: Path):
    events = valid_frames()["events"]
    bad = events.copy()
    bad["product_id"] = "f" * 24

    # Row-level defects in the sample are found as usual, and the message says it was one.
    with pytest.raises(QualityCheckFailed, match=r"sample of 3 of the artifact's 1,000,000"):
        run_check("events", bad, CONTEXT, tmp_path, rows_total=1_000_000)

    # The upstream limit applies to the artifact's rows, not the sample's.
    interactions = valid_frames()["interactions"]
    rows = len(interactions)
    within = CheckContext(
        catalogue_ids=CONTEXT.catalogue_ids, categories=CONTEXT.categories, upstream_rows=5000
    )
    summary = run_check("interactions", interactions, within, tmp_path, rows_total=4000)
    assert summary["success"] and summary["rows"] == 4000 and summary["sampled_rows"] == rows

    over = CheckContext(
        catalogue_ids=CONTEXT.catalogue_ids, categories=CONTEXT.categories, upstream_rows=3000
    )
    with pytest.raises(QualityCheckFailed, match=r"4,000 rows, more than the 3,000 upstream"):
        run_check("interactions", interactions, over, tmp_path, rows_total=4000)


def test_the_checked_sample_keeps_the_contract_types(tmp_path: Path):
    interactions = pa.Table.from_pandas(
        pd.concat([valid_frames()["interactions"]] * 1000, ignore_index=True),
        schema=contract.INTERACTIONS_SCHEMA,
        preserve_index=False,
    )
    pq.write_table(interactions, tmp_path / "i.parquet", row_group_size=100)

    read = read_for_check(tmp_path / "i.parquet", max_rows=1000)

    assert read.sampled and len(read.frame) == 1000
    # The same column types as reading the whole file, which is what the suites were built on.
    assert read.frame.dtypes.equals(pd.read_parquet(tmp_path / "i.parquet").dtypes)
    summary = run_check("interactions", read.frame, CONTEXT, tmp_path, rows_total=read.rows_total)
    assert summary["success"] and summary["rows"] == interactions.num_rows
