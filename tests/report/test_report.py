"""The run report's parts: task records, quarantine digests, examples, charts, partial runs."""

from __future__ import annotations

import base64
import io
import re
from datetime import date

import pandas as pd
import pytest
from PIL import Image

from fashion_recs.artifacts import write_json, write_table
from fashion_recs.errors import RejectRateExceeded, RunNotPublished
from fashion_recs.pipeline import RunContext, run_report, run_step
from fashion_recs.report import build_report, collect, examples, plots
from tests.helpers import make_config, run_paths


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    config = make_config(tmp_path)
    return RunContext(
        config, run_paths(config, "manual__2026-11-01T00:00:00+00:00"), date(2026, 11, 1)
    )


def test_run_step_records_success_and_failure_for_the_report(ctx, monkeypatch) -> None:
    """Each task leaves a record with status, try, timing and counts; a failing task's
    record says why, and the error still reaches Airflow."""
    from fashion_recs import pipeline

    def good(_ctx):
        return {"counts": {"rows_in": 10, "rows_out": 8, "rows_quarantined": 2, "rows_filtered": 0}}

    def bad(_ctx):
        raise RejectRateExceeded("products: 40% of rows rejected (column 'price')")

    monkeypatch.setattr(pipeline, "good", good, raising=False)
    monkeypatch.setattr(pipeline, "bad", bad, raising=False)
    run_step(ctx, "clean_products", "good", try_number=2)
    with pytest.raises(RejectRateExceeded):
        run_step(ctx, "filter_events", "bad")

    tasks = collect.task_table(ctx.paths, ["clean_products", "filter_events", "publish_tables"])
    assert list(tasks["task_id"]) == ["clean_products", "filter_events", "publish_tables"]
    assert list(tasks["status"]) == ["success", "failed", "not run"]
    first = tasks.iloc[0]
    assert (first["try_number"], first["rows_in"], first["rows_quarantined"]) == (2, 10, 2)
    assert first["seconds"] >= 0 and first["started"].tzinfo is not None
    assert tasks.iloc[1]["error"].startswith("RejectRateExceeded: products: 40%")


def test_report_of_a_failed_run_names_the_failure_and_fails_the_task(ctx, monkeypatch) -> None:
    """A run that stopped at its first stage still gets a complete, readable page; the report
    task then fails, because nothing was published."""
    from fashion_recs import pipeline

    def bad(_ctx):
        raise RejectRateExceeded("too many bad rows in product_data.csv, column 'price'")

    monkeypatch.setattr(pipeline, "bad", bad, raising=False)
    with pytest.raises(RejectRateExceeded):
        run_step(ctx, "clean_products", "bad")
    quarantine = pd.DataFrame(
        {
            "reason": ["bad_price_value"] * 3 + ["missing_title"],
            "column": ["price"] * 3 + ["title"],
            "source_row": ["2", "5", "9", "11"],
            "price": ["abc", "x" * 500, "-1", "3.0"],
        }
    )
    write_table(quarantine, ctx.paths.file("09_quarantine", "products_quarantine.parquet"))

    with pytest.raises(RunNotPublished, match="failed tasks: clean_products"):
        run_report(ctx, ["download_files", "clean_products", "publish_tables"])
    page = ctx.paths.file("report.html").read_text()
    assert "not published" in page and "RejectRateExceeded" in page
    assert re.search(r'id="task-publish_tables".*?not run', page, re.S)
    assert "bad_price_value" in page and "x" * 500 not in page  # long raw values cut short
    assert "No model was evaluated in this run" in page and "No rules in this run" in page
    summary = ctx.summaries()["run_report"]
    assert summary["failed_tasks"] == ["clean_products"] and not summary["published"]


def test_quarantine_digest_counts_by_reason_with_samples(ctx) -> None:
    frame = pd.DataFrame(
        {
            "reason": ["b", "a", "b", "b"],
            "column": ["x", "y", "x", "x"],
            "value": ["1", "2", "3", "4"],
        }
    )
    write_table(frame, ctx.paths.file("09_quarantine", "events_quarantine.parquet"))
    [digest] = collect.quarantine_files(ctx.paths, samples=2)
    assert digest.rows == 4 and digest.relpath == "09_quarantine/events_quarantine.parquet"
    assert digest.by_reason.to_dict("records") == [
        {"reason": "b", "column": "x", "rows": 3},
        {"reason": "a", "column": "y", "rows": 1},
    ]
    assert list(digest.samples["b"]["value"]) == ["1", "3"]


