"""The quality checks: every suite passes on a valid artifact and catches realistic defects."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from fashion_recs import contract
from fashion_recs.config import load_config
from fashion_recs.errors import QualityCheckFailed
from fashion_recs.quality.checks import QUALITY_ARTIFACTS, build_data_docs, run_check
from fashion_recs.quality.suites import CheckContext, build_suite

P1, P2, P3 = "a" * 24, "b" * 24, "0123456789abcdef01234567"
UNKNOWN_ID = "f" * 24
TS = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
EXTRA = ("gender", "signup_channel")

CONTEXT = CheckContext(
    catalogue_ids=frozenset({P1, P2, P3}),
    categories=("view", "wishlist", "add_to_bag"),
    top_k=3,
    extra_user_columns=EXTRA,
)


def frame(schema: pa.Schema, rows: list[dict]) -> pd.DataFrame:
    """A frame as a stage reads an artifact back: through Arrow, with the contract's types."""
    return pa.Table.from_pylist(rows, schema=schema).to_pandas()


def product(pid: str, price: float = 10.0, original: float = 12.0) -> dict:
    return {
        "product_id": pid,
        "title": f"Dress {pid[:4]}",
        "group_key": pid,
        "price": price,
        "currency": "EUR",
        "original_price": original,
        "is_discounted": price < original,
        "discount_pct": round((1 - price / original) * 100, 2),
        "review_rating": 4.5,
        "review_count": 12,
        "images": ["a.jpg"],
    }


