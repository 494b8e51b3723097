"""The personalisation steps on a synthetic retailer with planted taste segments.

One run of the upstream steps (module scope) feeds every test: the models are scored on the
run's hold-out, the ranker must beat every single candidate source, the fixed-order merge and
every baseline, the gate must serve nothing below the run's best baseline, the planted segment
favourites must show up in the lists, and the routing tables must give every user exactly one
route and list (own items first when known items are allowed).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fashion_recs import pipeline
from fashion_recs.contract import (
    PERSONAL_GATE,
    POPULAR,
    RANKER_IMPORTANCE,
    USER_RECOMMENDATIONS,
    USER_ROUTES,
    personal_eval,
    personal_lists,
)
from fashion_recs.personal.routing import process_user
from fashion_recs.synthetic import SyntheticSpec, generate
from tests.conftest import retailer_overrides

TASTE_SPEC = SyntheticSpec(
    n_products=500,
    n_users=3000,
    n_events=200_000,
    n_answers=3750,
    seed=11,
    end_date=date(2026, 11, 1),
    days=30,
    images=False,
)
MARGIN = 0.2


@pytest.fixture(scope="module")
def taste_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Generate the retailer and run every step the personalisation steps depend on."""
    raw = tmp_path_factory.mktemp("taste_retailer")
    generate(TASTE_SPEC, raw)
    overrides = retailer_overrides(
        raw,
        tmp_path_factory.mktemp("taste_data"),
        personal={
            "gate": {"margin": MARGIN},
            "two_tower": {"max_epochs": 8},
            "routing": {"min_items_for_model": 2},
        },
    )
    ctx = pipeline.make_context("taste", TASTE_SPEC.end_date, None, overrides)
    dl = pipeline.download(ctx)
    prod = pipeline.products(ctx, dl)
    ev = pipeline.events(ctx, dl, prod)
    demo = pipeline.demographics(ctx, dl)
    inter = pipeline.interactions(ctx, ev)
    pipeline.popular(ctx, inter, demo)
    evaluate = pipeline.evaluate(ctx, inter, demo, prod)
    bask = pipeline.baskets(ctx, inter, prod)
    rules = pipeline.fbt_rules(ctx, bask)
    pipeline.fbt_recommendations(ctx, rules, bask, prod)
    pipeline.similar_text(ctx, prod, inter)
    steps = {s: pipeline.personal_model(ctx, s, inter) for s in pipeline.PERSONAL_MODEL_STEPS}
    gate = pipeline.quality_gate(ctx)
    routes = pipeline.route_users(ctx, inter, gate)
    return {
        "ctx": ctx,
        "raw": raw,
        "inter": inter,
        "steps": steps,
        "evaluate": evaluate,
        "gate": gate,
        "routes": routes,
    }


def _value(run: dict[str, Any], model: str, metric: str = "map") -> float:
    for summary in [*run["steps"].values(), run["evaluate"]]:
        key = f"{model}/{metric}@12"
        if key in summary.get("values", {}):
            return summary["values"][key]
    raise KeyError(model)


def test_models_beat_popularity_and_the_gate_bar_is_the_best_baseline(taste_run) -> None:
    popularity = _value(taste_run, "popularity")
    assert _value(taste_run, "user_cf_cosine") > popularity * (1 + MARGIN)
    assert _value(taste_run, "two_tower") > popularity * (1 + MARGIN / 2)
    # Segment popularity (the new users' fallback) recovers the planted segments too.
    assert _value(taste_run, "segment_popularity", "recall") > 1.2 * _value(
        taste_run, "popularity", "recall"
    )
    gate = pd.read_parquet(taste_run["ctx"].paths.path(PERSONAL_GATE))
    baselines = gate[gate["role"] == "baseline"]
    assert set(baselines["model"]) == {
        "repurchase",
        "source_own",
        "popularity",
        "segment_popularity",
        "item_knn",
    }
    best = baselines["value"].max()
    assert gate["baseline_value"].to_numpy() == pytest.approx(best)
    assert gate["baseline"].iloc[0] == baselines.loc[baselines["value"].idxmax(), "model"]
    assert gate["required_value"].to_numpy() == pytest.approx(best * (1 + MARGIN))
    candidates = gate[gate["role"] == "candidate"]
    assert candidates["passed"].eq(candidates["value"] > candidates["required_value"]).all()
    assert not baselines["passed"].any()
    chosen = gate[gate["chosen"]]
    assert len(chosen) == 1 and chosen["value"].item() == candidates["value"].max()
    assert taste_run["gate"]["chosen"] == chosen["model"].item() == "ranker"
    assert not taste_run["gate"]["fallback"]


