"""Data-quality checks between stages: validate an artifact, save the result, fail loudly.

`run_check` validates a data frame against its artifact's suite (see `suites.py`) with an
ephemeral Great Expectations context, writes GX's full validation result as JSON into the
run's results directory, and returns a small summary fit for an XCom. A failing check raises
`QualityCheckFailed` naming the artifact, each failing expectation and column, the unexpected
count, sample values and the results file.

A fresh ephemeral context per check costs about 5 ms (importing GX is the slow part, about
4 s, once per process), so contexts are not shared: no datasource or asset names can collide
between checks, and concurrent checks in one process stay independent.

`build_data_docs` renders the saved results of a run as GX Data Docs; see its docstring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# isort: off
# First, so that GX's import-time logging is quieted (see suites.py) before GX loads.
from fashion_recs.quality.suites import QUALITY_ARTIFACTS, CheckContext, build_suite

# isort: on
import great_expectations as gx
import pandas as pd
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationSuiteValidationResultSchema,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from fashion_recs.artifacts import replace_dir, write_json
from fashion_recs.errors import QualityCheckFailed

__all__ = ["QUALITY_ARTIFACTS", "CheckContext", "build_data_docs", "run_check", "validate"]

log = logging.getLogger(__name__)

DATASOURCE_NAME = "fashion_recs"
DOCS_SITE_NAME = "fashion_recs"
# SUMMARY keeps 20 sample values and their counts per expectation, never the full list of
# unexpected rows (which on a bad 2M-row frame would be millions of entries).
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
SAMPLE_VALUES = 5


def _quiet_context(context: Any) -> Any:
    """No tqdm bars in task logs: GX shows them unless the context's config says otherwise."""
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate(
    artifact: str,
    frame: pd.DataFrame,
    suite: gx.ExpectationSuite,
    run_name: str | None = None,
) -> ExpectationSuiteValidationResult:
    """Validate `frame` as `artifact` against `suite` in a fresh ephemeral context."""
    context = _quiet_context(gx.get_context(mode="ephemeral"))
    batch_definition = (
        context.data_sources.add_pandas(DATASOURCE_NAME)
        .add_dataframe_asset(artifact)
        .add_batch_definition_whole_dataframe(artifact)
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=artifact, data=batch_definition, suite=suite)
    )
    return definition.run(
        batch_parameters={"dataframe": frame},
        result_format=RESULT_FORMAT,
        run_id=RunIdentifier(run_name=run_name) if run_name else None,
    )


def run_check(
    artifact: str,
    frame: pd.DataFrame,
    context: CheckContext,
    results_dir: Path,
    *,
    raise_on_failure: bool = True,
    run_name: str | None = None,
    rows_total: int | None = None,
) -> dict:
    """Validate `frame` as `artifact`, save GX's result to `results_dir/<artifact>.json`.

    Returns a JSON-friendly summary: artifact, success, evaluated and failed expectation
    counts, rows, seconds, results_path and `failed`, one entry per failing expectation with
    its type, column(s), unexpected count or observed value and up to five sample values.
    Raises `QualityCheckFailed` with the same details when the suite fails and
    `raise_on_failure`; the results file is written first either way. `run_name` (for
    example the Airflow run id) labels the result in Data Docs.

    `rows_total`: the artifact's rows when `frame` is a sample of it (`sample.read_for_check`).
    GX then validates the sample's rows, and the artifact's own row count is held to the
    context's upstream limit here (a failure like GX's row-count one, marked `whole_artifact`);
    the summary gives both counts.
    """
    started = time.monotonic()
    sampled = rows_total is not None and rows_total > len(frame)
    limit = context.upstream_rows
    if sampled:  # the sample's row count says nothing about the limit; the total does
        context = dataclasses.replace(context, upstream_rows=None)
    suite = build_suite(artifact, context)
    result = validate(artifact, frame, suite, run_name)
    result_dict = result.to_json_dict()
    results_path = write_json(result_dict, Path(results_dir) / f"{artifact}.json")
    summary = summarize(artifact, result_dict)
    if sampled and limit is not None and rows_total > limit:
        summary["success"] = False
        summary["failed"].insert(
            0,
            {
                "expectation": "expect_table_row_count_to_be_between",
                "column": None,
                "observed_value": rows_total,
                "max_value": limit,
                "whole_artifact": True,
            },
        )
    summary.update(
        rows=rows_total if sampled else len(frame),
        seconds=round(time.monotonic() - started, 3),
        results_path=str(results_path),
    )
    if sampled:
        summary["sampled_rows"] = len(frame)
    log.info(
        "quality %s: %s, %d/%d expectations passed on %s rows%s in %.1f s; result %s",
        artifact,
        "passed" if summary["success"] else "FAILED",
        summary["evaluated"] - len(summary["failed"]),
        summary["evaluated"],
        f"{len(frame):,}",
        f" (a sample of {rows_total:,})" if sampled else "",
        summary["seconds"],
        results_path,
    )
    if not summary["success"] and raise_on_failure:
        raise QualityCheckFailed(failure_message(summary))
    return summary


