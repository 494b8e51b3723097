"""Learning the text model's block weights from the run's signals (similar.weights)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fashion_recs.artifacts import write_artifact
from fashion_recs.config import LearnWeightsConfig
from fashion_recs.contract import (
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    PRODUCTS,
    PRODUCTS_SCHEMA,
    similar_metrics,
)
from fashion_recs.similar import weights as weights_module
from fashion_recs.similar.text import fit_text_model
from fashion_recs.similar.weights import (
    TEXT_BLOCK,
    Blocks,
    behaviour_pairs,
    learn_weights,
    variant_pairs,
)
from fashion_recs.stages.similar import text_model_stage
from tests.helpers import make_config, run_paths

TYPES = {"tops": ["tee", "shirt", "sweater"], "bottoms": ["jeans", "skirt", "shorts"]}
COLOURS = ["black", "navy", "red", "white", "olive"]
WORDS = ["soft", "classic", "slim", "relaxed", "printed", "knitted", "cotton", "linen"]


def catalogue(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two coarse departments of three types each, five colours, titles without colour."""
    rng = np.random.default_rng(seed)
    kinds = [(d, t) for d, ts in TYPES.items() for t in ts]
    rows = []
    for i in range(n):
        dept, kind = kinds[i % len(kinds)]
        words = " ".join(rng.choice(WORDS, 2, replace=False))
        rows.append(
            {
                "product_id": f"{i:024x}",
                "title": f"{words.title()} {kind.title()}",
                "target_audience": ["women", "men"][int(rng.integers(2))],
                "color": COLOURS[(i // len(kinds)) % len(COLOURS)],
                "department": dept,
                "original_description": None,
                "group_key": f"{i:024x}",
                "kind": kind,
            }
        )
    return pd.DataFrame(rows)


def same_type_pairs(products: pd.DataFrame, n: int, seed: int, same_colour: bool) -> np.ndarray:
    """Row pairs of one type; of one colour or of two different colours."""
    rng = np.random.default_rng(seed)
    kinds, colours = products["kind"].to_numpy(), products["color"].to_numpy()
    pairs = set()
    while len(pairs) < n:
        a, b = (int(x) for x in rng.integers(len(products), size=2))
        if a != b and kinds[a] == kinds[b] and (colours[a] == colours[b]) == same_colour:
            pairs.add((min(a, b), max(a, b)))
    return np.asarray(sorted(pairs), dtype=np.int64)


def views_of(products: pd.DataFrame, pairs: np.ndarray, category: str) -> pd.DataFrame:
    """Interactions in which each pair is one user's two events at one moment."""
    ids = products["product_id"].to_numpy()
    ts = pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(np.arange(len(pairs)), "h")
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"u{i}" for i in range(len(pairs))], 2),
            "product_id": ids[pairs.ravel()],
            "event_ts": np.repeat(ts, 2),
            "category": category,
        }
    )


def setup(products: pd.DataFrame) -> tuple[Blocks, dict[str, float]]:
    model = fit_text_model(products, product_type="last_word")
    blocks = Blocks(model.text_block(products), model.attribute_codes(products))
    return blocks, {TEXT_BLOCK: model.text_weight, **model.column_weights}


CFG = LearnWeightsConfig(signals=["similar_click", "co_view", "variant_group"], min_pairs=50)


def test_learned_weights_recover_a_planted_preference_for_type_over_colour() -> None:
    products = catalogue()
    blocks, configured = setup(products)
    # Co-viewed products share department and type but never colour.
    views = views_of(products, same_type_pairs(products, 300, 1, same_colour=False), "view")
    signals = behaviour_pairs(views, products["product_id"].to_numpy(), CFG)
    assert len(signals["co_view"]) == 300 and len(signals["similar_click"]) == 0
    choice = learn_weights(blocks, configured, signals, CFG, k=10, seed=3)
    assert choice.used == "learned", choice.reason
    learned = choice.learned
    assert learned["color"] < configured["color"]

    def type_share(weights: dict[str, float]) -> float:
        attributes = [w for b, w in weights.items() if b != TEXT_BLOCK]
        return weights["product_type"] / float(np.sqrt(np.sum(np.square(attributes))))

    assert type_share(learned) > type_share(configured)
    rows = choice.metric_rows()
    assert rows["weights_learned_used"][0] == 1.0
    assert (
        rows["weights_heldout_behaviour_recall_learned"][0]
        > rows["weights_heldout_behaviour_recall_configured"][0]
    )