def test_ranker_beats_every_source_the_fixed_order_and_every_baseline(taste_run) -> None:
    """On a retailer with planted repurchase, colour variants and trends, ordering the
    candidates by a learned model beats each source alone and the hand-made merge."""
    ranker = _value(taste_run, "ranker")
    summary = taste_run["steps"]["ranker"]
    sources = [m for m in summary["models"] if m.startswith("source_")]
    assert {"source_own", "source_siblings", "source_item_knn", "source_user_cf"} <= set(sources)
    for model in [*sources, "candidates_fixed_order", "user_cf_cosine", "two_tower"]:
        assert ranker > _value(taste_run, model), model
    # The blend puts the best model (the ranker) behind recent items and their look-alikes;
    # its learned caps may keep the ranker's list as it is, never make it better.
    assert ranker >= _value(taste_run, "blend")
    for baseline in ("repurchase", "popularity", "segment_popularity", "item_knn"):
        assert ranker > 1.2 * _value(taste_run, baseline), baseline
    # The customer's own items are the strongest single source, as on real fashion data.
    assert _value(taste_run, "source_own") == max(_value(taste_run, m) for m in sources)
    importance = pd.read_parquet(taste_run["ctx"].paths.path(RANKER_IMPORTANCE))
    assert importance["gain_share"].sum() == pytest.approx(1.0)
    assert importance["feature"].iloc[0] in {
        "rank_own",
        "score_own",
        "ui_days_since_last",
        "ui_events",
        "ui_own_rank",
        "ui_decayed",
    }
    assert set(summary["importance"]) <= set(importance["feature"])
    published = pd.read_parquet(taste_run["ctx"].paths.path(personal_lists("ranker")))
    assert published["source"].isin(list(summary["sources"])).all()
    assert published["rank"].max() == 12


def test_blend_summary_records_its_caps_and_grid(taste_run) -> None:
    blend = taste_run["steps"]["blend"]
    assert blend["caps_learned"] and set(blend["caps"]) >= {"recent", "similar"}
    assert len(blend["grid_scores"]) == 5 * 4
    best = max(blend["grid_scores"], key=blend["grid_scores"].get)
    assert best == f"recent={blend['caps']['recent']},similar={blend['caps']['similar']}"


def test_models_say_which_users_they_cannot_serve(taste_run) -> None:
    unserved = taste_run["steps"]["user_cf"]["unserved"]
    # Pearson centres a single-item user's vector to zero: no neighbours, no list.
    assert unserved["user_cf_pearson"]["users_without_list"] > 0
    assert (
        unserved["user_cf_cosine"]["users_without_list"]
        < (unserved["user_cf_pearson"]["users_without_list"])
    )
    lists = pd.read_parquet(taste_run["ctx"].paths.path(USER_RECOMMENDATIONS))
    assert lists.groupby("user_id").size().eq(12).all()


def test_mse_two_tower_is_scored_and_loses_to_the_default_loss(taste_run) -> None:
    """The seed's MSE on observed pairs has no negatives: the metrics show why it is not used."""
    assert _value(taste_run, "two_tower_mse") < 0.5 * _value(taste_run, "two_tower")
    training = taste_run["steps"]["two_tower"]["training"]["two_tower"]
    assert training["best_epoch"] >= 1 and len(training["val_recall"]) >= training["best_epoch"]
    # The published model continued from the split's for the configured epochs.
    refit = training["refit"]
    assert refit["from_split_model"] and refit["epochs"] == 1 == len(refit["train_loss"])


