"""The pipeline's steps as plain functions: what each Airflow task calls, and nothing more.

Each step takes the run context plus the small summaries of the steps it depends on (paths and
counts, the same dicts that travel through XCom), does its work through the stage modules,
and returns its own summary. The DAG only wires these together; tests and the CLI can run the
same steps without Airflow (`run_all`).
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, read_json, write_artifact, write_json
from fashion_recs.config import RetailerConfig, load_config
from fashion_recs.contract import (
    BASKETS,
    EVENT_PRODUCT_IDS,
    EVENTS,
    FBT_GATE_METRICS,
    FBT_METRICS,
    FBT_RECOMMENDATIONS,
    FBT_RULES,
    INTERACTION_LOG,
    INTERACTIONS,
    ITEM_CANDIDATES,
    METRICS,
    PERSONAL_GATE,
    POPULAR,
    PRICE_HISTORY,
    PRODUCTS,
    QUALITY_DIR,
    RUN_SUMMARY_FILE,
    SOURCES,
    SUMMARY_DIR,
    TASKS_DIR,
    USER_ITEMS,
    USER_RECOMMENDATIONS,
    USER_ROUTES,
    USERS,
    Artifact,
    quarantine,
    similar_metrics,
    similar_products,
)
from fashion_recs.memory import peak_rss_mib, reset_peak_rss
from fashion_recs.run_lock import RunOwner, claim_run_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Everything a step needs to know about the run it belongs to."""

    config: RetailerConfig
    paths: RunPaths
    as_of: date
    # Who runs it (`run_lock`): this process unless the DAG says which Airflow run.
    owner: RunOwner | None = None

    def save_summary(self, step: str, summary: dict[str, Any]) -> dict[str, Any]:
        """Keep each step's summary with the run (the report and publish read them back)."""
        write_json(summary, self.paths.file(SUMMARY_DIR, f"{step}.json"))
        return summary

    def summaries(self) -> dict[str, Any]:
        folder = self.paths.file(SUMMARY_DIR)
        return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))}


def make_context(
    run_id: str,
    logical_date: date,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    owner: RunOwner | None = None,
) -> RunContext:
    """Load the config for one run; as-of is the config's `as_of` or the run's logical date."""
    config = load_config(config_path, overrides)
    paths = RunPaths(config.data_root_path, config.retailer, run_id)
    return RunContext(config, paths, config.as_of or logical_date, owner)


def run_step(
    ctx: RunContext, task_id: str, step: str, *args: Any, try_number: int = 1
) -> dict[str, Any]:
    """Run one step as task `task_id` and keep a record of it with the run.

    The record (status, start, seconds, try, the step's row counts, the error if it failed)
    is `tasks/<task_id>.json`: the run report's stage table, which must also show the task
    that failed and how far the run got. A rerun of the task replaces its record.

    The step holds the run directory for the run's owner (`run_lock`): a step of another run
    with the same run id fails at once with `RunDirectoryBusy`, writing nothing there.
    """
    with claim_run_dir(ctx.paths.run_dir, ctx.paths.run_id, ctx.owner):
        return _run_recorded(ctx, task_id, step, *args, try_number=try_number)


def _run_recorded(
    ctx: RunContext, task_id: str, step: str, *args: Any, try_number: int
) -> dict[str, Any]:
    started = time.time()
    clock = time.perf_counter()
    reset_peak_rss()
    record: dict[str, Any] = {"task_id": task_id, "step": step, "try_number": try_number}
    try:
        result = getattr(sys.modules[__name__], step)(ctx, *args)
        record.update(status="success", counts=result.get("counts"))
        return result
    except Exception as exc:
        record.update(status="failed", error=_error_text(exc))
        raise
    finally:
        record.update(
            started=started,
            seconds=round(time.perf_counter() - clock, 3),
            peak_rss_mib=peak_rss_mib(),
        )
        write_json(record, ctx.paths.file(TASKS_DIR, f"{task_id}.json"))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def record_lost_task(
    ctx: RunContext, task_id: str, step: str, error: BaseException, started: float
) -> None:
    """The failed record of a task whose process ended before it could write its own."""
    record = {
        "task_id": task_id,
        "step": step,
        "try_number": 1,
        "status": "failed",
        "error": _error_text(error),
        "started": started,
        "seconds": round(time.time() - started, 3),
    }
    write_json(record, ctx.paths.file(TASKS_DIR, f"{task_id}.json"))