def test_similar_clicks_are_read_as_pairs_of_one_user_and_moment() -> None:
    products = catalogue(30)
    pairs = np.asarray([[0, 6], [1, 7], [2, 8]])
    clicks = views_of(products, pairs, "similar_click")
    found = behaviour_pairs(clicks, products["product_id"].to_numpy(), CFG)
    assert found["similar_click"].tolist() == pairs.tolist()
    assert len(found["co_view"]) == 0


def test_without_signal_pairs_the_configured_weights_stay_and_the_stage_says_why(
    tmp_path,
) -> None:
    config = make_config(tmp_path)
    paths = run_paths(config)
    table = pa.Table.from_pylist(
        catalogue().drop(columns="kind").to_dict("records"), schema=PRODUCTS_SCHEMA
    )
    summary = text_model_stage(config, paths, write_artifact(paths, PRODUCTS, table))
    assert summary["weights"]["used"] == "configured"
    assert "too few similar-click/co-view pairs" in summary["weights"]["reason"]
    assert summary["weights"]["pairs"] == {"similar_click": 0, "variant_group": 0}
    metrics = pd.read_parquet(paths.path(similar_metrics("text_tfidf")))
    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert values["weights_learned_used"] == 0.0
    assert values["weight_text"] == pytest.approx(1.0)


def test_the_stage_learns_from_the_runs_similar_clicks(tmp_path) -> None:
    products = catalogue()
    config = make_config(tmp_path, similar={"text": {"learn_weights": {"min_pairs": 50}}})
    paths = run_paths(config)
    table = pa.Table.from_pylist(
        products.drop(columns="kind").to_dict("records"), schema=PRODUCTS_SCHEMA
    )
    products_path = write_artifact(paths, PRODUCTS, table)
    clicks = views_of(
        products, same_type_pairs(products, 300, 1, same_colour=True), "similar_click"
    )
    events = clicks.assign(
        event_name="product_similar_items_clicking", button_name=None, weight=2.0
    )
    interactions = write_artifact(
        paths,
        INTERACTIONS,
        pa.Table.from_pandas(events, preserve_index=False)
        .select(INTERACTIONS_SCHEMA.names)
        .cast(INTERACTIONS_SCHEMA),
    )
    summary = text_model_stage(config, paths, products_path, interactions)
    assert summary["weights"]["used"] == "learned", summary["weights"]["reason"]
    assert summary["weights"]["pairs"]["similar_click"] == 300
    metrics = pd.read_parquet(paths.path(similar_metrics("text_tfidf")))
    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert values["weights_learned_used"] == 1.0
    assert values["weights_heldout_behaviour_recall_learned"] == pytest.approx(1.0)
    # Clicked look-alikes share type and colour: every list holds all 9 products of its
    # type and colour (9 of its 12 slots), and only its colour.
    assert values["same_product_type"] == pytest.approx(0.75)
    assert values["same_color"] == pytest.approx(1.0)


def test_learning_is_deterministic() -> None:
    products = catalogue()
    blocks, configured = setup(products)
    signals = {"similar_click": same_type_pairs(products, 200, 2, same_colour=True)}
    first = learn_weights(blocks, configured, signals, CFG, k=10, seed=5)
    second = learn_weights(blocks, configured, signals, CFG, k=10, seed=5)
    assert first.learned == second.learned and first.scores == second.scores
    assert first.summary() == second.summary()


