"""The run report: one self-contained HTML page per run, kept in the run directory.

It is written by the DAG's last task whatever happened upstream, because a failed run is when
the page matters most: which task failed with what error, how many rows each stage took in,
kept and quarantined (and why, with samples), which quality checks failed, and, for the
models that ran, their evaluation against the baselines and examples to look at. The page
needs no network: charts and thumbnails are embedded, and the only links are to the run's own
Data Docs beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from fashion_recs.artifacts import RunPaths, atomic_path, write_artifact
from fashion_recs.config import RetailerConfig
from fashion_recs.contract import (
    FBT_CROSSCHECK,
    FBT_RULES,
    INTERACTIONS,
    PERSONAL_GATE,
    POPULAR,
    PRODUCTS,
    RANKER_IMPORTANCE,
    REPORT_FILE,
    RUN_SUMMARY_FILE,
    RUN_TASKS,
    USER_RECOMMENDATIONS,
    USER_ROUTES,
)
from fashion_recs.report import collect, examples, plots

log = logging.getLogger(__name__)

PERSONAL_BASELINES = {
    "popularity",
    "popularity_unseen",
    "segment_popularity",
    "repurchase",
    "item_knn",
}
# Single candidate sources, scored beside the ranker: shown in the ranker's table, not the chart.
SOURCE_PREFIX = "source_"
RANKING_METRICS = ["precision", "recall", "map", "ndcg", "hit_rate"]
SECTIONS = ("outcome", "tasks", "quarantine", "checks", "models", "fbt", "similar", "users")


@dataclass(frozen=True)
class ReportResult:
    path: Path
    published: bool
    failed_tasks: list[str]
    not_run_tasks: list[str]
    sections: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "report": str(self.path),
            "published": self.published,
            "failed_tasks": self.failed_tasks,
            "not_run_tasks": self.not_run_tasks,
            "sections": self.sections,
        }


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("fashion_recs.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 3) -> str:
    """Numbers as people read them: thousands separators, a few decimals, blanks for NaN."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and float(value).is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cells(frame: pd.DataFrame, width: int = 80) -> list[list[str]]:
    """A sample frame as short strings (quarantined rows can hold very long raw values)."""

    def short(value: Any) -> str:
        missing = value is None or (pd.api.types.is_scalar(value) and pd.isna(value))
        text = "" if missing else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    return [[short(v) for v in row] for row in frame.itertuples(index=False)]


def _read(
    paths: RunPaths,
    artifact: Any,
    columns: list[str] | None = None,
    filters: list[tuple] | None = None,
) -> pd.DataFrame | None:
    return collect.read_optional(paths.path(artifact), columns, filters)


def _is_share(metric: str) -> bool:
    """Quality shares in [0, 1] belong on the similar-products chart; the learned block
    weights and signal pair counts (weight_*, weights_*) stay in the metrics tables."""
    return not metric.startswith("weight")


def _models_section(paths: RunPaths, metrics: pd.DataFrame) -> dict[str, Any]:
    gate = _read(paths, PERSONAL_GATE)
    personal = metrics[metrics["family"] == "personal"]
    sources = personal[personal["model"].str.startswith(SOURCE_PREFIX)]
    personal = personal[~personal["model"].str.startswith(SOURCE_PREFIX)]
    baselines = metrics[metrics["family"] == "baselines"]
    personal_all = pd.concat([personal, baselines], ignore_index=True)
    chosen = None
    reference = None
    if gate is not None and not gate.empty:
        picked = gate[gate["chosen"]]
        chosen = str(picked["model"].iloc[0]) if len(picked) else None
        metric = str(gate["metric"].iloc[0])
        bar = float(gate["required_value"].iloc[0])
        best = float(gate["baseline_value"].iloc[0])
        reference = (
            f"gate bar: {gate['baseline'].iloc[0]} × {bar / best:.2f}" if best else "gate bar",
            bar,
        )
    else:
        metric = "map"
    importance = _read(paths, RANKER_IMPORTANCE)
    similar = metrics[metrics["family"] == "similar"]
    return {
        "personal_chart": plots.model_comparison(
            personal_all,
            metric,
            "Personal recommendations on the hold-out",
            PERSONAL_BASELINES,
            reference,
            chosen,
        ),
        "personal_grouped": plots.grouped_metrics(
            personal_all, RANKING_METRICS, "Ranking metrics per model"
        ),
        "gate": gate,
        "ranker_importance": importance.head(20) if importance is not None else None,
        "ranker_sources": sources[sources["metric"] == metric]
        .assign(source=lambda f: f["model"].str.removeprefix(SOURCE_PREFIX))
        .sort_values("value", ascending=False),
        "fbt_chart": plots.grouped_metrics(
            metrics[metrics["model"].isin(["fbt", "fbt_popularity"])],
            RANKING_METRICS,
            "Basket completion: FBT lists vs popularity",
        ),
        "fbt_metrics": metrics[metrics["family"] == "fbt"],
        "similar_chart": plots.grouped_metrics(
            similar,
            sorted(m for m in similar["metric"].unique() if _is_share(m)),
            "Similar products: quality per model",
        )
        if not similar.empty
        else None,
        "similar_metrics": similar,
    }