def test_planted_taste_segments_are_recovered(taste_run) -> None:
    """Users' lists hold their own segment's planted favourites far more often than popularity's."""
    raw: Path = taste_run["raw"]
    ctx = taste_run["ctx"]
    truth_users = pd.read_parquet(raw / "truth" / "users.parquet", columns=["user_id", "segment"])
    favourites = pd.read_parquet(raw / "truth" / "segments.parquet")
    favourites["segment"] = favourites["age_group"] + "|" + favourites["region"]
    liked = set(zip(favourites["segment"], favourites["product_id"], strict=True))
    popular = pd.read_parquet(ctx.paths.path(POPULAR))
    overall = popular[popular["segment_type"] == "overall"].nsmallest(12, "rank")["product_id"]

    def share(lists: pd.DataFrame) -> float:
        rows = lists.merge(truth_users, on="user_id")
        hits = [(s, p) in liked for s, p in zip(rows["segment"], rows["product_id"], strict=True)]
        return sum(hits) / len(hits)

    baseline = share(
        truth_users[["user_id"]].merge(pd.DataFrame({"product_id": overall}), how="cross")
    )
    for model in ("user_cf_cosine", "two_tower"):
        lists = pd.read_parquet(ctx.paths.path(personal_lists(model)))
        assert share(lists) > 3 * baseline + 0.05, model


def test_every_user_gets_one_route_and_one_list(taste_run) -> None:
    ctx = taste_run["ctx"]
    routes = pd.read_parquet(ctx.paths.path(USER_ROUTES))
    lists = pd.read_parquet(ctx.paths.path(USER_RECOMMENDATIONS))
    assert routes["user_id"].is_unique
    assert set(lists["user_id"]) == set(routes["user_id"])
    assert set(routes["route"]) == {"existing", "new_with_events", "new_without_events"}
    assert lists.groupby("user_id")["rank"].apply(lambda r: sorted(r) == list(range(1, 13))).all()
    assert not lists.duplicated(["user_id", "product_id"]).any()
    chosen = taste_run["gate"]["chosen"]
    existing = lists.merge(routes[routes["route"] == "existing"], on="user_id")
    assert existing["strategy_x"].str.startswith(chosen).mean() > 0.95
    fresh = lists.merge(routes[routes["route"] == "new_without_events"], on="user_id")
    assert fresh["strategy_x"].str.startswith("popular_").all()
    with_events = lists.merge(routes[routes["route"] == "new_with_events"], on="user_id")
    # Known items allowed: a shopper's own product comes first, item-based lists fill the rest.
    assert with_events.loc[with_events["rank"] == 1, "strategy_x"].eq("own_items").all()
    assert with_events["strategy_x"].str.startswith("item_based_").mean() > 0.5
    summary = pipeline.check(ctx, "personal")
    assert all(r["success"] for r in summary["checks"])


def test_rerunning_routing_gives_identical_artifacts(taste_run) -> None:
    ctx = taste_run["ctx"]
    before = {a: pq.read_table(ctx.paths.path(a)) for a in (USER_RECOMMENDATIONS, USER_ROUTES)}
    pipeline.route_users(ctx, taste_run["inter"], taste_run["gate"])
    for artifact, table in before.items():
        assert pq.read_table(ctx.paths.path(artifact)).equals(table)