def valid_frames() -> dict[str, pd.DataFrame]:
    users = [
        {
            "user_id": "u1",
            "birth_date": date(1990, 5, 1),
            "age": 36.0,
            "age_source": "answer",
            "age_group": "35-44",
            "city": "Lyon",
            "region": "Rhone",
            "location_source": "reported",
            "gender": "f",
            "signup_channel": "app",
        },
        {
            "user_id": "u2",
            "age": None,
            "age_source": "none",
            "age_group": "unknown",
            "city": "unknown",
            "region": "unknown",
            "location_source": "unknown",
        },
    ]
    events = [
        ("u1", "product_details_page_view", None, P1, "product_id_cleaned"),
        ("u1", "button_click", "heart_button", P2, "product_id_cleaned"),
        ("u2", "product_similar_items_clicking", None, P3, "product_id_cleaned2"),
    ]
    popular = [
        ("overall", None, None, 1, P1),
        ("overall", None, None, 2, P2),
        ("age_group", "35-44", None, 1, P2),
        ("region", None, "Rhone", 1, P3),
        ("age_group_region", "35-44", "Rhone", 1, P1),
    ]
    return {
        "products": frame(contract.PRODUCTS_SCHEMA, [product(P1), product(P2), product(P3, 5, 5)]),
        "price_history": frame(
            contract.PRICE_HISTORY_SCHEMA,
            [
                {"product_id": P1, "period": 0, "value": 12.0, "original": True},
                {"product_id": P1, "period": 1, "value": 10.0, "original": False},
                {"product_id": P2, "period": 0, "value": 12.0, "original": True},
            ],
        ),
        "events": frame(
            contract.EVENTS_SCHEMA,
            [
                dict(
                    zip(
                        ["user_id", "event_name", "button_name", "product_id", "product_slot"],
                        e,
                        strict=True,
                    )
                )
                | {"event_ts": TS}
                for e in events
            ],
        ),
        "event_product_ids": frame(
            contract.EVENT_PRODUCT_IDS_SCHEMA,
            [
                {"product_id": P1, "n_events": 3, "in_catalogue": True},
                {"product_id": "zz999", "n_events": 1, "in_catalogue": False},
            ],
        ),
        "users": frame(contract.users_schema(list(EXTRA)), users),
        "interactions": frame(
            contract.INTERACTIONS_SCHEMA,
            [
                {
                    "user_id": "u1",
                    "product_id": P1,
                    "event_ts": TS,
                    "event_name": "product_details_page_view",
                    "category": "view",
                    "weight": 1.0,
                },
                {
                    "user_id": "u1",
                    "product_id": P2,
                    "event_ts": TS,
                    "event_name": "button_click",
                    "button_name": "heart_button",
                    "category": "wishlist",
                    "weight": 3.0,
                },
            ],
        ),
        "user_items": frame(
            contract.USER_ITEMS_SCHEMA,
            [
                {
                    "user_id": "u1",
                    "product_id": pid,
                    "n_events": 2,
                    "weight_sum": 4.0,
                    "decayed_weight": decayed,
                    "strongest_category": "wishlist",
                    "first_ts": TS,
                    "last_ts": TS,
                }
                for pid, decayed in [(P1, 4.0), (P2, 1.5)]
            ],
        ),
        "popular_products": frame(
            contract.POPULAR_SCHEMA,
            [
                dict(
                    zip(
                        ["segment_type", "age_group", "region", "rank", "product_id"],
                        p,
                        strict=True,
                    )
                )
                | {"score": 1.0 / p[3], "n_users": 25}
                for p in popular
            ],
        ),
        "baskets": frame(
            contract.BASKETS_SCHEMA,
            [
                {
                    "basket_id": b,
                    "user_id": "u1",
                    "basket_start": TS,
                    "product_id": pid,
                    "first_category": "view",
                }
                for b, pid in [(0, P1), (0, P2), (1, P3)]
            ],
        ),
        "fbt_rules": frame(
            contract.FBT_RULES_SCHEMA,
            [
                {
                    "antecedent": a,
                    "consequent": c,
                    "antecedent_len": 1,
                    "consequent_len": 1,
                    "n_antecedent": na,
                    "n_consequent": nc,
                    "n_both": 6,
                    "n_baskets": 100,
                    "antecedent_support": na / 100,
                    "consequent_support": nc / 100,
                    "support": 0.06,
                    "confidence": 6 / na,
                    "lift": 600 / (na * nc),
                    "leverage": 0.06 - na * nc / 10_000,
                    "conviction": None,
                    "engine": "sparse",
                }
                for a, c, na, nc in [(P1, P2, 8, 6), (P2, P1, 6, 8)]
            ],
        ),
        "similar_products": frame(
            contract.SIMILAR_PRODUCTS_SCHEMA,
            [
                {
                    "product_id": a,
                    "rank": r,
                    "similar_product_id": b,
                    "score": sc,
                    "model": "text_tfidf",
                    "is_default": True,
                }
                for a, r, b, sc in [(P1, 1, P2, 0.9), (P1, 2, P3, 0.5), (P2, 1, P1, 0.9)]
            ],
        ),
        "fbt_recommendations": frame(
            contract.FBT_RECOMMENDATIONS_SCHEMA,
            [
                {
                    "product_id": P1,
                    "rank": 1,
                    "recommended_product_id": P2,
                    "score": 0.75,
                    "source": "rules",
                    "support": 0.06,
                    "confidence": 0.75,
                    "lift": 12.5,
                },
                {
                    "product_id": P1,
                    "rank": 2,
                    "recommended_product_id": P3,
                    "score": 3.0,
                    "source": "co_viewed",
                },
                {
                    "product_id": P2,
                    "rank": 1,
                    "recommended_product_id": P1,
                    "score": 1.0,
                    "source": "rules",
                    "support": 0.06,
                    "confidence": 1.0,
                    "lift": 12.5,
                },
            ],
        ),
        "user_recommendations": frame(
            contract.USER_RECOMMENDATIONS_SCHEMA,
            [
                {"user_id": "u1", "rank": 1, "product_id": P2, "score": 0.9, "strategy": "blend"},
                {"user_id": "u1", "rank": 2, "product_id": P3, "score": 0.5, "strategy": "blend"},
                {
                    "user_id": "u2",
                    "rank": 1,
                    "product_id": P2,
                    "score": 3.0,
                    "strategy": "popular_overall",
                },
            ],
        ),
        "user_routes": frame(
            contract.USER_ROUTES_SCHEMA,
            [
                {
                    "user_id": "u1",
                    "route": "existing",
                    "strategy": "blend",
                    "n_items": 4,
                    "age_group": "25-34",
                    "region": "North",
                },
                {
                    "user_id": "u2",
                    "route": "new_without_events",
                    "strategy": "popular_overall",
                    "n_items": 0,
                    "age_group": None,
                    "region": None,
                },
            ],
        ),
        "item_candidates": frame(
            contract.ITEM_CANDIDATES_SCHEMA,
            [
                {
                    "product_id": P1,
                    "rank": 1,
                    "candidate_product_id": P2,
                    "score": 1.0,
                    "source": "item_knn",
                },
                {
                    "product_id": P1,
                    "rank": 2,
                    "candidate_product_id": P3,
                    "score": 0.5,
                    "source": "fbt",
                },
            ],
        ),
    }


