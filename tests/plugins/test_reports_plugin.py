"""The Airflow UI plugin: Airflow loads it, and it serves run lists and Data Docs safely."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi.testclient import TestClient

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "fashion_recs_reports.py"


def load_plugin_module():
    spec = importlib.util.spec_from_file_location("fashion_recs_reports", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(root: Path, key: str, docs: bool, published: bool, report: bool = False) -> Path:
    run = root / "runs" / "demo" / key
    (run / "data_docs").mkdir(parents=True)
    if docs:
        (run / "data_docs" / "index.html").write_text(f"<html>docs of {key}</html>")
    if published:
        (run / "run_summary.json").write_text("{}")
    if report:
        (run / "report.html").write_text(f"<html>report of {key}</html>")
    return run


def test_airflow_loads_the_plugin_with_its_app_and_nav_entry() -> None:
    """Airflow's own plugin manager finds the plugin in the plugins folder without errors."""
    from airflow import plugins_manager

    apps, _middlewares = plugins_manager.get_fastapi_plugins()
    assert plugins_manager.get_import_errors() == {}
    assert [a["url_prefix"] for a in apps if a["name"] == "fashion-recs reports"] == [
        "/fashion-recs"
    ]
    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    views = info["fashion_recs_reports"]["external_views"]
    by_destination = {}
    for view in views:
        by_destination.setdefault(view["destination"], []).append(view["href"])
        assert not view["href"].startswith("/")  # relative: the UI resolves it under its base
    assert by_destination["nav"] == ["fashion-recs/runs", "fashion-recs/latest"]
    assert by_destination["dag_run"] == ["fashion-recs/dag-runs/{DAG_ID}/{RUN_ID}"]
    assert by_destination["task_instance"] == [
        "fashion-recs/dag-runs/{DAG_ID}/{RUN_ID}?task={TASK_ID}"
    ]


def test_runs_page_lists_runs_and_serves_their_data_docs(tmp_path) -> None:
    make_run(tmp_path, "run_a", docs=True, published=True)
    make_run(tmp_path, "run_b", docs=False, published=False)
    client = TestClient(load_plugin_module().create_app(tmp_path))

    page = client.get("/runs")
    assert page.status_code == 200
    assert "run_a" in page.text and "run_b" in page.text and "not published" in page.text
    assert 'href="runs/demo/run_a/data_docs/index.html"' in page.text

    docs = client.get("/runs/demo/run_a/data_docs/index.html")
    assert docs.status_code == 200 and "docs of run_a" in docs.text
    assert "no report yet" in page.text
    missing = client.get("/latest")
    assert missing.status_code == 404 and "No run has written its report yet" in missing.text


def test_reports_are_served_for_the_latest_run_and_for_an_airflow_run(tmp_path) -> None:
    """The nav entry opens the newest report; a DAG run's tab and a task's link open that
    run's report (at the task's row), found from the Airflow run id the UI fills in."""
    import os

    old = make_run(
        tmp_path, "manual__2026-11-01T00-00-00-00-00", docs=True, published=True, report=True
    )
    new = make_run(
        tmp_path, "manual__2026-11-02T00-00-00-00-00", docs=True, published=False, report=True
    )
    os.utime(old, (1_700_000_000, 1_700_000_000))
    os.utime(new, (1_800_000_000, 1_800_000_000))
    client = TestClient(load_plugin_module().create_app(tmp_path))

    page = client.get("/runs")
    assert 'href="runs/demo/manual__2026-11-02T00-00-00-00-00/report.html"' in page.text
    latest = client.get("/latest", follow_redirects=False)
    assert latest.status_code == 307
    assert latest.headers["location"].endswith(
        "/runs/demo/manual__2026-11-02T00-00-00-00-00/report.html"
    )
    assert "report of manual__2026-11-02" in client.get("/latest").text

    # The UI URL-encodes the run id it substitutes for {RUN_ID}.
    tab = client.get(
        "/dag-runs/fashion_recs/manual__2026-11-01T00%3A00%3A00%2B00%3A00", follow_redirects=False
    )
    assert tab.status_code == 307
    assert tab.headers["location"].endswith(
        "/runs/demo/manual__2026-11-01T00-00-00-00-00/report.html"
    )
    task = client.get(
        "/dag-runs/fashion_recs/manual__2026-11-01T00:00:00+00:00?task=clean_products",
        follow_redirects=False,
    )
    assert task.headers["location"].endswith("report.html#task-clean_products")
    unknown = client.get("/dag-runs/fashion_recs/manual__2030-01-01T00:00:00+00:00")
    assert unknown.status_code == 404 and "run_report" in unknown.text


def test_data_docs_route_refuses_paths_outside_the_run(tmp_path) -> None:
    run = make_run(tmp_path, "run_a", docs=True, published=True)
    (run / "secret.txt").write_text("not for the web")
    client = TestClient(load_plugin_module().create_app(tmp_path))
    assert client.get("/runs/demo/run_a/data_docs/..%2Fsecret.txt").status_code == 404
    assert client.get("/runs/demo/run_a/secret.txt").status_code == 404  # only the report
    assert client.get("/runs/demo/run_a/run_summary.json").status_code == 404
    assert client.get("/runs/demo/run_a/data_docs/missing.html").status_code == 404
    assert client.get("/runs/demo/nope/data_docs/index.html").status_code == 404
    # A run directory named by climbing out of the runs folder is refused too.
    (tmp_path.parent / "data_docs").mkdir(exist_ok=True)
    (tmp_path.parent / "data_docs" / "secret.txt").write_text("outside")
    assert client.get("/runs/%2E%2E/%2E%2E/data_docs/secret.txt").status_code == 404
    assert client.get("/runs/demo/%2E%2E/data_docs/secret.txt").status_code == 404
