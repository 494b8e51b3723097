"""The run report and the Airflow plugin's pages, opened in a real (headless) Chromium."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.browser.conftest import RUN_ID

pytestmark = [pytest.mark.slow]

SECTIONS = {
    "outcome": "Outcome",
    "tasks": "Tasks: rows and timings",
    "quarantine": "Quarantine",
    "checks": "Quality checks",
    "models": "Models against their baselines",
    "fbt": "Frequently bought together",
    "similar": "Similar products",
    "users": "Users: history beside recommendations",
}


def images_loaded(page) -> dict:
    return page.evaluate(
        """() => {
          const imgs = Array.from(document.images);
          return {total: imgs.length,
                  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length};
        }"""
    )


def test_report_opens_complete_and_self_contained(
    watched, reports_server, reported_run, artifacts_dir
) -> None:
    """Every section is there, every chart and thumbnail renders, nothing is fetched from
    anywhere but the page itself, and the console stays clean."""
    page = watched.page
    key = reported_run.paths.key
    url = f"{reports_server}/runs/demo/{key}/report.html"
    response = page.goto(url)
    assert response.status == 200
    page.wait_for_load_state("load")

    for section, heading in SECTIONS.items():
        assert page.locator(f"section#{section} h2").inner_text() == heading
    assert page.locator("#run-id").inner_text() == RUN_ID
    assert page.locator(".badge.published").count() == 1
    assert page.locator("section#tasks tr[id^=task-]").count() >= 30
    assert page.locator("section#checks .badge.passed").count() >= 10
    assert page.locator("section#models img.chart").count() >= 3
    assert page.locator("section#fbt tr.rule").count() >= 1
    assert page.locator("section#similar .similar-group").count() >= 1
    assert page.locator("section#users .user").count() >= 4

    loaded = images_loaded(page)
    assert loaded["total"] > 20 and loaded["broken"] == 0, loaded
    assert [u for u in watched.requests if not u.startswith((url, "data:"))] == []
    assert watched.errors == []

    page.click("nav a[href='#users']")
    assert page.evaluate("location.hash") == "#users"
    page.screenshot(path=str(artifacts_dir / "run_report.png"), full_page=True)
    assert (artifacts_dir / "run_report.png").stat().st_size > 50_000

    # Its link to the quality checks opens the run's Data Docs.
    with page.expect_navigation():
        page.click("header a[href='data_docs/index.html']")
    assert page.url.endswith(f"/runs/demo/{key}/data_docs/index.html")
    assert "Data Docs" in page.title() or page.locator("body").inner_text() != ""


def test_plugin_pages_lead_to_the_report(
    watched, reports_server, reported_run, artifacts_dir
) -> None:
    """The UI's entry points: the runs list, the latest report, a DAG run's tab and a task's
    link (at the task's row), as the Airflow UI fills in the URL-encoded run id."""
    page = watched.page
    key = reported_run.paths.key
    assert page.goto(f"{reports_server}/runs").status == 200
    row = page.locator("tr", has_text=key)
    assert row.locator("td").nth(3).inner_text() == "published"
    page.screenshot(path=str(artifacts_dir / "plugin_runs.png"), full_page=True)
    with page.expect_navigation():
        row.locator("a", has_text="report").click()
    assert page.url.endswith(f"/runs/demo/{key}/report.html")
    assert page.locator("#run-id").inner_text() == RUN_ID

    page.goto(f"{reports_server}/latest")
    assert page.url.endswith(f"/runs/demo/{key}/report.html")

    page.goto(f"{reports_server}/dag-runs/fashion_recs/{quote(RUN_ID, safe='')}?task=route_users")
    assert page.url.endswith("report.html#task-route_users")
    assert page.locator("tr#task-route_users").is_visible()
    assert page.locator("tr#task-route_users .badge").inner_text() == "success"

    missing = page.goto(f"{reports_server}/dag-runs/fashion_recs/manual__2030-01-01")
    assert missing.status == 404
    assert "run_report" in page.locator("body").inner_text()
    assert watched.errors == [] or all("404" in e for e in watched.errors)


def test_airflow_ui_navigation_opens_the_reports(
    watched, airflow_ui, reported_run, artifacts_dir
) -> None:
    """In the real Airflow UI: Browse holds the plugin's entries; the reports list opens in
    the UI's frame and its link opens the run's report there."""
    page = watched.page
    page.goto(airflow_ui)
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Latest run report").wait_for()
    page.get_by_role("menuitem", name="Fashion recs reports").click()
    page.wait_for_url("**/plugin/fashion-recs-reports**")

    frame = page.frame_locator("iframe")
    key = reported_run.paths.key
    row = frame.locator("tr", has_text=key)
    row.wait_for()
    assert row.locator("td").nth(3).inner_text() == "published"
    page.screenshot(path=str(artifacts_dir / "airflow_ui_reports.png"))
    row.locator("a", has_text="report").click()
    assert frame.locator("#run-id").inner_text() == RUN_ID
    assert frame.locator("section#models img.chart").count() >= 3
    page.screenshot(path=str(artifacts_dir / "airflow_ui_report.png"))
    ours = [e for e in watched.errors if "fashion-recs" in e]
    assert ours == []