def test_every_artifact_with_a_suite_is_covered_here():
    assert set(QUALITY_ARTIFACTS) == set(valid_frames())


@pytest.mark.parametrize("artifact", QUALITY_ARTIFACTS)
def test_valid_artifact_passes_and_result_is_saved(artifact: str, tmp_path: Path):
    summary = run_check(artifact, valid_frames()[artifact], CONTEXT, tmp_path)

    assert summary["success"], summary["failed"]
    assert summary["failed"] == []
    assert summary["evaluated"] == len(build_suite(artifact, CONTEXT).expectations) >= 3
    saved = json.loads((tmp_path / f"{artifact}.json").read_text())
    assert saved["suite_name"] == artifact
    assert saved["success"] is True
    assert summary["results_path"] == str(tmp_path / f"{artifact}.json")
    json.dumps(summary)  # fit for an XCom


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[row, column] = value
        return df

    return mutate


def _duplicate_first_row(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[0]]], ignore_index=True)


def _swap_first_two_columns(df: pd.DataFrame) -> pd.DataFrame:
    cols = list(df.columns)
    return df[[cols[1], cols[0], *cols[2:]]]


def _drop_overall(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["segment_type"] != "overall"].reset_index(drop=True)


DEFECTS = [
    ("products", _duplicate_first_row, "to_be_unique", "column 'product_id'"),
    ("products", _set("product_id", 1, "ObjectId('bad')"), "match_regex", "column 'product_id'"),
    ("products", _set("price", 0, 0.0), "to_be_between", "column 'price'"),
    ("products", _set("price", 0, 20.0), "a_to_be_greater_than_b", "columns 'original_price'"),
    ("products", _set("review_rating", 2, 7.5), "to_be_between", "column 'review_rating'"),
    ("products", _set("discount_pct", 2, -3.0), "to_be_between", "column 'discount_pct'"),
    ("products", _swap_first_two_columns, "match_ordered_list", "the table"),
    ("products", _set("group_key", 1, None), "not_be_null", "column 'group_key'"),
    ("price_history", _set("product_id", 2, UNKNOWN_ID), "in_reference_set", "column 'product_id'"),
    ("price_history", _duplicate_first_row, "compound_columns", "columns 'product_id', 'period'"),
    ("price_history", _set("value", 0, -1.0), "to_be_between", "column 'value'"),
    ("events", _set("product_id", 0, UNKNOWN_ID), "in_reference_set", "column 'product_id'"),
    ("events", _set("button_name", 1, None), "not_be_null", "column 'button_name'"),
    ("events", _set("button_name", 1, "share_button"), "to_be_in_set", "column 'button_name'"),
    ("events", _set("product_slot", 0, "related_ids"), "to_be_in_set", "column 'product_slot'"),
    ("events", _set("user_id", 2, None), "not_be_null", "column 'user_id'"),
    ("event_product_ids", _set("n_events", 0, 0), "to_be_between", "column 'n_events'"),
    ("event_product_ids", _duplicate_first_row, "to_be_unique", "column 'product_id'"),
    ("users", _duplicate_first_row, "to_be_unique", "column 'user_id'"),
    ("users", _set("age", 0, 150.0), "to_be_between", "column 'age'"),
    ("users", _set("age_source", 0, "guess"), "to_be_in_set", "column 'age_source'"),
    ("users", _set("age_group", 0, "30-39"), "to_be_in_set", "column 'age_group'"),
    ("users", _set("location_source", 1, "ip"), "to_be_in_set", "column 'location_source'"),
    ("users", lambda df: df.drop(columns=["signup_channel"]), "ordered_list", "the table"),
    ("interactions", _set("product_id", 0, UNKNOWN_ID), "in_reference_set", "column 'product_id'"),
    ("interactions", _set("category", 1, "purchase"), "to_be_in_set", "column 'category'"),
    ("interactions", _set("weight", 1, 0.0), "to_be_between", "column 'weight'"),
    ("user_items", _set("decayed_weight", 1, 4.5), "a_to_be_greater", "'decayed_weight'"),
    ("user_items", _duplicate_first_row, "compound_columns", "columns 'user_id', 'product_id'"),
    ("user_items", _set("n_events", 0, 0), "to_be_between", "column 'n_events'"),
    ("popular_products", _set("rank", 0, 0), "to_be_between", "column 'rank'"),
    ("user_recommendations", _set("product_id", 0, UNKNOWN_ID), "in_reference_set", "'product_id'"),
    (
        "user_recommendations",
        _set("product_id", 1, P2),
        "compound_columns",
        "'user_id', 'product_id'",
    ),
    ("user_routes", _set("route", 0, "vip"), "to_be_in_set", "column 'route'"),
    ("user_routes", _duplicate_first_row, "to_be_unique", "column 'user_id'"),
    ("item_candidates", _set("source", 0, "guess"), "to_be_in_set", "column 'source'"),
    ("popular_products", _set("rank", 1, 4), "to_be_between", "column 'rank'"),
    ("popular_products", _set("rank", 1, 1), "compound_columns_to_be_unique", "'rank'"),
    ("popular_products", _set("product_id", 3, UNKNOWN_ID), "in_reference_set", "'product_id'"),
    ("popular_products", _set("segment_type", 2, "city"), "to_be_in_set", "'segment_type'"),
    ("popular_products", _drop_overall, "distinct_values_to_contain_set", "'segment_type'"),
    ("baskets", _duplicate_first_row, "compound_columns", "columns 'basket_id', 'product_id'"),
    ("baskets", _set("product_id", 2, UNKNOWN_ID), "in_reference_set", "column 'product_id'"),
    ("baskets", _set("first_category", 0, "share"), "to_be_in_set", "'first_category'"),
    ("fbt_rules", _set("confidence", 0, 1.5), "to_be_between", "column 'confidence'"),
    ("fbt_rules", _set("lift", 0, 0.0), "to_be_between", "column 'lift'"),
    ("fbt_rules", _set("n_both", 0, 9), "a_to_be_greater", "'n_antecedent'"),
    ("fbt_rules", _duplicate_first_row, "compound_columns", "'antecedent', 'consequent'"),
    ("fbt_recommendations", _set("rank", 1, 1), "compound_columns", "'product_id', 'rank'"),
    ("similar_products", _set("rank", 1, 1), "compound_columns", "'model', 'product_id', 'rank'"),
    (
        "similar_products",
        _set("similar_product_id", 0, UNKNOWN_ID),
        "in_reference_set",
        "'similar_product_id'",
    ),
    ("similar_products", _set("score", 0, 1.5), "to_be_between", "column 'score'"),
    ("fbt_recommendations", _set("rank", 0, 13), "to_be_between", "column 'rank'"),
    ("fbt_recommendations", _set("source", 1, "guess"), "to_be_in_set", "column 'source'"),
    (
        "fbt_recommendations",
        _set("recommended_product_id", 1, UNKNOWN_ID),
        "in_reference_set",
        "'recommended_product_id'",
    ),
]