def test_process_user_routes_like_the_seed(taste_run) -> None:
    ctx = taste_run["ctx"]
    lists = pd.read_parquet(ctx.paths.path(USER_RECOMMENDATIONS))
    routes = pd.read_parquet(ctx.paths.path(USER_ROUTES))
    popular = pd.read_parquet(ctx.paths.path(POPULAR))
    from fashion_recs.contract import ITEM_CANDIDATES

    candidates = pd.read_parquet(ctx.paths.path(ITEM_CANDIDATES))
    common = {"user_lists": lists, "candidates": candidates, "popular": popular, "k": 12}

    user = routes[routes["route"] == "existing"]["user_id"].iloc[0]
    routed = process_user(user, **common)
    assert routed.route == "existing"
    expected = lists[lists["user_id"] == user].sort_values("rank")["product_id"].tolist()
    assert routed.items["product_id"].tolist() == expected

    product = candidates["product_id"].iloc[0]
    routed = process_user("someone-new", product_ids=[product], **common)
    assert routed.route == "new_with_events"
    # Known items allowed (the default): the shopper's product first, then item-based.
    assert routed.items["product_id"].iloc[0] == product
    assert routed.items["strategy"].tolist()[:2] == ["own_items", routed.items["strategy"][1]]
    assert routed.items["strategy"].iloc[1].startswith("item_based_")
    assert len(routed.items) == 12
    routed = process_user("someone-new", product_ids=[product], own_items_first=False, **common)
    assert product not in set(routed.items["product_id"])
    assert routed.items["strategy"].iloc[0].startswith("item_based_")
    assert len(routed.items) == 12

    segment = popular[popular["segment_type"] == "age_group_region"].iloc[0]
    routed = process_user(
        "someone-new", age_group=segment["age_group"], region=segment["region"], **common
    )
    assert routed.route == "new_without_events"
    assert routed.strategy == "popular_age_group_region"
    routed = process_user("someone-new", age_group="unknown", **common)
    assert routed.strategy == "popular_overall"


def test_ranker_lists_do_not_depend_on_how_users_are_chunked(taste_run) -> None:
    """Users are served a chunk at a time to bound memory; the whole-history parts (fitted
    neighbour models, popularity, per-user aggregates) are shared by the chunks, so chunks
    of 250 users give exactly the lists, scores and metrics of the default single chunk."""
    from fashion_recs.stages import personal, ranking

    ctx = taste_run["ctx"]
    config = ctx.config
    names = [personal_lists(n) for n in ("ranker", "candidates_fixed_order", "source_own")]
    names.append(personal_eval("ranker"))
    before = {name: pd.read_parquet(ctx.paths.path(name)) for name in names}
    ranker = config.personal.ranker.model_copy(update={"chunk_users": 250})
    chunked = config.model_copy(
        update={"personal": config.personal.model_copy(update={"ranker": ranker})}
    )
    inputs = personal.load_inputs(
        chunked, ctx.paths, Path(taste_run["inter"]["interactions"]), ctx.as_of
    )
    summary = ranking.ranker_stage(chunked, inputs, ctx.paths)
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(ctx.paths.path(name)), before[name])
    assert summary["values"] == taste_run["steps"]["ranker"]["values"]
    assert summary["holdout_rows"] == taste_run["steps"]["ranker"]["holdout_rows"]


def test_recency_order_numbers_each_users_products_like_a_pandas_groupby() -> None:
    """Users' distinct products, most recent first (ties by product id): the polars step
    routing uses equals pandas' groupby, sort and cumcount on the same events."""
    import numpy as np
    import polars as pl

    from fashion_recs.stages.personal import recency_order

    rng = np.random.default_rng(3)
    n = 4000
    events = pd.DataFrame(
        {
            "user_id": [f"U{u}" for u in rng.integers(0, 50, n)],
            "product_id": [f"p{p}" for p in rng.integers(0, 80, n)],
            # Few distinct times, so ties between a user's products are common.
            "event_ts": pd.Timestamp("2026-10-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 30, n), unit="h"),
        }
    )
    want = (
        events.groupby(["user_id", "product_id"], as_index=False)["event_ts"]
        .max()
        .sort_values(["user_id", "event_ts", "product_id"], ascending=[True, False, True])
    )
    want["recency"] = want.groupby("user_id").cumcount() + 1
    last = pl.from_pandas(events).group_by("user_id", "product_id").agg(pl.col("event_ts").max())
    got = recency_order(last)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False
    )