def test_top_rules_list_each_bundle_once() -> None:
    rules = pd.DataFrame(
        {
            "antecedent": ["a,b", "a,c", "x", "b,c"],
            "consequent": ["c", "b", "y", "a"],
            "support": [0.1, 0.1, 0.2, 0.1],
            "confidence": [0.9, 0.8, 0.5, 0.7],
            "lift": [10.0, 12.0, 3.0, 9.0],
        }
    )
    top = examples.top_rules(rules, n=5, measure="lift")
    assert list(zip(top["antecedent"], top["consequent"], strict=True)) == [
        ("a,c", "b"),
        ("x", "y"),
    ]


def test_showcase_products_are_the_best_sellers_of_distinct_departments() -> None:
    products = pd.DataFrame(
        {"product_id": ["p1", "p2", "p3", "p4"], "department": ["tops", "tops", "shoes", "bags"]}
    )
    popular = pd.DataFrame(
        {
            "segment_type": ["overall"] * 4,
            "product_id": ["p2", "p1", "p3", "p4"],
            "rank": [1, 2, 3, 4],
        }
    )
    assert examples.showcase_products(popular, products, 2) == ["p2", "p3"]
    assert examples.showcase_products(None, products, 3) == ["p1", "p3", "p4"]


def test_thumbnails_embed_the_product_image_or_say_there_is_none(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (400, 300), (200, 30, 30)).save(tmp_path / "images" / "p1.png")
    products = pd.DataFrame(
        {
            "product_id": ["p1", "p2"],
            "title": ["Red Dress", "Lost Shoe"],
            "department": ["dresses", "shoes"],
            "images": [["images/p1.png"], ["images/missing.png"]],
        }
    )
    cards = examples.Thumbnails(products, tmp_path, tmp_path / "cache", size=64)
    red, lost = cards.cards(["p1", "p2"])
    assert red.title == "Red Dress" and red.thumbnail.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(red.thumbnail.split(",", 1)[1])))
    assert max(image.size) == 64 and image.getpixel((32, 24))[0] > 150
    assert lost.thumbnail is None
    assert cards.card("nope").title == "(not in the catalogue)"


def test_charts_are_real_pngs_and_reproducible() -> None:
    metrics = pd.DataFrame(
        {
            "model": ["popularity", "user_cf_cosine", "two_tower"],
            "metric": ["map"] * 3,
            "k": [12] * 3,
            "value": [0.02, 0.045, 0.048],
        }
    )
    one = plots.model_comparison(metrics, "map", "t", {"popularity"}, ("gate", 0.025), "two_tower")
    two = plots.model_comparison(metrics, "map", "t", {"popularity"}, ("gate", 0.025), "two_tower")
    assert one == two and one.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(one.split(",", 1)[1])))
    assert image.format == "PNG" and image.size[0] > 300
    assert plots.model_comparison(metrics, "recall", "t", set()) is None


def test_report_renders_an_empty_run_without_failing(ctx) -> None:
    html, tasks, result = build_report(ctx.config, ctx.paths, ["download_files"])
    assert list(tasks["status"]) == ["not run"] and not result.published
    for section in result.sections:
        assert f'<section id="{section}">' in html
    write_json({}, ctx.paths.file("summaries", "x.json"))  # summaries alone change nothing
    assert build_report(ctx.config, ctx.paths, ["download_files"])[0] == html


def test_thumbnails_stop_asking_the_network_after_failures(tmp_path, monkeypatch) -> None:
    """Unreachable image hosts cost a few fetches, not one timeout per product."""
    from fashion_recs.similar import images

    calls = []

    def unreachable(url, timeout, max_bytes):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(images, "_read_http", unreachable)
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(10)],
            "title": ["t"] * 10,
            "department": ["d"] * 10,
            "images": [[f"https://img.example/p{i}.jpg"] for i in range(10)],
        }
    )
    cards = examples.Thumbnails(products, tmp_path, tmp_path / "cache")
    assert all(c.thumbnail is None for c in cards.cards(list(products["product_id"])))
    assert len(calls) == examples.Thumbnails.max_remote_failures