def test_learned_weights_that_lose_on_the_held_out_half_are_not_used(monkeypatch) -> None:
    products = catalogue()
    blocks, configured = setup(products)
    same_colour = same_type_pairs(products, 200, 3, same_colour=True)
    other_colour = same_type_pairs(products, 200, 4, same_colour=False)
    # Learn where pairs share colour; check where they never do.
    monkeypatch.setattr(
        weights_module, "split_pairs", lambda pairs, seed: (same_colour, other_colour)
    )
    signals = {"similar_click": np.concatenate([same_colour, other_colour])}
    choice = learn_weights(blocks, configured, signals, CFG, k=10, seed=0)
    assert choice.learned["color"] > configured["color"]
    assert choice.used == "configured"
    assert "do not beat" in choice.reason
    assert choice.weights == configured
    scores = choice.metric_rows()
    assert (
        scores["weights_heldout_behaviour_recall_learned"][0]
        <= scores["weights_heldout_behaviour_recall_configured"][0]
    )


def designs(products: pd.DataFrame) -> np.ndarray:
    """Group keys of designs: products of one type in several colours."""
    kinds = products["kind"].to_numpy()
    return np.asarray([f"{k}-{i % 60 // 6}" for i, k in enumerate(kinds)], dtype=object)


def test_variant_groups_alone_keep_the_configured_weights() -> None:
    products = catalogue()
    blocks, configured = setup(products)
    signals = {"variant_group": variant_pairs(designs(products))}
    assert len(signals["variant_group"]) >= CFG.min_pairs
    choice = learn_weights(blocks, configured, signals, CFG, k=10, seed=0)
    assert choice.used == "configured" and choice.learned is None
    assert "variant groups alone" in choice.reason


def test_variant_pairs_do_not_judge_colour_beside_clicks() -> None:
    products = catalogue()
    blocks, configured = setup(products)
    clicks = same_type_pairs(products, 200, 2, same_colour=True)
    variants = variant_pairs(designs(products))
    # Variants differ in colour; were they to judge it, the colour weight would fall.
    with_variants = learn_weights(
        blocks, configured, {"similar_click": clicks, "variant_group": variants}, CFG, 10, 0
    )
    clicks_only = learn_weights(blocks, configured, {"similar_click": clicks}, CFG, 10, 0)
    assert with_variants.learned["color"] >= clicks_only.learned["color"] > 0
    assert with_variants.used == "learned", with_variants.reason
    assert "weights_heldout_variant_same_color_learned" in with_variants.scores


@pytest.mark.parametrize("same_audience", [False, True])
def test_candidate_restriction_gives_the_full_catalogue_top_k(same_audience: bool) -> None:
    """Each query's candidates (per agreement class the k + 1 of largest text cosine and the
    k + 1 first in the tie order) give exactly the top k of scoring the whole catalogue, for
    weights with and without text and with ties (products sharing title words and
    attributes)."""
    from fashion_recs.similar.weights import query_set, top_k

    products = catalogue(800, seed=2)
    model = fit_text_model(products, max_features=50)
    groups = pd.factorize(products["target_audience"])[0] if same_audience else None
    blocks = Blocks(model.text_block(products), model.attribute_codes(products), groups)
    pairs = same_type_pairs(products, 200, seed=4, same_colour=False)
    full = weights_module.query_set(blocks, pairs, 60, seed=1)
    pruned = query_set(blocks, pairs, 60, seed=1, k=5)
    assert pruned.columns is not None and pruned.columns.shape[1] < blocks.n / 4
    names = [TEXT_BLOCK, *blocks.codes]
    rng = np.random.default_rng(7)
    settings = [dict.fromkeys(names, 1.0), {**dict.fromkeys(names, 0.5), TEXT_BLOCK: 0.0}]
    for _ in range(6):
        settings.append(dict(zip(names, rng.choice([0.0, 0.5, 1.0, 2.0], len(names)), strict=True)))
    for weights in settings:
        if not any(weights.values()):
            continue
        np.testing.assert_array_equal(
            top_k(blocks, pruned, weights, 5), top_k(blocks, full, weights, 5)
        )