@pytest.mark.parametrize(
    ("artifact", "defect", "expectation", "where"),
    DEFECTS,
    ids=[f"{a}-{e}-{w}" for a, _, e, w in DEFECTS],
)
def test_realistic_defect_fails_the_check_naming_the_column(
    artifact: str, defect: Callable, expectation: str, where: str, tmp_path: Path
):
    bad = defect(valid_frames()[artifact])

    with pytest.raises(QualityCheckFailed) as failure:
        run_check(artifact, bad, CONTEXT, tmp_path)

    message = str(failure.value)
    assert f"artifact {artifact!r}" in message
    assert any(expectation in line and where in line for line in message.splitlines()), message
    assert str(tmp_path / f"{artifact}.json") in message
    assert json.loads((tmp_path / f"{artifact}.json").read_text())["success"] is False


def test_upstream_row_count_bounds_the_artifact(tmp_path: Path):
    products = valid_frames()["products"]
    context = CheckContext(upstream_rows=2)

    with pytest.raises(QualityCheckFailed, match=r"expect_table_row_count_to_be_between.*3"):
        run_check("products", products, context, tmp_path)
    assert run_check("products", products, CheckContext(upstream_rows=3), tmp_path)["success"]


def test_known_users_are_checked_when_given(tmp_path: Path):
    context = CheckContext(catalogue_ids=CONTEXT.catalogue_ids, user_ids=["u2"])

    summary = run_check(
        "user_items", valid_frames()["user_items"], context, tmp_path, raise_on_failure=False
    )

    assert [f["column"] for f in summary["failed"]] == ["user_id"]


