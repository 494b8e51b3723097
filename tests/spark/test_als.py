"""MLlib ALS (implicit) as a personal model step on the small synthetic retailer.

The step runs on the split every personal model uses and must: beat random lists, write
metrics rows shaped like every other model's, publish every user's list, give the same lists
when refitted with the same seed, and score its lists on Spark exactly as
`fashion_recs.evaluate` does. On the local engine it is a skipped step. The item-kNN
co-occurrence neighbours on Spark are checked here too, on the same matrix.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fashion_recs import pipeline
from fashion_recs.contract import PERSONAL_LISTS_SCHEMA, personal_eval, personal_lists
from fashion_recs.pipeline import make_context
from fashion_recs.stages import personal
from tests.conftest import retailer_overrides

AS_OF = date(2026, 11, 1)
# Small and quick: the retailer has a few hundred products.
ALS = {"rank": 16, "max_iter": 6, "reg_param": 0.1, "alpha": 10.0}


@pytest.fixture(scope="module")
def run(spark: Any, retailer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local run up to the interactions, then the `als` step with als on Spark."""
    overrides = retailer_overrides(
        retailer,
        tmp_path_factory.mktemp("spark_als") / "data",
        engines={"als": "spark"},
        personal={"als": ALS},
    )
    ctx = make_context("als", AS_OF, None, overrides)
    dl = pipeline.download(ctx)
    products = pipeline.products(ctx, dl)
    interactions = pipeline.interactions(ctx, pipeline.events(ctx, dl, products))
    inputs = personal.load_inputs(
        ctx.config, ctx.paths, Path(interactions["interactions"]), ctx.as_of
    )
    summary = pipeline.personal_model(ctx, "als", interactions)
    return {"ctx": ctx, "interactions": interactions, "inputs": inputs, "summary": summary}


