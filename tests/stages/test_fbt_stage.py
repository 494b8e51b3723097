"""The FBT stages on small artifacts: empty results are valid, engines are cross-checked."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fashion_recs.artifacts import write_artifact
from fashion_recs.contract import INTERACTIONS, PRODUCTS, PRODUCTS_SCHEMA
from fashion_recs.errors import EngineMismatch
from fashion_recs.fbt import mining
from fashion_recs.stages import fbt as stage
from tests.helpers import make_config, run_paths

T0 = datetime(2026, 10, 1, tzinfo=UTC)
IDS = [f"{i:024x}" for i in range(1, 41)]


@pytest.fixture
def run(tmp_path):
    """A run with 40 products and 600 two-to-four item sessions, two planted pairs."""
    config = make_config(tmp_path, fbt={"mining": {"min_support": 0.01, "min_count": 5}})
    paths = run_paths(config)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(600):
        items = set(rng.choice(40, rng.integers(2, 5)).tolist())
        if s % 10 == 0:
            items |= {1, 2}
        if s % 10 == 5:
            items |= {7, 8}
        start = T0 + timedelta(hours=2 * s)
        for j, item in enumerate(sorted(items)):
            rows.append((f"u{s % 50}", IDS[item], start + timedelta(minutes=j), "view", 1.0))
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "event_ts", "category", "weight"])
    frame["event_name"] = "product_details_page_view"
    frame["button_name"] = None
    interactions = write_artifact(paths, INTERACTIONS, frame)
    products = pa.Table.from_pylist(
        [
            {
                "product_id": pid,
                "title": f"p{i}",
                "group_key": pid,
                "department": f"d{i % 4}",
                "target_audience": "women" if i % 2 else "men",
            }
            for i, pid in enumerate(IDS)
        ],
        schema=PRODUCTS_SCHEMA,
    )
    products_path = write_artifact(paths, PRODUCTS, products)
    baskets = stage.baskets_stage(config, paths, interactions, products_path)
    return config, paths, baskets, products_path


def test_rules_lists_and_evaluation_on_a_small_run(run) -> None:
    config, paths, baskets, products = run
    assert baskets["stats"]["n_baskets"] == 600
    rules = stage.rules_stage(config, paths, baskets["baskets"])
    assert rules["n_rules"] > 0 and rules["engine"] == "sparse"
    table = pd.read_parquet(rules["fbt_rules"])
    assert {(IDS[1], IDS[2]), (IDS[7], IDS[8])} <= set(
        zip(table["antecedent"], table["consequent"], strict=True)
    )
    lists = stage.lists_stage(config, paths, rules["fbt_rules"], baskets["baskets"], products)
    assert lists["products"] == 40
    frame = pd.read_parquet(lists["fbt_recommendations"])
    assert frame.groupby("product_id").size().eq(config.fbt.lists.top_k).all()
    metrics = stage.evaluate_stage(config, paths, rules["fbt_rules"], baskets["baskets"], products)
    assert {"fbt/map@12", "fbt_popularity/map@12"} <= set(metrics["values"])


def test_thresholds_that_find_nothing_warn_and_write_an_empty_table(run, caplog) -> None:
    config, paths, baskets, products = run
    strict = config.model_copy(
        update={
            "fbt": config.fbt.model_copy(
                update={"mining": config.fbt.mining.model_copy(update={"min_support": 0.9})}
            )
        }
    )
    with caplog.at_level(logging.WARNING):
        rules = stage.rules_stage(strict, paths, baskets["baskets"])
    assert rules["n_rules"] == 0
    assert "no rule passed min_support" in caplog.text and "Lower fbt.mining" in caplog.text
    assert pd.read_parquet(rules["fbt_rules"]).empty
    lists = stage.lists_stage(strict, paths, rules["fbt_rules"], baskets["baskets"], products)
    assert lists["products"] == 40 and lists["entries_by_source"]["rules"] == 0


def test_crosscheck_compares_every_engine_and_fails_on_a_disagreement(run, monkeypatch) -> None:
    config, paths, baskets, _ = run
    summary = stage.crosscheck_stage(config, paths, baskets["baskets"])
    assert summary["engines_compared"] == list(mining.ENGINES)
    report = pd.read_parquet(summary["fbt_crosscheck"])
    assert report["identical_to_reference"].all() and (report["n_rules"] > 0).all()

    real = mining.MINERS["pyfim_fpgrowth"]

    def lossy(m, t, max_len, max_bytes):
        result = real(m, t, max_len, max_bytes)
        result.counts[2] = result.counts[2] + 1  # one basket too many for every pair
        return result

    monkeypatch.setitem(mining.MINERS, "pyfim_fpgrowth", lossy)
    with pytest.raises(EngineMismatch, match="pyfim_fpgrowth: counts differ"):
        stage.crosscheck_stage(config, paths, baskets["baskets"])


def test_lists_step_records_the_gate_decision(run) -> None:
    config, paths, baskets, products = run
    rules = stage.rules_stage(config, paths, baskets["baskets"])
    lists = stage.lists_stage(config, paths, rules["fbt_rules"], baskets["baskets"], products)
    gate = lists["gate"]
    assert gate["chosen"] in gate["hit_rates"] and gate["n_queries"] > 0
    assert gate["lists_vs_popularity"] >= 1.0
    rows = pd.read_parquet(lists["fbt_metrics_gate"])
    assert (rows["model"] == "fbt_gate").all()
    assert f"published_{gate['chosen']}" in set(rows["metric"])
    assert {"hit_rate_popularity", "published_vs_popularity"} <= set(rows["metric"])