def test_failure_summary_counts_all_and_samples_five(tmp_path: Path):
    events = valid_frames()["events"]
    many = pd.concat([events] * 4, ignore_index=True)
    many["product_id"] = [f"{i:024x}" for i in range(len(many))]

    summary = run_check("events", many, CONTEXT, tmp_path, raise_on_failure=False)

    assert summary["success"] is False
    (failed,) = summary["failed"]
    assert failed["expectation"] == "expect_column_values_to_be_in_reference_set"
    assert failed["column"] == "product_id"
    assert failed["unexpected_count"] == 12
    assert failed["partial_unexpected_list"] == [f"{i:024x}" for i in range(5)]
    assert summary["rows"] == 12
    json.dumps(summary)


def test_failure_message_lists_every_failing_expectation_with_samples(tmp_path: Path):
    users = valid_frames()["users"]
    users.loc[0, "age"] = 150.0
    users.loc[1, "age_source"] = "guess"

    with pytest.raises(QualityCheckFailed) as failure:
        run_check("users", users, CONTEXT, tmp_path)

    lines = str(failure.value).splitlines()
    assert lines[0].startswith("Quality check failed for artifact 'users': 2 of ")
    # Failures are listed by column, whatever order GX evaluated them in.
    assert "column 'age': 1 unexpected values, e.g. [150.0]" in lines[1]
    assert "column 'age_source': 1 unexpected values, e.g. ['guess']" in lines[2]
    assert lines[3].startswith(f"Full validation result: {tmp_path / 'users.json'}")


def test_catalogue_is_referenced_not_copied_into_results(tmp_path: Path):
    catalogue = frozenset(f"{i:024x}" for i in range(5_000)) | CONTEXT.catalogue_ids
    context = CheckContext(catalogue_ids=catalogue)

    run_check("events", valid_frames()["events"], context, tmp_path)

    text = (tmp_path / "events.json").read_text()
    assert "reference_size" in text and "5003" in text
    assert f"{4_999:024x}" not in text
    assert len(text) < 30_000


def test_suite_that_needs_the_catalogue_refuses_to_build_without_it():
    with pytest.raises(ValueError, match=r"'events' suite needs CheckContext.catalogue_ids"):
        build_suite("events", CheckContext())
    with pytest.raises(ValueError, match="no expectation suite for artifact 'sessions'"):
        build_suite("sessions", CONTEXT)


def test_event_names_are_checked_when_allowed_names_are_given(tmp_path: Path):
    context = CheckContext(
        catalogue_ids=CONTEXT.catalogue_ids, allowed_event_names=["product_details_page_view"]
    )

    summary = run_check(
        "events", valid_frames()["events"], context, tmp_path, raise_on_failure=False
    )

    assert [(f["column"], f["unexpected_count"]) for f in summary["failed"]] == [("event_name", 2)]


def test_context_from_config_carries_the_run_configuration():
    config = load_config()
    context = CheckContext.from_config(config, catalogue_ids=[P1], upstream_rows=10)

    assert context.catalogue_ids == frozenset({P1})
    assert context.upstream_rows == 10
    assert context.categories == tuple(sorted({r.category for r in config.interactions.rules}))
    assert context.events_of_interest == tuple(config.events.events_of_interest)
    assert context.top_k == config.popularity.top_k
    assert context.extra_user_columns == tuple(config.columns.answers.extra)
    hash(context)  # frozen and hashable: lists were stored as tuples


def test_data_docs_render_every_saved_result(tmp_path: Path):
    results, docs = tmp_path / "quality", tmp_path / "data_docs"
    frames = valid_frames()
    run_check("products", frames["products"], CONTEXT, results, run_name="manual__2026-10-01")
    bad_users = frames["users"].assign(age=[150.0, None])
    run_check("users", bad_users, CONTEXT, results, raise_on_failure=False)

    index = build_data_docs(results, docs)

    assert index == docs / "index.html"
    html = index.read_text()
    assert "fashion_recs-products" in html and "fashion_recs-users" in html
    pages = {p.parts[len(docs.parts) + 1]: p for p in docs.glob("validations/*/*/*/*.html")}
    assert set(pages) == {"products", "users"}
    assert "manual__2026-10-01" in str(pages["products"])
    users_page = pages["users"].read_text()
    assert "age" in users_page and "150.0" in users_page and "Failed" in users_page
    assert (docs / "expectations" / "products.html").exists()

    # A rebuild replaces the site instead of mixing two builds.
    (results / "users.json").unlink()
    build_data_docs(results, docs)
    assert not list(docs.glob("validations/users/**/*.html"))
    assert list(docs.glob("validations/products/**/*.html"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data_docs")]


def test_data_docs_need_saved_results(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no validation results"):
        build_data_docs(tmp_path, tmp_path / "docs")
