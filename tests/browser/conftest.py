"""Headless Chromium for the browser tests, and a real run with its report, served over HTTP.

Chromium is Debian's (`/usr/bin/chromium`, installed by `.ci/run`), driven by Playwright
without its own browser download. Screenshots are kept under `test-artifacts/` (or
`$FASHION_RECS_TEST_ARTIFACTS`). Without Chromium the tests skip, unless
`FASHION_RECS_REQUIRE_BROWSER=1` (as in CI), where a missing browser is a failure.

The fixtures live for one module: Playwright's sync API keeps an asyncio loop running in the
main thread while it is open, which tests elsewhere that call `asyncio.run` must not meet.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fashion_recs.pipeline import RunContext, make_context, run_all
from fashion_recs.synthetic import generate
from tests.conftest import SMALL_SPEC, retailer_overrides
from tests.postgres_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
RUN_ID = "manual__2026-11-01T00:00:00+00:00"


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    folder = Path(os.environ.get("FASHION_RECS_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        if os.environ.get("FASHION_RECS_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (FASHION_RECS_REQUIRE_BROWSER=1) but not found")
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageWatch:
    """A page plus everything it said: console errors, uncaught exceptions, requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))


@pytest.fixture
def watched(browser) -> Iterator[PageWatch]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    yield PageWatch(context.new_page())
    context.close()


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """A whole run of the small retailer, with product images, through the same steps as
    the DAG (CLI path), ending with its report."""
    base = tmp_path_factory.mktemp("browser")
    retailer = base / "retailer"
    generate(dataclasses.replace(SMALL_SPEC, images=True), retailer)
    conf = retailer_overrides(retailer, base / "data", personal={"two_tower": {"enabled": False}})
    ctx = make_context(RUN_ID, date(2026, 11, 1), None, conf)
    run_all(ctx, f"sqlite:///{base / 'results.db'}")
    return ctx


@pytest.fixture(scope="module")
def reports_server(reported_run: RunContext) -> Iterator[str]:
    """The Airflow plugin's app, mounted at its Airflow prefix, served by uvicorn."""
    import importlib.util

    import uvicorn
    from fastapi import FastAPI

    spec = importlib.util.spec_from_file_location(
        "fashion_recs_reports_browser", ROOT / "plugins" / "fashion_recs_reports.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = FastAPI()
    app.mount(module.URL_PREFIX, module.create_app(reported_run.config.data_root_path))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the reports app did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}{module.URL_PREFIX}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def airflow_ui(reported_run: RunContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Airflow API server (UI included) with this repo's plugins, on a private home
    and database, whose retailer config points at the reported run's data root."""
    import subprocess
    import sys
    import urllib.request

    import yaml

    home = tmp_path_factory.mktemp("airflow-ui")
    config = home / "retailer.yaml"
    config.write_text(yaml.safe_dump(reported_run.config.model_dump(mode="json")))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "FASHION_RECS_CONFIG": str(config),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    log = (home / "api-server.log").open("w")
    server = subprocess.Popen(
        [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "airflow api-server did not start: "
                        + (home / "api-server.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
