"""Interaction weighting from config, time decay, and segment popularity."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import InteractionRule, PopularityConfig
from fashion_recs.stages.interactions import (
    aggregate_user_items,
    decay_weight,
    sort_events,
    sort_events_with_codes,
    weight_events,
)
from fashion_recs.stages.popular import popular_products

AS_OF = as_of_timestamp(date(2026, 11, 1))
RULES = [
    InteractionRule(event_name="view", button_name=None, category="view", weight=1.0),
    InteractionRule(event_name="click", button_name="bag", category="bag", weight=4.0),
    InteractionRule(event_name="click", button_name=None, category="click", weight=0.5),
]


def events(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "event_name": pl.String,
            "button_name": pl.String,
            "event_ts": pl.Datetime("us", "UTC"),
            "product_id": pl.String,
            "product_slot": pl.String,
        },
        orient="row",
    )


def test_exact_button_rule_wins_over_any_button_rule_and_unmapped_are_returned() -> None:
    ts = datetime(2026, 10, 31, tzinfo=UTC)
    frame = events(
        [
            ("U1", "view", None, ts, "p1", "s"),
            ("U1", "click", "bag", ts, "p1", "s"),
            ("U1", "click", "heart", ts, "p2", "s"),
            ("U1", "purchase", None, ts, "p2", "s"),
        ]
    )
    weighted, unmapped = weight_events(frame, RULES)
    assert weighted.select("category", "weight").rows() == [
        ("view", 1.0),
        ("bag", 4.0),
        ("click", 0.5),
    ]
    assert unmapped["event_name"].to_list() == ["purchase"]


def test_decay_halves_weight_every_half_life() -> None:
    frame = pl.DataFrame({"ts": [AS_OF, AS_OF - timedelta(days=7), AS_OF + timedelta(days=1)]})
    values = frame.select(decay_weight(pl.lit(8.0), pl.col("ts"), AS_OF, 7.0)).to_series()
    assert values.to_list() == pytest.approx([8.0, 4.0, 8.0])


def test_user_items_aggregate_counts_weights_and_strongest_signal() -> None:
    t0 = AS_OF - timedelta(days=30)
    frame = weight_events(
        events(
            [
                ("U1", "view", None, t0, "p1", "s"),
                ("U1", "click", "bag", AS_OF, "p1", "s"),
                ("U2", "view", None, AS_OF, "p1", "s"),
            ]
        ),
        RULES,
    )[0]
    agg = aggregate_user_items(frame, AS_OF, 30.0).rows(named=True)
    u1 = agg[0]
    assert (u1["user_id"], u1["n_events"], u1["weight_sum"]) == ("U1", 2, 5.0)
    assert u1["decayed_weight"] == pytest.approx(4.0 + 0.5)
    assert u1["strongest_category"] == "bag" and u1["first_ts"] == t0


def test_popularity_per_segment_with_minimum_users_and_overall_fallback() -> None:
    ts = AS_OF
    rows = []
    for u in range(6):  # six young northerners love p1
        rows.append((f"Y{u}", "p1", ts, 1.0))
    for u in range(2):  # two older southerners love p2: too few for their own segment
        rows += [(f"O{u}", "p2", ts, 1.0), (f"O{u}", "p3", ts, 1.0)]
    interactions = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "product_id": pl.String,
            "event_ts": pl.Datetime("us", "UTC"),
            "weight": pl.Float64,
        },
        orient="row",
    )
    users = pl.DataFrame(
        {
            "user_id": [f"Y{u}" for u in range(6)] + ["O0", "O1"],
            "age_group": ["18-24"] * 6 + ["55-64"] * 2,
            "region": ["north"] * 6 + ["south"] * 2,
        }
    )
    cfg = PopularityConfig(top_k=2, half_life_days=14, min_segment_users=3)
    table = popular_products(interactions, users, cfg, AS_OF, "unknown")
    overall = table.filter(pl.col("segment_type") == "overall")
    assert overall.select("rank", "product_id", "n_users").rows() == [(1, "p1", 6), (2, "p2", 2)]
    segments = table.filter(pl.col("segment_type") == "age_group_region")
    assert segments.select("age_group", "region", "product_id").rows() == [("18-24", "north", "p1")]
    assert table["segment_type"].unique(maintain_order=True).to_list() == [
        "overall",
        "age_group",
        "region",
        "age_group_region",
    ]


def _popular_by_event(
    interactions: pl.DataFrame, users: pl.DataFrame, cfg: PopularityConfig
) -> pl.DataFrame:
    """Popularity straight from the events: every event's decayed weight summed per
    segment and product, a product's users counted distinct."""
    scored = (
        interactions.select(
            "user_id",
            "product_id",
            decay_weight(pl.col("weight"), pl.col("event_ts"), AS_OF, cfg.half_life_days).alias(
                "score"
            ),
        )
        .join(users, on="user_id", how="left")
        .with_columns(pl.col("age_group", "region").fill_null("unknown"))
    )
    tables = []
    for level, cols in {
        "overall": [],
        "age_group": ["age_group"],
        "region": ["region"],
        "age_group_region": ["age_group", "region"],
    }.items():
        frame = scored.with_columns(pl.lit(1).alias("_all"))
        for col in cols:
            frame = frame.filter(pl.col(col) != "unknown")
        keys = cols or ["_all"]
        sizes = frame.group_by(keys).agg(pl.col("user_id").n_unique().alias("n"))
        big = sizes.filter(pl.col("n") >= (cfg.min_segment_users if cols else 1))
        ranked = (
            frame.join(big.select(keys), on=keys)
            .group_by([*keys, "product_id"])
            .agg(pl.col("score").sum(), pl.col("user_id").n_unique().alias("n_users"))
            .sort(
                [*keys, "score", "n_users", "product_id"],
                descending=[False] * len(keys) + [True, True, False],
            )
            .with_columns(pl.int_range(1, pl.len() + 1).over(keys).alias("rank"))
            .filter(pl.col("rank") <= cfg.top_k)
        )
        tables.append(
            ranked.select(
                pl.lit(level).alias("segment_type"),
                *[
                    (pl.col(c) if c in cols else pl.lit(None, pl.String)).alias(c)
                    for c in ("age_group", "region")
                ],
                "rank",
                "product_id",
                "score",
                "n_users",
            )
        )
    return pl.concat(tables)