def _similar_examples(
    paths: RunPaths, config: RetailerConfig, products: pd.DataFrame, cards: examples.Thumbnails
) -> list[dict[str, Any]]:
    files = sorted(paths.file("06_models").glob("similar_products_*.parquet"))
    if not files:
        return []
    shown = examples.showcase_products(
        _read(paths, POPULAR), products, config.report.similar_products
    )
    # Only the shown products' rows: every model's lists cover the whole catalogue.
    similar = pd.concat(
        [collect.read_optional(f, filters=[("product_id", "in", shown)]) for f in files],
        ignore_index=True,
    )
    groups = []
    for product_id in shown:
        rows = similar[similar["product_id"] == product_id]
        models = []
        for model, part in sorted(
            rows.groupby("model"), key=lambda kv: (not bool(kv[1]["is_default"].any()), kv[0])
        ):
            top = part.sort_values("rank").head(config.report.similar_k)
            models.append(
                {
                    "model": model,
                    "items": list(
                        zip(cards.cards(list(top["similar_product_id"])), top["score"], strict=True)
                    ),
                }
            )
        groups.append({"product": cards.card(product_id), "models": models})
    return groups


def _user_examples(
    paths: RunPaths, config: RetailerConfig, cards: examples.Thumbnails
) -> list[dict[str, Any]]:
    routes = _read(paths, USER_ROUTES)
    chosen = examples.showcase_users(routes, config.report.users_per_route)
    if not chosen:
        return []
    # Routes exist only after route_users, which read the interactions and wrote the lists.
    only_them = [("user_id", "in", [u for u, _ in chosen])]
    columns = ["user_id", "product_id", "event_ts", "category"]
    history = _read(paths, INTERACTIONS, columns, only_them)
    recs = _read(paths, USER_RECOMMENDATIONS, filters=only_them)
    route_of = routes.set_index("user_id")
    shown = []
    for user_id, route in chosen:
        past = examples.user_history(history, user_id, config.report.history_items)
        mine = recs[recs["user_id"] == user_id].sort_values("rank")
        mine = mine.head(config.report.recommended_items)
        shown.append(
            {
                "user_id": user_id,
                "route": route,
                "strategy": route_of.loc[user_id, "strategy"],
                "segment": " / ".join(
                    str(route_of.loc[user_id, c])
                    for c in ("age_group", "region")
                    if pd.notna(route_of.loc[user_id, c])
                ),
                "history": [
                    (cards.card(r.product_id), r.category, pd.Timestamp(r.event_ts))
                    for r in past.itertuples()
                ],
                "recommendations": [
                    (cards.card(r.product_id), r.score, r.strategy) for r in mine.itertuples()
                ],
            }
        )
    return shown


def build_report(
    config: RetailerConfig,
    paths: RunPaths,
    expected_tasks: list[str] | None = None,
    image_base_dir: Path | None = None,
) -> tuple[str, pd.DataFrame, ReportResult]:
    """The report's HTML, its task table and what it found; nothing is written."""
    tasks = collect.task_table(paths, expected_tasks)
    summary_file = paths.file(RUN_SUMMARY_FILE)
    run_summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    failed = list(tasks.loc[tasks["status"] == "failed", "task_id"])
    not_run = list(tasks.loc[tasks["status"] == "not run", "task_id"])
    published = bool(run_summary) and "publish_tables" not in failed

    products = _read(paths, PRODUCTS, ["product_id", "title", "department", "images"])
    cards = examples.Thumbnails(
        products if products is not None else pd.DataFrame(columns=["product_id"]),
        image_base_dir,
        config.data_path(config.similar.images.cache_dir),
        size=config.report.thumbnail_px,
        timeout=config.similar.images.timeout_s,
    )
    metrics = collect.metric_tables(paths)
    rules = _read(paths, FBT_RULES)
    top = (
        examples.top_rules(rules, config.report.top_rules, config.fbt.lists.rank_by)
        if (rules is not None)
        else None
    )
    rule_rows = []
    if top is not None:
        for r in top.itertuples():
            rule_rows.append(
                {
                    "antecedent": cards.cards(r.antecedent.split(",")),
                    "consequent": cards.cards(r.consequent.split(",")),
                    "support": r.support,
                    "confidence": r.confidence,
                    "lift": r.lift,
                    "n_both": r.n_both,
                }
            )
    context = {
        "retailer": config.retailer,
        "run_id": paths.run_id,
        "as_of": run_summary.get("as_of"),
        "published": published,
        "run_summary": run_summary,
        "failed": failed,
        "not_run": not_run,
        "tasks": tasks,
        "task_chart": plots.task_durations(tasks),
        "quarantine": collect.quarantine_files(paths, config.report.quarantine_samples),
        "checks": collect.check_results(paths),
        "has_data_docs": paths.file("data_docs", "index.html").is_file(),
        "models": _models_section(paths, metrics),
        "crosscheck": _read(paths, FBT_CROSSCHECK),
        "rules": rule_rows,
        "n_rules": 0 if rules is None else len(rules),
        "rank_by": config.fbt.lists.rank_by,
        "similar": _similar_examples(paths, config, products, cards)
        if products is not None
        else [],
        "users": _user_examples(paths, config, cards),
        "cells": _cells,
    }
    html = _environment().get_template("report.html.j2").render(**context)
    result = ReportResult(paths.file(REPORT_FILE), published, failed, not_run, list(SECTIONS))
    return html, tasks, result


def write_run_report(
    config: RetailerConfig,
    paths: RunPaths,
    expected_tasks: list[str] | None = None,
    image_base_dir: Path | None = None,
) -> ReportResult:
    """Write `report.html` and the task table (`08_reporting/run_tasks.parquet`) atomically."""
    html, tasks, result = build_report(config, paths, expected_tasks, image_base_dir)
    write_artifact(paths, RUN_TASKS, tasks)
    with atomic_path(result.path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info(
        "run report: %s (%d tasks, %d failed, %d not run)",
        result.path,
        len(tasks),
        len(result.failed_tasks),
        len(result.not_run_tasks),
    )
    return result
