"""The FBT lists on Spark against the local ones on the small synthetic retailer.

The upstream stages (baskets, rules) run once, locally; the lists step then runs on each
engine, each into a run of its own, and the lists, the gate's metrics and the summaries must
be equal (rows sorted, floats to 1e-9, the Arrow schemas).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fashion_recs import pipeline
from fashion_recs.contract import FBT_GATE_METRICS, FBT_RULES, PRODUCTS
from fashion_recs.fbt.gate import variants
from fashion_recs.pipeline import make_context
from tests.conftest import retailer_overrides
from tests.spark.test_parity import assert_same_artifact

AS_OF = date(2026, 11, 1)
LIST_KEYS = ["product_id", "rank"]
GATE_KEYS = ["metric"]


@pytest.fixture(scope="module")
def upstream(retailer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local run up to the rules, and its lists (the reference)."""
    overrides = retailer_overrides(retailer, tmp_path_factory.mktemp("spark_fbt_lists") / "data")
    ctx = make_context("local", AS_OF, None, overrides)
    dl = pipeline.download(ctx)
    products = pipeline.products(ctx, dl)
    interactions = pipeline.interactions(ctx, pipeline.events(ctx, dl, products))
    baskets = pipeline.baskets(ctx, interactions, products)
    rules = pipeline.fbt_rules(ctx, baskets)
    return {
        "overrides": overrides,
        "local": ctx,
        "products": products,
        "baskets": baskets,
        "rules": rules,
        "lists": pipeline.fbt_recommendations(ctx, rules, baskets, products),
    }


def _spark_run(run_id: str, overrides: dict[str, Any], local: Any) -> Any:
    """A run of its own with the step on Spark, holding the local catalogue and rules (the
    quality checks read them from the run)."""
    ctx = make_context(
        run_id, AS_OF, None, {**overrides, "engines": {"fbt_recommendations": "spark"}}
    )
    for artifact in (PRODUCTS, FBT_RULES):
        target = ctx.paths.path(artifact)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local.paths.path(artifact), target)
    return ctx


def _without(summary: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in keys}


def test_spark_fbt_lists_and_gate_equal_the_local_ones(
    spark: Any, upstream: dict[str, Any]
) -> None:
    local = upstream["lists"]
    ctx = _spark_run("spark", upstream["overrides"], upstream["local"])
    assert ctx.config.engine_for("fbt_recommendations") == "spark"
    got = pipeline.fbt_recommendations(
        ctx, upstream["rules"], upstream["baskets"], upstream["products"]
    )
    # The gate measured every variant (not the too-few-queries shortcut) and both engines
    # chose, scored and counted alike.
    assert local["gate"]["n_queries"] >= ctx.config.fbt.lists.gate_min_queries
    assert set(local["gate"]["hit_rates"]) == set(
        variants(pd.DataFrame(), pd.DataFrame(), ctx.config.fbt.lists)
    )
    assert local["entries_by_source"]["rules"] > 0
    assert_same_artifact(local["fbt_recommendations"], got["fbt_recommendations"], LIST_KEYS)
    assert_same_artifact(local["fbt_metrics_gate"], got["fbt_metrics_gate"], GATE_KEYS)
    ignore = ("fbt_recommendations", "fbt_metrics_gate")
    assert _without(got, *ignore) == _without(local, *ignore)
    # Rows in the local order (product, rank), and the checks pass on the dataset directory.
    lists = pd.read_parquet(got["fbt_recommendations"])
    assert list(zip(lists["product_id"], lists["rank"], strict=True)) == sorted(
        zip(lists["product_id"], lists["rank"], strict=True)
    )
    summary = pipeline.check(ctx, "fbt")
    assert all(check["success"] for check in summary["checks"]), summary
    assert ctx.paths.path(FBT_GATE_METRICS).is_dir()


def test_spark_held_out_baskets_are_the_local_draw(spark: Any, upstream: dict[str, Any]) -> None:
    from fashion_recs.spark.fbt_lists import basket_rows, variant_configs

    config = upstream["local"].config
    share = config.fbt.lists.gate_holdout_share
    rows = basket_rows(spark, Path(upstream["baskets"]["baskets"]), config.seed, share)
    held = rows.select("basket_id", "held").distinct().toPandas().sort_values("basket_id")
    expected = np.random.default_rng(config.seed).random(len(held)) < share
    assert held["held"].to_numpy().tolist() == expected.tolist()
    for lists in (
        config.fbt.lists,
        config.fbt.lists.model_copy(update={"exclude_same_department": False}),
    ):
        assert list(variant_configs(lists)) == list(variants(pd.DataFrame(), pd.DataFrame(), lists))


def test_spark_ungated_raw_confidence_lists_equal_the_local_ones(
    spark: Any, upstream: dict[str, Any]
) -> None:
    """Gate off, no shrinkage (the pads' tiny popularity scores), substitutes allowed."""
    from fashion_recs.spark.fbt_lists import lists_stage as spark_lists
    from fashion_recs.stages.fbt import lists_stage as local_lists

    overrides = {
        **upstream["overrides"],
        "fbt": {
            **upstream["overrides"]["fbt"],
            "lists": {"gate": False, "shrinkage": 0.0, "exclude_same_department": False},
        },
    }
    local_ctx = make_context("local_raw", AS_OF, None, overrides)
    spark_ctx = make_context("spark_raw", AS_OF, None, overrides)
    inputs = (
        Path(upstream["rules"]["fbt_rules"]),
        Path(upstream["baskets"]["baskets"]),
        Path(upstream["products"]["products"]),
    )
    expected = local_lists(local_ctx.config, local_ctx.paths, *inputs)
    got = spark_lists(spark, spark_ctx.config, spark_ctx.paths, *inputs)
    assert expected["gate"]["chosen"] == "configured"
    assert_same_artifact(expected["fbt_recommendations"], got["fbt_recommendations"], LIST_KEYS)
    assert_same_artifact(expected["fbt_metrics_gate"], got["fbt_metrics_gate"], GATE_KEYS)
    ignore = ("fbt_recommendations", "fbt_metrics_gate")
    assert _without(got, *ignore) == _without(expected, *ignore)