@pytest.mark.parametrize("seed", [0, 1])
def test_popularity_from_user_scores_equals_popularity_from_every_event(seed: int) -> None:
    """Summed per (user, product) first, a product's users are its rows: the same tables as
    summing every event and counting its users distinct (repeat events included)."""
    rng = np.random.default_rng(seed)
    n = 3000
    interactions = pl.DataFrame(
        {
            "user_id": [f"U{u}" for u in rng.integers(0, 120, n)],
            "product_id": [f"p{p}" for p in rng.zipf(1.6, n) % 60],
            "event_ts": [AS_OF - timedelta(hours=int(h)) for h in rng.integers(0, 24 * 40, n)],
            "weight": rng.choice([1.0, 2.0, 4.0], n),
        }
    )
    users = pl.DataFrame(
        {
            "user_id": [f"U{u}" for u in range(100)],  # the last 20 users have no answers
            "age_group": rng.choice(["18-24", "25-34", "unknown"], 100).tolist(),
            "region": rng.choice(["north", "south", "east"], 100).tolist(),
        }
    )
    cfg = PopularityConfig(top_k=5, half_life_days=14, min_segment_users=8)
    got = popular_products(interactions, users, cfg, AS_OF, "unknown")
    want = _popular_by_event(interactions, users, cfg)
    assert got.height == want.height > 0
    key = ["segment_type", "age_group", "region", "rank"]
    joined = got.join(want, on=key, how="full", nulls_equal=True, suffix="_want")
    assert joined["product_id"].to_list() == joined["product_id_want"].to_list()
    assert joined["n_users"].to_list() == joined["n_users_want"].to_list()
    assert joined["score"].to_numpy() == pytest.approx(joined["score_want"].to_numpy(), rel=1e-12)


