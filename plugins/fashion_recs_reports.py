"""Airflow UI plugin: the pipeline's run reports (Great Expectations Data Docs) in the UI.

Adds a "Fashion recs reports" entry to the navigation that lists every run of every retailer
with links to its Data Docs, served by a small FastAPI app mounted in Airflow's API server at
`/fashion-recs`. The data root comes from the retailer config (`FASHION_RECS_CONFIG`).
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

URL_PREFIX = "/fashion-recs"


def _data_root() -> Path:
    from fashion_recs.config import load_config

    return load_config(os.environ.get("FASHION_RECS_CONFIG") or None).data_root_path


def create_app(data_root: Path | None = None) -> FastAPI:
    """The reports app; `data_root` defaults to the configured one, read on each request."""
    from fashion_recs.runs_index import list_runs, resolve_inside

    app = FastAPI(title="fashion-recs reports")

    def root() -> Path:
        return data_root or _data_root()

    @app.get("/runs", response_class=HTMLResponse)
    def runs() -> str:
        rows = []
        for run in list_runs(root()):
            when = datetime.fromtimestamp(run.modified, UTC).strftime("%Y-%m-%d %H:%M UTC")
            docs = (
                f'<a href="runs/{run.retailer}/{run.run_key}/data_docs/index.html">Data Docs</a>'
                if run.has_data_docs
                else "not rendered"
            )
            status = "published" if run.published else "not published"
            rows.append(
                f"<tr><td>{html.escape(run.retailer)}</td><td>{html.escape(run.run_key)}</td>"
                f"<td>{when}</td><td>{status}</td><td>{docs}</td></tr>"
            )
        body = "".join(rows) or '<tr><td colspan="5">no runs yet</td></tr>'
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>fashion-recs runs</title>"
            "<style>body{font-family:sans-serif;margin:1.5rem}td,th{padding:.3rem .8rem;"
            "text-align:left;border-bottom:1px solid #ddd}</style></head><body>"
            "<h1>fashion-recs runs</h1><table><tr><th>retailer</th><th>run</th>"
            f"<th>last change</th><th>status</th><th>quality report</th></tr>{body}</table>"
            "</body></html>"
        )

    @app.get("/latest")
    def latest() -> RedirectResponse:
        for run in list_runs(root()):
            if run.has_data_docs:
                url = f"runs/{run.retailer}/{run.run_key}/data_docs/index.html"
                return RedirectResponse(url=url)
        raise HTTPException(status_code=404, detail="no run has Data Docs yet")

    @app.get("/runs/{retailer}/{run_key}/data_docs/{path:path}")
    def data_docs(retailer: str, run_key: str, path: str) -> FileResponse:
        runs_dir = root() / "runs"
        run_dir = resolve_inside(runs_dir, f"{retailer}/{run_key}", kind="dir")
        base = (
            run_dir / "data_docs"
            if run_dir and run_dir.parent.parent == runs_dir.resolve()
            else None
        )
        target = resolve_inside(base, path or "index.html") if base and base.is_dir() else None
        if target is None:
            raise HTTPException(status_code=404, detail=f"{path!r} not found for run {run_key}")
        return FileResponse(target)

    return app


class FashionRecsReportsPlugin(AirflowPlugin):
    name = "fashion_recs_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "fashion-recs reports"}]
    external_views = [
        {
            "name": "Fashion recs reports",
            "href": URL_PREFIX.lstrip("/") + "/runs",
            "destination": "nav",
            "url_route": "fashion-recs-reports",
        }
    ]