def summarize(artifact: str, result: dict) -> dict:
    """The small, JSON-friendly digest of a validation result dict (`to_json_dict()`)."""
    failed = [_failure(r) for r in result["results"] if not r["success"]]
    # Table-level failures first, then by column: the same defects always read the same way.
    failed.sort(key=lambda f: (f["column"] is not None, f["column"] or "", f["expectation"]))
    return {
        "artifact": artifact,
        "success": bool(result["success"]),
        "evaluated": int(result["statistics"]["evaluated_expectations"]),
        "failed": failed,
    }


def _failure(expectation_result: dict) -> dict:
    config = expectation_result["expectation_config"]
    kwargs = config["kwargs"]
    outcome = expectation_result.get("result") or {}
    columns = _columns(config["type"], kwargs)
    failure: dict[str, Any] = {
        "expectation": config["type"],
        "column": ", ".join(columns) if columns else None,
    }
    if columns and len(columns) > 1:
        failure["columns"] = columns
    if kwargs.get("row_condition"):
        failure["row_condition"] = _condition_text(kwargs["row_condition"])
    if "unexpected_count" in outcome:
        failure["unexpected_count"] = int(outcome["unexpected_count"])
        samples = list(outcome.get("partial_unexpected_list") or [])[:SAMPLE_VALUES]
        failure["partial_unexpected_list"] = _plain(samples)
    elif "observed_value" in outcome:
        failure["observed_value"] = _plain(outcome["observed_value"])
        if "column_list" in kwargs and isinstance(outcome["observed_value"], list):
            expected, found = kwargs["column_list"], outcome["observed_value"]
            failure["missing_columns"] = [c for c in expected if c not in found]
            failure["unexpected_columns"] = [c for c in found if c not in expected]
    errors = _exception_messages(expectation_result.get("exception_info") or {})
    if errors:
        failure["exception"] = "; ".join(errors)
    return failure


def _exception_messages(info: dict) -> list[str]:
    """GX reports errors at the top level or per metric (`{metric id: {...}}`); collect both."""
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = {
        str(e.get("exception_message"))
        for e in entries
        if isinstance(e, dict)
        and e.get("raised_exception") is not False
        and e.get("exception_message")
    }
    return sorted(messages)


def _columns(expectation: str, kwargs: dict) -> list[str] | None:
    """The column(s) an expectation is about; None for the table as a whole."""
    if expectation.startswith("expect_table_"):
        return None
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    return None


def _plain(value: Any) -> Any:
    """Plain JSON values (numpy scalars and tuples inside GX results become floats and lists)."""
    return json.loads(json.dumps(value, default=str))


def _condition_text(condition: Any) -> str:
    if isinstance(condition, dict) and "operator" in condition:
        column = condition.get("column", {}).get("name", "?")
        return f"{column} {condition['operator']} {condition.get('parameter')}"
    return str(condition)


def failure_message(summary: dict) -> str:
    """Say which artifact failed which expectations, on what values, and where to look."""
    lines = [
        f"Quality check failed for artifact {summary['artifact']!r}: "
        f"{len(summary['failed'])} of {summary['evaluated']} expectations failed."
    ]
    for f in summary["failed"]:
        if "columns" in f:
            where = "columns " + ", ".join(repr(c) for c in f["columns"])
        else:
            where = f"column {f['column']!r}" if f["column"] else "the table"
        if f.get("row_condition"):
            where += f" (rows where {f['row_condition']})"
        if "exception" in f:
            detail = f"could not be evaluated: {f['exception']}"
        elif "unexpected_count" in f:
            detail = (
                f"{f['unexpected_count']:,} unexpected values, e.g. {f['partial_unexpected_list']}"
            )
        elif "missing_columns" in f:
            detail = (
                f"missing {f['missing_columns']}, unexpected {f['unexpected_columns']}"
                if f["missing_columns"] or f["unexpected_columns"]
                else "the contract's columns in another order"
            )
            detail += f"; found {f['observed_value']}"
        elif f.get("whole_artifact"):
            detail = f"{f['observed_value']:,} rows, more than the {f['max_value']:,} upstream"
        else:
            detail = f"observed {f.get('observed_value')!r}"
        lines.append(f"  - {f['expectation']} on {where}: {detail}")
    if "sampled_rows" in summary:
        lines.append(
            f"Row checks ran on a sample of {summary['sampled_rows']:,} of the artifact's "
            f"{summary['rows']:,} rows (quality.check_max_rows)."
        )
    lines.append(
        f"Full validation result: {summary.get('results_path', '(not saved)')}. Fix the stage "
        "or its input, then clear the task to rerun; retrying the same data cannot pass."
    )
    return "\n".join(lines)


