"""Airflow UI plugin: every run's report and quality checks, inside the Airflow UI.

A small FastAPI app mounted in Airflow's API server at `/fashion-recs` serves, from the data
root of the retailer config (`FASHION_RECS_CONFIG`):

- `runs`: every run of every retailer, newest first, with its report and Data Docs;
- `latest`: the newest run's report;
- `runs/<retailer>/<run>/report.html` and `.../data_docs/...`: a run's files (only files
  inside that run's directory are ever served);
- `dag-runs/<dag_id>/<run_id>[?task=<task_id>]`: the report of an Airflow run, at the task's
  row when a task is given.

External views add "Fashion recs reports" and "Latest run report" to the navigation, a
"Run report" tab to every DAG run and a "Run report" link to every task instance. Like every
plugin app, these routes are not behind Airflow's login: serve the API server on a network
where the reports (which name user ids) may be read, or put it behind an authenticating proxy.
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

URL_PREFIX = "/fashion-recs"

PAGE = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
    "<link rel='icon' href='data:,'><title>{title}</title>"
    "<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;font-size:14px}}"
    "td,th{{padding:.3rem .8rem;text-align:left;border-bottom:1px solid #ddd}}"
    ".muted{{color:#6b7280}}</style></head><body><h1>{title}</h1>{body}</body></html>"
)


def _data_root() -> Path:
    from fashion_recs.config import load_config

    return load_config(os.environ.get("FASHION_RECS_CONFIG") or None).data_root_path


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), body=body), status_code)


def _short(name: str, limit: int = 100) -> str:
    """A requested name in an answer: never the whole of it (a 404 is not an echo service)."""
    return name if len(name) <= limit else f"{name[:limit]}..."


def create_app(data_root: Path | None = None) -> FastAPI:
    """The reports app; `data_root` defaults to the configured one, read on each request."""
    from fashion_recs.artifacts import run_key
    from fashion_recs.contract import REPORT_FILE as REPORT
    from fashion_recs.runs_index import list_runs, resolve_inside

    app = FastAPI(title="fashion-recs reports")

    def root() -> Path:
        return data_root or _data_root()

    def run_file(retailer: str, key: str, relative: str) -> Path:
        """The run's report, or a file of its Data Docs; 404 for anything else, and for
        names that climb out of the runs folder or out of the Data Docs folder."""
        runs_dir = root() / "runs"
        run_dir = resolve_inside(runs_dir, f"{retailer}/{key}", kind="dir")
        if run_dir is None or run_dir.parent.parent != runs_dir.resolve():
            raise HTTPException(
                status_code=404, detail=f"no run {_short(key)!r} of {_short(retailer)!r}"
            )
        if relative == REPORT:
            target = resolve_inside(run_dir, REPORT)
        elif relative.startswith("data_docs/") and (run_dir / "data_docs").is_dir():
            target = resolve_inside(run_dir / "data_docs", relative.removeprefix("data_docs/"))
        else:
            target = None
        if target is None:
            detail = f"{_short(relative)!r} not found for run {_short(key)}"
            raise HTTPException(status_code=404, detail=detail)
        return target

    @app.get("/runs", response_class=HTMLResponse)
    def runs() -> HTMLResponse:
        rows = []
        for run in list_runs(root()):
            when = datetime.fromtimestamp(run.modified, UTC).strftime("%Y-%m-%d %H:%M UTC")
            base = f"runs/{html.escape(run.retailer)}/{html.escape(run.run_key)}"
            report = (
                f'<a href="{base}/{REPORT}">report</a>'
                if run.has_report
                else '<span class="muted">no report yet</span>'
            )
            docs = (
                f'<a href="{base}/data_docs/index.html">Data Docs</a>'
                if run.has_data_docs
                else '<span class="muted">not rendered</span>'
            )
            status = "published" if run.published else "not published"
            rows.append(
                f"<tr><td>{html.escape(run.retailer)}</td><td>{html.escape(run.run_key)}</td>"
                f"<td>{when}</td><td>{status}</td><td>{report}</td><td>{docs}</td></tr>"
            )
        body = "".join(rows) or '<tr><td colspan="6">no runs yet</td></tr>'
        return _page(
            "fashion-recs runs",
            "<table><tr><th>retailer</th><th>run</th><th>last change</th><th>status</th>"
            f"<th>run report</th><th>quality checks</th></tr>{body}</table>",
        )

    @app.get("/latest", response_model=None)
    def latest(request: Request) -> RedirectResponse | HTMLResponse:
        for run in list_runs(root()):
            if run.has_report:
                url = request.url_for(
                    "run_files", retailer=run.retailer, run=run.run_key, path=REPORT
                )
                return RedirectResponse(url=str(url))
        return _page("No run report yet", "<p>No run has written its report yet.</p>", 404)

    @app.get("/dag-runs/{dag_id}/{run_id:path}", response_model=None)
    def dag_run_report(
        request: Request, dag_id: str, run_id: str, task: str | None = None
    ) -> RedirectResponse | HTMLResponse:
        """The report of an Airflow run (the UI's "Run report" tab and task link)."""
        try:
            key = run_key(run_id)
        except ValueError:
            key = ""
        for run in list_runs(root()):
            if run.run_key == key and run.has_report:
                url = str(request.url_for("run_files", retailer=run.retailer, run=key, path=REPORT))
                return RedirectResponse(url=url + (f"#task-{task}" if task else ""))
        return _page(
            "No report for this run yet",
            f"<p>Run <code>{html.escape(_short(run_id))}</code> of "
            f"<code>{html.escape(_short(dag_id))}</code> "
            "has no report yet: its last task, <code>run_report</code>, writes it when every "
            "other task has finished.</p>",
            404,
        )

    @app.get("/runs/{retailer}/{run}/{path:path}", name="run_files")
    def run_files(retailer: str, run: str, path: str) -> FileResponse:
        return FileResponse(run_file(retailer, run, path))

    return app


class FashionRecsReportsPlugin(AirflowPlugin):
    name = "fashion_recs_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "fashion-recs reports"}]
    _base = URL_PREFIX.lstrip("/")  # relative: the UI resolves it under its own base URL
    external_views = [
        {
            "name": "Fashion recs reports",
            "href": f"{_base}/runs",
            "destination": "nav",
            "category": "browse",
            "url_route": "fashion-recs-reports",
        },
        {
            "name": "Latest run report",
            "href": f"{_base}/latest",
            "destination": "nav",
            "category": "browse",
            "url_route": "fashion-recs-latest",
        },
        {
            "name": "Run report",
            "href": _base + "/dag-runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "fashion-recs-run-report",
        },
        {
            "name": "Run report",
            "href": _base + "/dag-runs/{DAG_ID}/{RUN_ID}?task={TASK_ID}",
            "destination": "task_instance",
            "url_route": "fashion-recs-task-report",
        },
    ]