def _weights_by_join(frame: pl.DataFrame, rules: list[InteractionRule]) -> pl.DataFrame:
    """The rule table joined in: exact (event, button) first, then event-only rules."""
    table = pl.DataFrame(
        [(r.event_name, r.button_name, r.category, float(r.weight)) for r in rules],
        schema={
            "event_name": pl.String,
            "button_name": pl.String,
            "category": pl.String,
            "weight": pl.Float64,
        },
        orient="row",
    )
    exact = table.filter(pl.col("button_name").is_not_null())
    loose = table.filter(pl.col("button_name").is_null()).drop("button_name")
    joined = frame.join(exact, on=["event_name", "button_name"], how="left", maintain_order="left")
    joined = joined.join(loose, on="event_name", how="left", suffix="_any", maintain_order="left")
    return joined.with_columns(
        pl.coalesce("category", "category_any").alias("category"),
        pl.coalesce("weight", "weight_any").alias("weight"),
    ).drop("category_any", "weight_any")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_matching_agrees_with_joining_the_rule_table(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5_000
    names = np.array(["view", "click", "purchase", "open"], dtype=object)
    buttons = np.array(["bag", "heart", None, ""], dtype=object)
    ts = datetime(2026, 10, 1, tzinfo=UTC)
    frame = events(
        [
            (f"U{u}", names[e], buttons[b], ts + timedelta(minutes=int(m)), f"p{p}", "s")
            for u, e, b, m, p in zip(
                rng.integers(0, 50, n),
                rng.integers(0, len(names), n),
                rng.integers(0, len(buttons), n),
                rng.integers(0, 10_000, n),
                rng.integers(0, 30, n),
                strict=True,
            )
        ]
    )
    rules = [*RULES, InteractionRule(event_name="open", button_name="", category="o", weight=2)]
    expected = _weights_by_join(frame, rules)
    weighted, unmapped = weight_events(frame, rules)
    assert weighted.equals(
        expected.filter(pl.col("category").is_not_null()).select(weighted.columns)
    )
    assert unmapped.select(frame.columns).equals(
        expected.filter(pl.col("category").is_null()).select(frame.columns)
    )
    assert weighted.height + unmapped.height == n


def random_weighted(n: int, seed: int) -> pl.DataFrame:
    """Weighted events with repeated users, products and timestamps, ids of uneven length
    and case (so lexical order differs from length or insertion order), and two categories
    sharing a weight (the strongest signal's tie goes to the larger category name)."""
    rng = np.random.default_rng(seed)
    users = [f"{c}{i}" for i, c in enumerate(rng.choice(list("aBcDe"), 40))]
    products = [f"p{i * 7 % 23}{'x' * (i % 3)}" for i in range(30)]
    signals = [("view", 1.0), ("click", 1.0), ("bag", 4.0), ("wish", 2.5)]
    picked = rng.integers(0, len(signals), n)
    base = datetime(2026, 10, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "user_id": rng.choice(users, n),
            "event_name": "e",
            "button_name": None,
            "event_ts": [base + timedelta(hours=int(h)) for h in rng.integers(0, 50, n)],
            "product_id": rng.choice(products, n),
            "product_slot": "s",
            "category": [signals[i][0] for i in picked],
            "weight": [signals[i][1] for i in picked],
        },
        schema_overrides={"button_name": pl.String},
    )


def test_the_packed_sort_key_falls_back_when_user_and_time_do_not_fit() -> None:
    """User code and microseconds are packed into one sort key when they fit in 63 bits; a
    log spanning centuries does not fit, and the three-key sort gives the same order."""
    from fashion_recs.stages.interactions import _packed_order

    frame = random_weighted(2_000, seed=9)
    wide = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0)
        .then(pl.col("event_ts").dt.offset_by("-800y"))
        .otherwise(pl.col("event_ts").dt.offset_by("300y"))
        .alias("event_ts")
    )
    keys = pl.DataFrame({"u": [0, 1 << 20], "t": wide["event_ts"][:2], "p": [0, 0]})
    assert _packed_order(keys) is None
    for data in (frame, wide):
        assert sort_events(data).equals(
            data.sort("user_id", "event_ts", "product_id", maintain_order=True)
        )


def test_integer_code_sort_and_aggregate_equal_the_string_versions() -> None:
    """The interactions stage sorts and groups on lexical codes of the ids; held to the
    plain string sort and group-by it replaced."""
    frame = random_weighted(3_000, seed=5)
    assert sort_events(frame).equals(
        frame.sort("user_id", "event_ts", "product_id", maintain_order=True)
    )
    decayed = decay_weight(pl.col("weight"), pl.col("event_ts"), AS_OF, 30.0)
    expected = (
        frame.with_columns(decayed.alias("decayed"))
        .group_by("user_id", "product_id")
        .agg(
            pl.len().cast(pl.Int64).alias("n_events"),
            pl.col("weight").sum().alias("weight_sum"),
            pl.col("decayed").sum().alias("decayed_weight"),
            pl.col("category").sort_by(["weight", "category"]).last().alias("strongest_category"),
            pl.col("event_ts").min().alias("first_ts"),
            pl.col("event_ts").max().alias("last_ts"),
        )
        .sort("user_id", "product_id")
    )
    got = aggregate_user_items(frame, AS_OF, 30.0)
    assert (
        got.select(expected.columns)
        .drop("weight_sum", "decayed_weight")
        .equals(expected.drop("weight_sum", "decayed_weight"))
    )
    for column in ("weight_sum", "decayed_weight"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-12)
    # The stage hands the sort's codes on to the aggregate instead of computing them again.
    ordered, codes = sort_events_with_codes(frame)
    assert ordered.equals(sort_events(frame))
    assert aggregate_user_items(ordered, AS_OF, 30.0, codes).equals(
        aggregate_user_items(ordered, AS_OF, 30.0)
    )