def download(ctx: RunContext) -> dict[str, Any]:
    from fashion_recs.stages.download import download_sources

    manifest = download_sources(ctx.config)
    path = write_artifact(ctx.paths, SOURCES, manifest)
    files = {row["source"]: row["local_path"] for row in manifest.to_dict("records")}
    return ctx.save_summary(
        "download",
        {
            "sources": str(path),
            "files": files,
            "bytes": int(manifest["size_bytes"].sum()),
            "fetched": int(manifest["fetched"].sum()),
        },
    )


def _numbered_files(download_summary: dict[str, Any], prefix: str) -> list[Path]:
    """The `<prefix>_<n>` sources of the manifest in their configured order."""
    files = download_summary["files"]
    names = sorted(
        (k for k in files if k.startswith(f"{prefix}_")), key=lambda k: int(k.rsplit("_", 1)[1])
    )
    return [Path(files[k]) for k in names]


def _is_hm(ctx: RunContext) -> bool:
    return ctx.config.sources.format == "hm"


def product_export(ctx: RunContext, download_summary: dict[str, Any]) -> Path:
    """The catalogue file of the run's source format (image paths resolve beside it)."""
    key = "articles" if _is_hm(ctx) else "product_data"
    return Path(download_summary["files"][key])


def products(ctx: RunContext, download_summary: dict[str, Any]) -> dict[str, Any]:
    source = product_export(ctx, download_summary)
    if _is_hm(ctx):
        from fashion_recs.stages.hm_source import build_products_hm

        transactions = _numbered_files(download_summary, "transactions")
        summary = build_products_hm(ctx.config, ctx.paths, source, transactions, ctx.as_of)
    else:
        from fashion_recs.stages.products import build_products

        summary = build_products(ctx.config, ctx.paths, source, ctx.as_of)
    return ctx.save_summary("products", summary)


def events(
    ctx: RunContext, download_summary: dict[str, Any], products_summary: dict[str, Any]
) -> dict[str, Any]:
    catalogue = pq.read_table(products_summary["products"], columns=["product_id"])
    ids = catalogue.column("product_id").to_pylist()
    if _is_hm(ctx):
        from fashion_recs.stages.hm_source import build_events_hm

        files = _numbered_files(download_summary, "transactions")
        summary = build_events_hm(ctx.config, ctx.paths, files, ids, ctx.as_of)
    else:
        # The app-log format only: the H&M transactions are read locally on either engine.
        files = _numbered_files(download_summary, "events")
        summary = _on_engine(ctx, "events", ctx.config, ctx.paths, files, ids, ctx.as_of)
    return ctx.save_summary("events", summary)


def demographics(ctx: RunContext, download_summary: dict[str, Any]) -> dict[str, Any]:
    if _is_hm(ctx):
        from fashion_recs.stages.hm_source import build_demographics_hm as build
    else:
        from fashion_recs.stages.demographics import build_demographics as build

    key = "customers" if _is_hm(ctx) else "user_answers"
    source = Path(download_summary["files"][key])
    return ctx.save_summary("demographics", build(ctx.config, ctx.paths, source, ctx.as_of))


