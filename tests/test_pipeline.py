"""The pipeline's steps without Airflow: a rerun of the same run rewrites identical artifacts."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from fashion_recs.pipeline import make_context, run_all, run_report, run_step
from fashion_recs.publish import make_engine, read_table
from tests.conftest import retailer_overrides


def layer_files(run_dir: Path) -> dict[Path, bytes]:
    """Every file under the run's layer folders (`01_raw` ... `09_quarantine`)."""
    return {
        p.relative_to(run_dir): p.read_bytes()
        for p in sorted(run_dir.glob("[0-9][0-9]_*/**/*"))
        if p.is_file()
    }


def test_rerunning_a_run_gives_byte_identical_artifacts(retailer, tmp_path) -> None:
    ctx = make_context(
        "rerun_check", date(2026, 11, 1), None, retailer_overrides(retailer, tmp_path / "data")
    )
    url = f"sqlite:///{tmp_path / 'results.db'}"
    first = run_all(ctx, url)
    files = sorted(ctx.paths.run_dir.rglob("*.parquet"))
    snapshot = {p.relative_to(ctx.paths.run_dir): p.read_bytes() for p in files}
    assert len(snapshot) >= 12  # every stage's artifacts and quarantine files

    layer_snapshot = layer_files(ctx.paths.run_dir)
    second = run_all(ctx, url)
    again = {
        p.relative_to(ctx.paths.run_dir): p.read_bytes()
        for p in sorted(ctx.paths.run_dir.rglob("*.parquet"))
    }
    assert again.keys() == snapshot.keys()
    # The report's task table holds each task's measured start and run time; all else is equal.
    tasks = Path("08_reporting/run_tasks.parquet")
    changed = [str(k) for k in snapshot if again[k] != snapshot[k] and k != tasks]
    assert changed == []
    # So is every other file of the layers, models included (the README lists what differs).
    layers_again = layer_files(ctx.paths.run_dir)
    assert layers_again.keys() == layer_snapshot.keys()
    assert any(k.parts[0] == "06_models" and k.suffix == ".json" for k in layers_again)
    assert [
        str(k) for k in layer_snapshot if layers_again[k] != layer_snapshot[k] and k != tasks
    ] == []
    timed = ["started", "seconds"]
    before = pd.read_parquet(io.BytesIO(snapshot[tasks])).drop(columns=timed)
    pd.testing.assert_frame_equal(
        before, pd.read_parquet(io.BytesIO(again[tasks])).drop(columns=timed)
    )
    assert first["publish"]["tables"] == second["publish"]["tables"]
    # Rerunning the report task alone rewrites the same page and table.
    page = (ctx.paths.run_dir / "report.html").read_bytes()
    run_report(ctx)
    assert (ctx.paths.run_dir / "report.html").read_bytes() == page
    assert (ctx.paths.run_dir / tasks).read_bytes() == again[tasks]

    # The rerun superseded its own earlier publish; readers see one current run.
    engine = make_engine(url)
    statuses = sorted(r["status"] for r in read_table(engine, "runs"))
    engine.dispose()
    assert statuses == ["expired", "published"]
    events = pq.read_table(ctx.paths.run_dir / "02_intermediate" / "events.parquet")
    assert events.num_rows == ctx.summaries()["events"]["events_out"] > 0


def test_a_check_of_a_large_artifact_validates_a_sample(retailer, tmp_path) -> None:
    ctx = make_context(
        "sampled_check",
        date(2026, 11, 1),
        None,
        retailer_overrides(retailer, tmp_path / "data", quality={"check_max_rows": 1000}),
    )
    download = run_step(ctx, "download_files", "download")
    products = run_step(ctx, "clean_products", "products", download)
    events = run_step(ctx, "filter_events", "events", download, products)

    first = run_step(ctx, "check_events", "check", "events")["checks"]
    again = run_step(ctx, "check_events", "check", "events")["checks"]

    by_artifact = {c["artifact"]: c for c in first}
    checked = by_artifact["events"]
    assert checked["success"]
    assert checked["rows"] == events["events_out"] > 1000
    assert checked["sampled_rows"] == 1000
    # The small per-id table is checked whole; a rerun checks the same sample.
    assert "sampled_rows" not in by_artifact["event_product_ids"]
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in again] == [
        {k: v for k, v in c.items() if k != "seconds"} for c in first
    ]
