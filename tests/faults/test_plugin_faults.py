"""The reports plugin answers names no file can have with a 404, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.plugins.test_reports_plugin import load_plugin_module, make_run


def test_nul_and_impossible_names_are_404(tmp_path) -> None:
    make_run(tmp_path, "run_a", docs=True, published=True, report=True)
    client = TestClient(load_plugin_module().create_app(tmp_path))
    for path in (
        "/runs/demo/run_a/data_docs/index%00.html",
        "/runs/demo/run_a/report.html%00",
        "/runs/demo%00/run_a/report.html",
        "/runs/demo/run_a%00/report.html",
        "/runs/demo/run_a/data_docs/" + "x" * 5000 + ".html",
        "/runs/demo/" + "r" * 5000 + "/report.html",
        "/dag-runs/fashion_recs/run%00a",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, (path[:60], answer.status_code)
        assert len(answer.content) < 2000
    assert client.get("/runs/demo/run_a/report.html").status_code == 200