# --- Data Docs ----------------------------------------------------------------------------


def _load_results(results_dir: Path) -> list[ExpectationSuiteValidationResult]:
    schema = ExpectationSuiteValidationResultSchema()
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or "suite_name" not in raw or "results" not in raw:
            log.warning("data docs: %s is not a validation result, skipped", path)
            continue
        results.append(schema.load(raw))
    if not results:
        raise FileNotFoundError(
            f"no validation results (*.json written by run_check) in {results_dir}; run the "
            "quality checks of this run before building its Data Docs"
        )
    return results


def _result_key(result: ExpectationSuiteValidationResult) -> ValidationResultIdentifier:
    run_id = result.meta.get("run_id") or {}
    batch = result.meta.get("active_batch_definition") or {}
    batch_id = "-".join(
        str(batch[k]) for k in ("datasource_name", "data_asset_name") if batch.get(k)
    )
    return ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
        run_id=RunIdentifier(run_name=run_id.get("run_name"), run_time=run_id.get("run_time")),
        batch_identifier=batch_id or result.suite_name,
    )


def _suite_of(result: ExpectationSuiteValidationResult) -> gx.ExpectationSuite:
    """The suite as it ran, rebuilt from the expectation configurations in its result."""
    expectations = []
    for r in result.results:
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
        config = ExpectationConfiguration(type=r.expectation_config.type, kwargs=kwargs)
        expectations.append(config.to_domain_obj())
    return gx.ExpectationSuite(name=result.suite_name, expectations=expectations)


def build_data_docs(results_dir: Path, docs_dir: Path) -> Path:
    """Render the validation results saved in `results_dir` as a static Data Docs site.

    GX renders Data Docs only from a file-backed context, so this creates a throwaway file
    context in a temporary directory, loads every result JSON that `run_check` wrote into its
    validation results store (plus each suite, rebuilt from the result, so the suite pages
    exist too), and builds one site with GX's own renderer. Nothing is re-validated: the docs
    show exactly the results the checks saved, so they can be built after the fact, once per
    run, without the data frames. The site is built beside `docs_dir` and swapped in, so a
    rebuild never mixes pages of two builds. Returns the path of `index.html`.

    Offline use: every page is static HTML with its own CSS and images under `static/`; the
    validation and suite pages read fine without a network. GX's templates do load Bootstrap,
    jQuery, bootstrap-table, Font Awesome and Vega from public CDNs (and the logo from GX's
    S3 bucket); offline, pages lose that styling and the index's sortable table, which is
    filled by bootstrap-table, shows no rows, so open the result pages under `validations/`.
    """
    results = _load_results(results_dir)
    docs_dir = Path(docs_dir)
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    build_dir = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", dir=docs_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="gx-docs-") as project_root:
            context = _quiet_context(gx.get_context(mode="file", project_root_dir=project_root))
            for site in list(context.get_site_names()):
                context.delete_data_docs_site(site)
            context.add_data_docs_site(
                DOCS_SITE_NAME,
                {
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(build_dir),
                    },
                    "site_index_builder": {
                        "class_name": "DefaultSiteIndexBuilder",
                        "show_cta_footer": False,
                    },
                },
            )
            for result in results:
                context.suites.add_or_update(_suite_of(result))
                context.validation_results_store.set(_result_key(result), result)
            context.build_data_docs(site_names=[DOCS_SITE_NAME])
        replace_dir(build_dir, docs_dir)
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
    index = docs_dir / "index.html"
    log.info(
        "data docs: %d validation results rendered to %s in %.1f s",
        len(results),
        index,
        time.monotonic() - started,
    )
    return index
