"""The spark engine against the local one on the small synthetic retailer.

Upstream stages run once, locally; then popular_items, build_baskets and mine_fbt_rules run
on each engine through the pipeline's steps, each into a run of its own, and the artifacts
(rows sorted, floats to 1e-9, Arrow schema) and summaries must be equal.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fashion_recs import pipeline
from fashion_recs.contract import POPULAR, PRODUCTS
from fashion_recs.pipeline import RunContext, make_context
from tests.conftest import retailer_overrides

AS_OF = date(2026, 11, 1)
# Low enough that the small retailer has frequent itemsets of three items (FPGrowth's part).
MINING = {"min_support": 0.001, "min_count": 4, "min_lift": 3.0, "max_len": 3}


@pytest.fixture(scope="module")
def upstream(retailer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local run's inputs to the compared stages: interactions, users, products."""
    overrides = retailer_overrides(retailer, tmp_path_factory.mktemp("spark_parity") / "data")
    overrides["fbt"] = {"mining": MINING}
    ctx = make_context("local", AS_OF, None, overrides)
    dl = pipeline.download(ctx)
    products = pipeline.products(ctx, dl)
    events = pipeline.events(ctx, dl, products)
    return {
        "overrides": overrides,
        "local": ctx,
        "products": products,
        "users": pipeline.demographics(ctx, dl),
        "interactions": pipeline.interactions(ctx, events),
    }


def _run_stages(ctx: RunContext, up: dict[str, Any]) -> dict[str, dict[str, Any]]:
    popular = pipeline.popular(ctx, up["interactions"], up["users"])
    baskets = pipeline.baskets(ctx, up["interactions"], up["products"])
    return {"popular": popular, "baskets": baskets, "fbt_rules": pipeline.fbt_rules(ctx, baskets)}


@pytest.fixture(scope="module")
def runs(spark: Any, upstream: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each engine's summaries of the three stages (spark's in a run of its own)."""
    spark_ctx = make_context("spark", AS_OF, None, {**upstream["overrides"], "engine": "spark"})
    # The quality checks read the run's catalogue.
    target = spark_ctx.paths.path(PRODUCTS)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(upstream["local"].paths.path(PRODUCTS), target)
    return {
        "local": _run_stages(upstream["local"], upstream),
        "spark": _run_stages(spark_ctx, upstream),
        "spark_ctx": spark_ctx,
    }


def assert_same_artifact(local: str, spark: str, keys: list[str]) -> None:
    """Same Arrow schema, same rows (sorted by `keys`), floats equal to 1e-9."""
    assert Path(spark).is_dir() and Path(local).is_file()
    local_table, spark_table = pq.read_table(local), pq.read_table(spark)
    assert spark_table.schema == local_table.schema
    for part in Path(spark).iterdir():
        assert pq.read_schema(part) == local_table.schema, part
    left = local_table.to_pandas().sort_values(keys, kind="stable").reset_index(drop=True)
    right = spark_table.to_pandas().sort_values(keys, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-9, atol=0.0)


def _without(summary: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in keys}


def test_spark_popular_products_equal_the_local_ones(runs) -> None:
    local, spark = runs["local"]["popular"], runs["spark"]["popular"]
    assert_same_artifact(
        local["popular_products"],
        spark["popular_products"],
        ["segment_type", "age_group", "region", "rank"],
    )
    assert set(local["segments"]) == {"overall", "age_group", "region", "age_group_region"}
    assert _without(spark, "popular_products") == _without(local, "popular_products")


def test_spark_baskets_equal_the_local_ones_with_the_same_accounting(runs) -> None:
    local, spark = runs["local"]["baskets"], runs["spark"]["baskets"]
    assert_same_artifact(local["baskets"], spark["baskets"], ["basket_id", "product_id"])
    assert local["stats"]["n_baskets"] > 1000
    assert spark["stats"] == local["stats"]
    assert spark["counts"] == local["counts"]


def test_spark_rules_equal_the_local_rules_up_to_the_engine_name(runs) -> None:
    local, spark = runs["local"]["fbt_rules"], runs["spark"]["fbt_rules"]
    assert local["itemsets_by_length"].get("3", 0) > 0, "no triples: FPGrowth untested"
    assert local["n_rules"] > 0
    local_rules = pd.read_parquet(local["fbt_rules"])
    spark_rules = pd.read_parquet(spark["fbt_rules"])
    assert set(local_rules["engine"]) == {"sparse"}
    assert set(spark_rules["engine"]) == {"spark_fpgrowth"}
    assert (spark_rules["antecedent_len"] + spark_rules["consequent_len"]).max() == 3
    # The local order is part of the contract (antecedent, confidence desc, consequent).
    assert list(zip(spark_rules["antecedent"], spark_rules["consequent"], strict=True)) == list(
        zip(local_rules["antecedent"], local_rules["consequent"], strict=True)
    )
    pd.testing.assert_frame_equal(
        local_rules.drop(columns="engine"),
        spark_rules.drop(columns="engine"),
        check_exact=False,
        rtol=1e-9,
        atol=0,
    )
    ignore = ("fbt_rules", "engine", "seconds")
    assert _without(spark, *ignore) == _without(local, *ignore)


def test_stage_override_dataset_directories_and_their_quality_checks(runs, upstream) -> None:
    ctx = runs["spark_ctx"]
    for group in ("popular", "baskets"):
        summary = pipeline.check(ctx, group)
        assert all(check["success"] for check in summary["checks"]), summary
    path = ctx.paths.path(POPULAR)
    expected = pq.read_table(runs["local"]["popular"]["popular_products"]).num_rows
    assert pl.read_parquet(path).height == len(pd.read_parquet(path)) == expected

    config = upstream["local"].config.model_copy(update={"engines": {"popular": "spark"}})
    assert [config.engine_for(s) for s in ("popular", "baskets", "demographics")] == [
        "spark",
        "local",
        "local",
    ]
    with pytest.raises(ValidationError, match="no Spark implementation"):
        type(config).model_validate({**config.model_dump(), "engines": {"demographics": "spark"}})

    # One run switching engines: each write replaces the other kind of artifact.
    switched = replace(ctx, config=config)
    pipeline.popular(switched, upstream["interactions"], upstream["users"])
    assert path.is_dir()
    pipeline.popular(
        replace(ctx, config=upstream["local"].config), upstream["interactions"], upstream["users"]
    )
    assert path.is_file()
    assert pq.read_table(path).num_rows == expected
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_spark_baskets_by_user_day_and_by_order_equal_the_local_ones(spark, upstream) -> None:
    from fashion_recs.spark.baskets import baskets_stage as spark_baskets
    from fashion_recs.stages.fbt import baskets_stage as local_baskets

    inputs = (
        Path(upstream["interactions"]["interactions"]),
        Path(upstream["products"]["products"]),
    )
    for delimiter in ("user_day", "order"):
        overrides = {**upstream["overrides"], "fbt": {"baskets": {"delimiter": delimiter}}}
        local = make_context(f"local_{delimiter}", AS_OF, None, overrides)
        remote = make_context(f"spark_{delimiter}", AS_OF, None, overrides)
        expected = local_baskets(local.config, local.paths, *inputs)
        got = spark_baskets(spark, remote.config, remote.paths, *inputs)
        assert_same_artifact(expected["baskets"], got["baskets"], ["basket_id", "product_id"])
        assert got["stats"] == expected["stats"], delimiter
        assert got["counts"] == expected["counts"], delimiter