def _random_lists(inputs: personal.PersonalInputs, k: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = inputs.items.to_numpy()
    rows = [
        (user, items[i], rank + 1, float(k - rank))
        for user in inputs.split.users
        for rank, i in enumerate(rng.choice(len(items), k, replace=False))
    ]
    return pd.DataFrame(rows, columns=["user_id", "product_id", "rank", "score"])


def test_als_beats_random_and_its_metrics_look_like_the_others(run: dict[str, Any]) -> None:
    ctx, inputs, summary = run["ctx"], run["inputs"], run["summary"]
    k = ctx.config.personal.top_k
    assert summary["models"] == ["als"]
    assert set(summary) >= {"metrics", "models", "values", "seconds", "unserved", "params"}
    metrics = pd.read_parquet(summary["metrics"])
    random = personal.score_lists(
        _random_lists(inputs, k, 0),
        inputs.split,
        k=k,
        catalogue_size=inputs.catalogue_size,
        model="random",
    )
    value = metrics.set_index("metric")["value"]
    assert value["map"] > 2 * random.set_index("metric")["value"]["map"] > 0
    assert value["recall"] > random.set_index("metric")["value"]["recall"]

    # The same rows and schema as a local model's metrics (repurchase: the cheapest one).
    from fashion_recs.personal.repurchase import Repurchase

    local = personal.run_models(
        ctx.config,
        ctx.paths,
        "als_schema_probe",
        inputs,
        {"repurchase": Repurchase},
        full_lists=False,
    )
    assert pq.read_schema(summary["metrics"]) == pq.read_schema(local["metrics"])
    reference = pd.read_parquet(local["metrics"])
    assert list(metrics[["metric", "k"]].itertuples(index=False)) == list(
        reference[["metric", "k"]].itertuples(index=False)
    )
    assert set(summary["values"]) == {v.replace("repurchase", "als") for v in local["values"]}

    # The gate and the blend pick from `personal.gate.candidates`: ALS only when named there.
    both = pd.concat([metrics, reference], ignore_index=True)
    assert personal._best_model(ctx.config, both, set()) is None
    gate = ctx.config.personal.gate.model_copy(update={"candidates": ["als", "repurchase"]})
    named = ctx.config.model_copy(
        update={"personal": ctx.config.personal.model_copy(update={"gate": gate})}
    )
    best = "als" if value["map"] > reference.set_index("metric")["value"]["map"] else "repurchase"
    assert personal._best_model(named, both, set()) == best


def test_als_lists_every_user_and_refits_to_the_same_lists(spark: Any, run: dict[str, Any]) -> None:
    from fashion_recs.spark.als import fit, recommend

    ctx, inputs = run["ctx"], run["inputs"]
    k = ctx.config.personal.top_k
    full = ctx.paths.path(personal_lists("als"))
    assert full.is_dir() and pq.read_table(full).schema == PERSONAL_LISTS_SCHEMA
    lists = pd.read_parquet(full)
    assert set(lists["user_id"]) == set(inputs.full.users)
    ranks = lists.groupby("user_id")["rank"].agg(list)
    assert all(r == list(range(1, k + 1)) for r in ranks)
    assert lists["product_id"].isin(inputs.items).all()

    published = pd.read_parquet(ctx.paths.path(personal_eval("als")))
    again = recommend(
        fit(spark, inputs.split.matrix, ctx.config.personal.als, ctx.config.seed),
        inputs.split.matrix,
        inputs.split.users,
        k,
        exclude_known=False,
    )
    pd.testing.assert_frame_equal(
        published.drop(columns="source"), again, check_exact=False, rtol=1e-6, atol=0.0
    )
    # Excluding known items asks ALS for more and still fills the lists with unseen items.
    unseen = recommend(
        fit(spark, inputs.split.matrix, ctx.config.personal.als, ctx.config.seed),
        inputs.split.matrix,
        inputs.split.users[:50],
        k,
        exclude_known=True,
    )
    known = inputs.split.train.groupby("user_id")["product_id"].agg(set)
    assert not any(
        p in known.get(u, set())
        for u, p in zip(unseen["user_id"], unseen["product_id"], strict=True)
    )
    assert (unseen.groupby("user_id").size() == k).all()


def test_spark_ranking_metrics_on_als_lists_equal_the_local_ones(
    spark: Any, run: dict[str, Any]
) -> None:
    from fashion_recs.spark import evaluate as spark_evaluate

    ctx, inputs, summary = run["ctx"], run["inputs"], run["summary"]
    k = ctx.config.personal.top_k
    lists = pd.read_parquet(ctx.paths.path(personal_eval("als")))
    truth = inputs.split.truth[["user_id", "product_id"]]
    on_spark = spark_evaluate.evaluate_all(
        spark.createDataFrame(truth),
        spark.createDataFrame(lists[["user_id", "product_id", "rank"]]),
        k=k,
        catalogue_size=inputs.catalogue_size,
        model="als",
    )
    local = pd.read_parquet(summary["metrics"])
    pd.testing.assert_frame_equal(
        local, on_spark, check_exact=False, rtol=1e-9, atol=0.0, check_dtype=False
    )


def test_als_is_skipped_on_the_local_engine(run: dict[str, Any]) -> None:
    ctx = run["ctx"]
    local = replace(ctx, config=ctx.config.model_copy(update={"engines": {}}))
    assert local.config.engine_for("als") == "local"
    summary = pipeline.personal_model(local, "als", run["interactions"])
    assert summary == {"skipped": "MLlib ALS runs on the spark engine only"}
    assert "als" in pipeline.PERSONAL_MODEL_STEPS
    steps = list(pipeline.PERSONAL_MODEL_STEPS)
    assert steps.index("als") < steps.index("blend")


def test_spark_item_knn_neighbours_equal_the_local_ones(spark: Any, run: dict[str, Any]) -> None:
    """The co-occurrence neighbours (item-kNN's fit) on Spark against `ItemKNN` on the same
    matrix, exactly: both round the float64 cosines before choosing, so every similarity and
    every tie-broken choice is the same, from the raw entries (Spark weights and scales them
    itself) and as the model's search (`SparkItemNeighbours`, what the pipeline uses)."""
    from fashion_recs.personal.item_knn import ItemKNN
    from fashion_recs.spark.item_knn import (
        SparkItemNeighbours,
        item_neighbours,
        matrix_entries,
        to_similarity,
    )

    matrix = run["inputs"].full
    entries = matrix_entries(spark, matrix).cache()
    every = item_neighbours(entries, matrix.n_items, matrix.n_items).toPandas()
    local = ItemKNN(matrix.n_items, "log1p").fit(matrix).item_similarity
    assert local.nnz == len(every) > 1000
    got = to_similarity(every, matrix.n_items)
    assert (got != local).nnz == 0
    ranks = every.sort_values(["item", "rank"]).groupby("item")["rank"].agg(list)
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)

    n = 10
    top = to_similarity(item_neighbours(entries, matrix.n_items, n).toPandas(), matrix.n_items)
    local_model = ItemKNN(n, "log1p").fit(matrix)
    assert (top != local_model.item_similarity).nnz == 0
    # Exactly equal similarities are common (items touched by the same few users): each
    # engine's choice among them is the lower item.
    rows = [local.data[local.indptr[i] : local.indptr[i + 1]] for i in range(matrix.n_items)]
    assert sum(len(np.unique(r)) < len(r) for r in rows) > 20

    spark_model = ItemKNN(n, "log1p", search=SparkItemNeighbours(spark)).fit(matrix)
    assert (spark_model.item_similarity != local_model.item_similarity).nnz == 0
    asked = list(matrix.items[:200])
    pd.testing.assert_frame_equal(
        spark_model.similar_items(asked, 12), local_model.similar_items(asked, 12)
    )