def ingest_interaction_log(
    ctx: RunContext, url: str, products_summary: dict[str, Any]
) -> dict[str, Any]:
    """Take in the interaction_log rows (results database) up to the run's as-of time.

    Rows on products the catalogue does not know are quarantined (`interaction_log` stage),
    like the events stage's unknown ids; the rest become the INTERACTION_LOG artifact.
    """
    from datetime import timedelta

    from fashion_recs.clock import as_of_timestamp
    from fashion_recs.interaction_log import read_interaction_log
    from fashion_recs.publish import make_engine
    from fashion_recs.quality.quarantine import account_rows

    until = as_of_timestamp(ctx.as_of)
    since = until - timedelta(days=ctx.config.events.max_days_before_as_of)
    engine = make_engine(url)
    try:
        table = read_interaction_log(engine, since, until).to_pandas()
    finally:
        engine.dispose()
    catalogue = set(
        pq.read_table(products_summary["products"], columns=["product_id"])[0].to_pylist()
    )
    known = table["product_id"].isin(catalogue).to_numpy()
    rejected = table[~known].astype(str).assign(reason="unknown_product_id", column="product_id")
    path = write_artifact(ctx.paths, INTERACTION_LOG, table[known].reset_index(drop=True))
    counts = account_rows(
        "interaction_log",
        [rejected],
        ctx.paths.path(quarantine("interaction_log")),
        rows_in=len(table),
        rows_out=int(known.sum()),
    )
    log.info(
        "interaction log: %d rows up to %s, %d on unknown products",
        len(table),
        until,
        (~known).sum(),
    )
    return ctx.save_summary(
        "interaction_log",
        {
            "interaction_log": str(path),
            "counts": counts.as_dict(),
            "users": int(table["user_id"].nunique()),
        },
    )


