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


def make_run(root: Path, key: str, docs: bool, published: bool) -> Path:
    run = root / "runs" / "demo" / key
    (run / "data_docs").mkdir(parents=True)
    if docs:
        (run / "data_docs" / "index.html").write_text(f"<html>docs of {key}</html>")
    if published:
        (run / "run_summary.json").write_text("{}")
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
    assert views[0]["destination"] == "nav"
    assert not views[0]["href"].startswith("/")  # relative: the UI resolves it under its base


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
    latest = client.get("/latest", follow_redirects=False)
    assert latest.status_code == 307 and latest.headers["location"].endswith(
        "run_a/data_docs/index.html"
    )


def test_data_docs_route_refuses_paths_outside_the_run(tmp_path) -> None:
    run = make_run(tmp_path, "run_a", docs=True, published=True)
    (run / "secret.txt").write_text("not for the web")
    client = TestClient(load_plugin_module().create_app(tmp_path))
    assert client.get("/runs/demo/run_a/data_docs/..%2Fsecret.txt").status_code == 404
    assert client.get("/runs/demo/run_a/data_docs/missing.html").status_code == 404
    assert client.get("/runs/demo/nope/data_docs/index.html").status_code == 404
    # A run directory named by climbing out of the runs folder is refused too.
    (tmp_path.parent / "data_docs").mkdir(exist_ok=True)
    (tmp_path.parent / "data_docs" / "secret.txt").write_text("outside")
    assert client.get("/runs/%2E%2E/%2E%2E/data_docs/secret.txt").status_code == 404
    assert client.get("/runs/demo/%2E%2E/data_docs/secret.txt").status_code == 404