def interactions(
    ctx: RunContext, events_summary: dict[str, Any], log_summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    logged = Path(log_summary["interaction_log"]) if log_summary else None
    summary = _on_engine(
        ctx,
        "interactions",
        ctx.config,
        ctx.paths,
        Path(events_summary["events"]),
        ctx.as_of,
        logged,
    )
    return ctx.save_summary("interactions", summary)


# The stages with a Spark implementation: (module, function) of each engine's entry point.
# Both take the same arguments and return the same summary; the spark one takes the session
# first.
ENGINE_STAGES: dict[str, dict[str, tuple[str, str]]] = {
    "events": {
        "local": ("fashion_recs.stages.events", "build_events"),
        "spark": ("fashion_recs.spark.events", "build_events"),
    },
    "interactions": {
        "local": ("fashion_recs.stages.interactions", "build_interactions"),
        "spark": ("fashion_recs.spark.interactions", "build_interactions"),
    },
    "popular": {
        "local": ("fashion_recs.stages.popular", "build_popular"),
        "spark": ("fashion_recs.spark.popular", "build_popular"),
    },
    "baskets": {
        "local": ("fashion_recs.stages.fbt", "baskets_stage"),
        "spark": ("fashion_recs.spark.baskets", "baskets_stage"),
    },
    "fbt_rules": {
        "local": ("fashion_recs.stages.fbt", "rules_stage"),
        "spark": ("fashion_recs.spark.fbt_rules", "rules_stage"),
    },
    "fbt_recommendations": {
        "local": ("fashion_recs.stages.fbt", "lists_stage"),
        "spark": ("fashion_recs.spark.fbt_lists", "lists_stage"),
    },
}


def _on_engine(ctx: RunContext, stage: str, *args: Any) -> dict[str, Any]:
    """Run `stage` on the engine the config chooses for it (`engine_for`). On spark it gets
    the task's SparkSession: the process's active one, or one built from `spark:` in the
    config and stopped when the stage ends."""
    engine = ctx.config.engine_for(stage)
    module, name = ENGINE_STAGES[stage][engine]
    build = getattr(importlib.import_module(module), name)
    if engine == "local":
        return build(*args)
    with _spark(ctx, stage) as spark:
        return build(spark, *args)


@contextmanager
def _spark(ctx: RunContext, what: str) -> Iterator[Any]:
    """The task's SparkSession for `what`, logged: the process's active one, or one built
    from `spark:` in the config and stopped when the block ends."""
    from fashion_recs.spark.session import spark_session

    log.info("%s: engine spark (master %s)", what, ctx.config.spark.master)
    with spark_session(ctx.config.spark) as spark:
        yield spark


def popular(
    ctx: RunContext, interactions_summary: dict[str, Any], demographics_summary: dict[str, Any]
) -> dict[str, Any]:
    summary = _on_engine(
        ctx,
        "popular",
        ctx.config,
        ctx.paths,
        Path(interactions_summary["interactions"]),
        Path(demographics_summary["users"]),
        ctx.as_of,
    )
    return ctx.save_summary("popular", summary)


def evaluate(
    ctx: RunContext,
    interactions_summary: dict[str, Any],
    demographics_summary: dict[str, Any],
    products_summary: dict[str, Any],
) -> dict[str, Any]:
    from fashion_recs.sort_keys import sorted_categories
    from fashion_recs.stages.baselines import evaluate_baselines

    # Only what the baselines read: the split carries every column it is given. One chunk
    # per column: the split's row selections take from Arrow strings, which is several times
    # slower across the file's row groups (3.0 s against 1.2 s at 15M). Products come as a
    # categorical with sorted categories (the file's dictionary, not 15M strings), which the
    # rankings group and break ties on as they would on the ids (8.4 s to 6.1 s at 10x).
    interactions = (
        pq.read_table(
            interactions_summary["interactions"],
            columns=["user_id", "product_id", "event_ts", "weight"],
            read_dictionary=["product_id"],
        )
        .combine_chunks()
        .to_pandas()
    )
    interactions["product_id"] = sorted_categories(interactions["product_id"])
    metrics = evaluate_baselines(
        ctx.config,
        interactions,
        pd.read_parquet(demographics_summary["users"], columns=["user_id", "age_group", "region"]),
        n_products=products_summary["counts"]["rows_out"],
    )
    path = write_artifact(ctx.paths, METRICS, metrics)
    table = {
        f"{r.model}/{r.metric}@{r.k}" if pd.notna(r.k) else f"{r.model}/{r.metric}": round(
            float(r.value), 5
        )
        for r in metrics.itertuples()
    }
    log.info("evaluation: %s", table)
    return ctx.save_summary("evaluate", {"metrics": str(path), "values": table})


# --- frequently bought together -------------------------------------------------------------


def baskets(
    ctx: RunContext, interactions_summary: dict[str, Any], products_summary: dict[str, Any]
) -> dict[str, Any]:
    summary = _on_engine(
        ctx,
        "baskets",
        ctx.config,
        ctx.paths,
        Path(interactions_summary["interactions"]),
        Path(products_summary["products"]),
    )
    return ctx.save_summary("baskets", summary)


def fbt_rules(ctx: RunContext, baskets_summary: dict[str, Any]) -> dict[str, Any]:
    summary = _on_engine(ctx, "fbt_rules", ctx.config, ctx.paths, Path(baskets_summary["baskets"]))
    return ctx.save_summary("fbt_rules", summary)


def fbt_crosscheck(ctx: RunContext, baskets_summary: dict[str, Any]) -> dict[str, Any]:
    from fashion_recs.stages.fbt import crosscheck_stage

    return ctx.save_summary(
        "fbt_crosscheck", crosscheck_stage(ctx.config, ctx.paths, Path(baskets_summary["baskets"]))
    )


def _fbt_from_rules(
    ctx: RunContext,
    step: str,
    rules_summary: dict[str, Any],
    baskets_summary: dict[str, Any],
    products_summary: dict[str, Any],
) -> dict[str, Any]:
    """Run an FBT stage that reads the rules, the baskets and the catalogue."""
    from fashion_recs.stages import fbt

    stage = {"fbt_evaluate": fbt.evaluate_stage}[step]
    summary = stage(
        ctx.config,
        ctx.paths,
        Path(rules_summary["fbt_rules"]),
        Path(baskets_summary["baskets"]),
        Path(products_summary["products"]),
    )
    return ctx.save_summary(step, summary)


def fbt_recommendations(
    ctx: RunContext, rules: dict[str, Any], baskets: dict[str, Any], products: dict[str, Any]
) -> dict[str, Any]:
    summary = _on_engine(
        ctx,
        "fbt_recommendations",
        ctx.config,
        ctx.paths,
        Path(rules["fbt_rules"]),
        Path(baskets["baskets"]),
        Path(products["products"]),
    )
    return ctx.save_summary("fbt_recommendations", summary)


def fbt_evaluate(
    ctx: RunContext, rules: dict[str, Any], baskets: dict[str, Any], products: dict[str, Any]
) -> dict[str, Any]:
    return _fbt_from_rules(ctx, "fbt_evaluate", rules, baskets, products)


# --- similar products --------------------------------------------------------------------------


def similar_text(
    ctx: RunContext,
    products_summary: dict[str, Any],
    interactions_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The TF-IDF + one-hot look-alikes; the run's interactions (similar-item clicks) teach
    the attribute blocks' weights when there are enough of them."""
    from fashion_recs.stages.similar import text_model_stage

    interactions = Path(interactions_summary["interactions"]) if interactions_summary else None
    summary = text_model_stage(
        ctx.config, ctx.paths, Path(products_summary["products"]), interactions
    )
    return ctx.save_summary("similar_text", summary)


def similar_encoders(
    ctx: RunContext, download_summary: dict[str, Any], products_summary: dict[str, Any]
) -> dict[str, Any]:
    """Encoder and fused models; image paths resolve against the product export's folder."""
    from fashion_recs.stages.embeddings import encoders_stage

    base_dir = product_export(ctx, download_summary).parent
    summary = encoders_stage(ctx.config, ctx.paths, Path(products_summary["products"]), base_dir)
    return ctx.save_summary("similar_encoders", summary)


def _similar_models(ctx: RunContext) -> list[str]:
    """The similar-product models this run built (their summaries name them)."""
    models: list[str] = []
    for name, s in ctx.summaries().items():
        if name.startswith("similar_") and isinstance(s, dict):
            models += [s["model"]] if "model" in s else list(s.get("models", []))
    return sorted(models)


# --- personalisation ---------------------------------------------------------------------------

PERSONAL_MODEL_STEPS = (
    "personal_baselines",
    "user_cf",
    "embedding_profiles",
    "two_tower",
    "ranker",
    # MLlib ALS: runs only on the spark engine (a skipped summary on local), before the blend
    # and the gate, which read every model's metrics.
    "als",
    "blend",
)
# The steps that fit item-kNN, whose neighbours the `item_knn` engine finds.
ITEM_KNN_STEPS = ("personal_baselines", "ranker")


def personal_model(
    ctx: RunContext, step: str, interactions_summary: dict[str, Any]
) -> dict[str, Any]:
    """One personalisation model step: fit on the split and on everything, list, score."""
    from fashion_recs.stages import personal, ranking

    stages = {
        "personal_baselines": personal.baselines_stage,
        "user_cf": personal.user_cf_stage,
        "embedding_profiles": personal.profiles_stage,
        "two_tower": personal.two_tower_stage,
        "ranker": ranking.ranker_stage,
        "blend": personal.blend_stage,
    }
    if step == "two_tower" and not ctx.config.personal.two_tower.enabled:
        return ctx.save_summary(step, {"skipped": "personal.two_tower.enabled is false"})
    if step == "ranker" and not ctx.config.personal.ranker.enabled:
        return ctx.save_summary(step, {"skipped": "personal.ranker.enabled is false"})
    if step == "als":
        if ctx.config.engine_for("als") != "spark":
            return ctx.save_summary(step, {"skipped": "MLlib ALS runs on the spark engine only"})
        if not ctx.config.personal.als.enabled:
            return ctx.save_summary(step, {"skipped": "personal.als.enabled is false"})
    inputs = personal.load_inputs(
        ctx.config, ctx.paths, Path(interactions_summary["interactions"]), ctx.as_of
    )
    if step == "als":
        from fashion_recs.spark.als import als_stage

        with _spark(ctx, "als") as spark:
            return ctx.save_summary(step, als_stage(spark, ctx.config, inputs, ctx.paths))
    if step in ITEM_KNN_STEPS and ctx.config.engine_for("item_knn") == "spark":
        from fashion_recs.spark.item_knn import SparkItemNeighbours

        with _spark(ctx, f"{step} (item-kNN)") as spark:
            summary = stages[step](ctx.config, inputs, ctx.paths, SparkItemNeighbours(spark))
        return ctx.save_summary(step, summary)
    return ctx.save_summary(step, stages[step](ctx.config, inputs, ctx.paths))


def quality_gate(ctx: RunContext) -> dict[str, Any]:
    from fashion_recs.stages.personal import gate_stage

    return ctx.save_summary("quality_gate", gate_stage(ctx.config, ctx.paths))


def route_users(
    ctx: RunContext, interactions_summary: dict[str, Any], gate_summary: dict[str, Any]
) -> dict[str, Any]:
    from fashion_recs.stages.personal import routing_stage

    summary = routing_stage(
        ctx.config,
        ctx.paths,
        Path(interactions_summary["interactions"]),
        gate_summary,
        ctx.paths.path(FBT_RECOMMENDATIONS),
    )
    return ctx.save_summary("route_users", summary)


# --- quality checks ---------------------------------------------------------------------------

CHECKED = {
    "products": [PRODUCTS, PRICE_HISTORY],
    "events": [EVENTS, EVENT_PRODUCT_IDS],
    "users": [USERS],
    "interactions": [INTERACTIONS, USER_ITEMS],
    "popular": [POPULAR],
    "baskets": [BASKETS],
    "fbt": [FBT_RULES, FBT_RECOMMENDATIONS],
    "personal": [USER_RECOMMENDATIONS, USER_ROUTES, ITEM_CANDIDATES],
}


def _checked(ctx: RunContext, group: str) -> list[Artifact]:
    if group == "similar":
        return [similar_products(model) for model in _similar_models(ctx)]
    return CHECKED[group]


def check(
    ctx: RunContext, group: str, upstream_rows: dict[str, int] | None = None
) -> dict[str, Any]:
    """Validate the artifacts of one stage with their Great Expectations suites.

    `upstream_rows` caps an artifact's row count by its upstream artifact's (a relation
    between stages: a stage may shrink its input, never grow it).
    """
    from fashion_recs.quality.checks import CheckContext, run_check
    from fashion_recs.quality.sample import read_for_check

    ids = pq.read_table(ctx.paths.path(PRODUCTS), columns=["product_id"]).column(0).to_pylist()
    results = []
    for artifact in _checked(ctx, group):
        context = CheckContext.from_config(
            ctx.config,
            catalogue_ids=ids,
            upstream_rows=(upstream_rows or {}).get(artifact.name),
        )
        read = read_for_check(
            ctx.paths.path(artifact), ctx.config.quality.check_max_rows, ctx.config.seed
        )
        results.append(
            run_check(
                artifact.name,
                read.frame,
                context,
                ctx.paths.file(QUALITY_DIR),
                run_name=ctx.paths.run_id,
                rows_total=read.rows_total,
            )
        )
    return ctx.save_summary(f"check_{group}", {"checks": results})


def quality_report(ctx: RunContext) -> dict[str, Any]:
    """Render every check the run got to as Great Expectations Data Docs.

    Runs even after a failure upstream (that is when the report matters most); when no check
    ran at all, there is nothing to render and the step says so instead of failing again.
    """
    from fashion_recs.quality.checks import build_data_docs

    results = ctx.paths.file(QUALITY_DIR)
    if not any(results.glob("*.json")):
        log.warning("quality report: no check ran in this run; nothing to render")
        return ctx.save_summary("quality_report", {"data_docs": None, "checks": 0})
    index = build_data_docs(results, ctx.paths.file("data_docs"))
    n_checks = len(list(results.glob("*.json")))
    return ctx.save_summary("quality_report", {"data_docs": str(index), "checks": n_checks})


# --- publishing -------------------------------------------------------------------------------


def publish(ctx: RunContext, url: str) -> dict[str, Any]:
    """Publish the run's reader-facing tables and record the run and its metrics."""
    from fashion_recs.publish import TableSpec, make_engine, publish_run
    from fashion_recs.stages.personal import personal_metric_artifacts

    users = pq.read_table(
        ctx.paths.path(USERS),
        columns=["user_id", "age_group", "region", "age_source", "location_source"],
    )
    tables = [
        TableSpec("products", pq.read_table(ctx.paths.path(PRODUCTS)), ("product_id",)),
        TableSpec("popular_products", pq.read_table(ctx.paths.path(POPULAR)), ("segment_type",)),
        TableSpec("user_segments", users, ("user_id",)),
        TableSpec("fbt_rules", pq.read_table(ctx.paths.path(FBT_RULES)), ("antecedent",)),
        TableSpec(
            "fbt_recommendations",
            pq.read_table(ctx.paths.path(FBT_RECOMMENDATIONS)),
            ("product_id",),
        ),
    ]
    tables += [
        TableSpec(
            "user_recommendations",
            pq.read_table(ctx.paths.path(USER_RECOMMENDATIONS)),
            ("user_id",),
        ),
        TableSpec("user_routes", pq.read_table(ctx.paths.path(USER_ROUTES)), ("user_id",)),
        TableSpec(
            "item_candidates", pq.read_table(ctx.paths.path(ITEM_CANDIDATES)), ("product_id",)
        ),
        TableSpec("personal_models", pq.read_table(ctx.paths.path(PERSONAL_GATE)), ("model",)),
    ]
    summaries = ctx.summaries()
    gate = summaries.get("quality_gate", {})
    run_summary = {
        "run_id": ctx.paths.run_id,
        "retailer": ctx.config.retailer,
        "as_of": ctx.as_of.isoformat(),
        "artifacts": str(ctx.paths.run_dir),
        "data_docs": summaries.get("quality_report", {}).get("data_docs"),
        "similar_models": _similar_models(ctx),
        "similar_skipped": summaries.get("similar_encoders", {}).get("skipped", {}),
        "personal": {
            "existing_users_model": gate.get("served") or gate.get("chosen"),
            "fallback": gate.get("fallback"),
            "best_baseline": gate.get("baseline"),
            "passed_gate": gate.get("passed", []),
            "failed_gate": gate.get("failed", []),
            "routes": summaries.get("route_users", {}).get("routes", {}),
        },
        "stages": {
            name: s["counts"]
            for name, s in summaries.items()
            if isinstance(s, dict) and "counts" in s
        },
    }
    models = _similar_models(ctx)
    if models:
        similar = pa.concat_tables(
            [pq.read_table(ctx.paths.path(similar_products(m))) for m in models]
        )
        tables.append(TableSpec("similar_products", similar, ("product_id", "model")))
    metrics = [
        row
        for artifact in (
            METRICS,
            FBT_METRICS,
            FBT_GATE_METRICS,
            *(similar_metrics(m) for m in models),
            *personal_metric_artifacts(ctx.paths),
        )
        for row in pq.read_table(ctx.paths.path(artifact)).to_pylist()
    ]
    cfg = ctx.config.publish
    engine = make_engine(
        url, connect_timeout_s=cfg.connect_timeout_s, statement_timeout_s=cfg.statement_timeout_s
    )
    try:
        record = publish_run(
            engine,
            run_id=ctx.paths.run_id,
            retailer=ctx.config.retailer,
            tables=tables,
            summary=run_summary,
            metrics=metrics,
            keep_runs=cfg.keep_runs,
            lock_timeout_s=cfg.lock_timeout_s,
        )
    finally:
        engine.dispose()
    result = {**run_summary, "publish": record, "database": _redact(url)}
    write_json(result, ctx.paths.file(RUN_SUMMARY_FILE))
    return ctx.save_summary("publish", result)


def run_report(ctx: RunContext, task_ids: list[str] | None = None) -> dict[str, Any]:
    """Write the run report, whatever the run got to, then fail if the run did not publish.

    The last task of the DAG: it runs after failures too (that is when the page matters most),
    and failing here when nothing was published keeps the run's own state honest.
    """
    from fashion_recs.errors import RunNotPublished
    from fashion_recs.report import write_run_report

    download = ctx.paths.file(SUMMARY_DIR, "download.json")
    base_dir = product_export(ctx, read_json(download)).parent if download.is_file() else None
    # The run's last task: its owner's claim on the run directory ends here.
    with claim_run_dir(ctx.paths.run_dir, ctx.paths.run_id, ctx.owner, finishes=True):
        result = write_run_report(ctx.config, ctx.paths, task_ids, base_dir)
        summary = ctx.save_summary("run_report", result.summary())
    if not result.published:
        failed = ", ".join(result.failed_tasks) or "none recorded"
        raise RunNotPublished(
            f"run {ctx.paths.run_id} did not publish (failed tasks: {failed}; "
            f"{len(result.not_run_tasks)} did not run). The run report says what ran, what "
            f"was quarantined and which checks failed: {result.path}"
        )
    return summary


def _redact(url: str) -> str:
    """The database URL without its password, for logs and summaries."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run_all(ctx: RunContext, url: str, *, task_processes: bool = True) -> dict[str, Any]:
    """Every step in dependency order, without Airflow (CLI and fast tests), under the DAG's
    task ids, ending with the run report. The run directory is held for the whole run, so
    another run with the same run id fails at once, not between two steps.

    Each task runs in a process of its own (`task_processes`), as under Airflow, so the run
    needs the memory of its largest task; `task_processes=False` runs them all here (a
    debugger, a profiler)."""
    from fashion_recs.run_lock import process_owner
    from fashion_recs.task_processes import TaskProcesses, in_process

    # The task processes hold the directory for this process's run, not each for itself.
    ctx = replace(ctx, owner=ctx.owner or process_owner())
    with claim_run_dir(ctx.paths.run_dir, ctx.paths.run_id, ctx.owner):
        if not task_processes:
            return _run_all(ctx, url, in_process)
        with TaskProcesses() as runner:
            return _run_all(ctx, url, runner)


def _run_all(ctx: RunContext, url: str, runner: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    def step(task_id: str, name: str, *args: Any) -> dict[str, Any]:
        return runner(ctx, task_id, name, *args)

    dl = step("download_files", "download")
    prod = step("clean_products", "products", dl)
    step("check_products", "check", "products", {"products": prod["counts"]["rows_in"]})
    ev = step("filter_events", "events", dl, prod)
    step("check_events", "check", "events")
    demo = step("preprocess_demographics", "demographics", dl)
    step("check_users", "check", "users")
    logged = step("ingest_interaction_log", "ingest_interaction_log", url, prod)
    inter = step("map_interactions", "interactions", ev, logged)
    rows = inter["counts"]["rows_in"]
    step("check_interactions", "check", "interactions", {"interactions": rows, "user_items": rows})
    step("popular_items", "popular", inter, demo)
    step("check_popular", "check", "popular")
    step("evaluate_baselines", "evaluate", inter, demo, prod)
    bask = step("build_baskets", "baskets", inter, prod)
    step("check_baskets", "check", "baskets", {"baskets": bask["stats"]["rows_in"]})
    rules = step("mine_fbt_rules", "fbt_rules", bask)
    step("crosscheck_apriori_fpgrowth", "fbt_crosscheck", bask)
    step("fbt_recommendations", "fbt_recommendations", rules, bask, prod)
    step("check_fbt", "check", "fbt")
    step("evaluate_fbt", "fbt_evaluate", rules, bask, prod)
    step("similar_products_text", "similar_text", prod, inter)
    step("similar_products_encoders", "similar_encoders", dl, prod)
    step("check_similar", "check", "similar")
    for name in PERSONAL_MODEL_STEPS:
        step(name, "personal_model", name, inter)
    gate = step("quality_gate", "quality_gate")
    step("route_users", "route_users", inter, gate)
    step("check_personal", "check", "personal")
    step("build_data_docs", "quality_report")
    published = step("publish_tables", "publish", url)
    run_report(ctx)
    return published
