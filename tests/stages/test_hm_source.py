"""The H&M adapter: articles, transactions and customers to the seed stages' artifacts.

`tests/fixtures/hm/` is a small export in the public H&M schema with planted malformed rows
(see the counts below); the tests run each stage on it once per module.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import RetailerConfig, load_config
from fashion_recs.contract import (
    EVENT_PRODUCT_IDS,
    EVENTS_SCHEMA,
    PRICE_HISTORY_SCHEMA,
    PRODUCTS_SCHEMA,
    quarantine,
    users_schema,
)
from fashion_recs.errors import FashionRecsError, RejectRateExceeded
from fashion_recs.stages.hm_source import (
    build_demographics_hm,
    build_events_hm,
    build_products_hm,
    image_path,
    impute_missing_ages,
)
from tests.helpers import write_csv

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "hm"
EXAMPLE = ROOT / "config" / "hm_example.yaml"
AS_OF = date(2020, 9, 15)
TX_HEADER = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]


def hm_config(data_root: Path, folder: Path = FIXTURE, **extra: Any) -> RetailerConfig:
    """The example H&M config pointed at `folder`'s export and a private data root."""
    overrides = {
        "data_root": str(data_root),
        "sources": {
            "articles": {"uri": str(folder / "articles.csv")},
            "customers": {"uri": str(folder / "customers.csv")},
            "transactions": [{"uri": str(folder / "transactions_train.csv")}],
        },
        **extra,
    }
    return load_config(EXAMPLE, overrides=overrides)


def read_fixture(name: str) -> list[dict[str, str]]:
    with open(FIXTURE / name, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three stages on the fixture, once for the module."""
    config = hm_config(tmp_path_factory.mktemp("hm") / "data")
    paths = RunPaths(config.data_root_path, config.retailer, "hm_run")
    transactions = [FIXTURE / "transactions_train.csv"]
    products = build_products_hm(config, paths, FIXTURE / "articles.csv", transactions, AS_OF)
    ids = pq.read_table(products["products"], columns=["product_id"]).column(0).to_pylist()
    events = build_events_hm(config, paths, transactions, ids, AS_OF)
    users = build_demographics_hm(config, paths, FIXTURE / "customers.csv", AS_OF)
    return {
        "config": config,
        "paths": paths,
        "products": products,
        "events": events,
        "demographics": users,
    }


def quarantined(paths: RunPaths, stage: str) -> pd.DataFrame:
    return pq.read_table(paths.path(quarantine(stage))).to_pandas()


def test_example_config_validates_as_an_hm_export() -> None:
    config = load_config(EXAMPLE)
    assert config.sources.format == "hm"
    assert [name for name, _ in config.sources.named()] == [
        "articles",
        "customers",
        "transactions_1",
    ]
    assert config.events.events_of_interest == ["purchase"]
    assert {r.event_name for r in config.interactions.rules} == {"purchase"}
    assert config.fbt.baskets.delimiter == "user_day"
    assert config.fbt.baskets.categories == ["purchase"]
    assert config.evaluation.truth_dir is None
    assert config.columns.answers.extra == ["club_member_status", "fashion_news_frequency"]
    assert not any(e.enabled for e in config.similar.encoders)


# --- products ----------------------------------------------------------------------------------


def test_products_keep_leading_zeros_and_map_the_hm_columns(run) -> None:
    table = pq.read_table(run["products"]["products"])
    assert table.schema.equals(PRODUCTS_SCHEMA)
    products = table.to_pandas().set_index("product_id")
    assert products.index.str.fullmatch(r"0[0-9]{9}").all() and products.index.is_unique
    article = next(a for a in read_fixture("articles.csv") if a["article_id"] == "0108812005")
    row = products.loc["0108812005"]
    assert row["title"] == article["prod_name"] == "Luna sweater"
    assert row["target_audience"] == "menswear"  # index_group_name, lower-cased
    assert row["department"] == "sweater"  # product_type_name, lower-cased
    assert row["color"] == "White"
    assert row["original_description"] == article["detail_desc"]
    assert pd.isna(products.loc["0108775001", "original_description"])  # empty detail_desc
    assert products["currency"].isna().all() and products["sku"].isna().all()
    assert all(len(images) == 0 for images in products["images"])  # the fixture has none


def test_products_group_colour_variants_by_product_code(run) -> None:
    products = pq.read_table(run["products"]["products"]).to_pandas().set_index("product_id")
    codes = {a["article_id"]: a["product_code"] for a in read_fixture("articles.csv")}
    assert products.loc["0108775001", "group_key"] == "0108775"  # leading zero kept
    assert all(products.loc[pid, "group_key"] == codes[pid] for pid in products.index)


def test_articles_without_a_product_code_are_their_own_group(tmp_path) -> None:
    articles = read_fixture("articles.csv")[:3]
    articles[1]["product_code"] = articles[0]["product_code"]
    articles[2]["product_code"] = " "
    folder = tmp_path / "export"
    shutil.copytree(FIXTURE, folder)
    write_csv(folder / "articles.csv", list(articles[0]), [list(a.values()) for a in articles])
    config = hm_config(tmp_path / "data", folder)
    paths = RunPaths(config.data_root_path, config.retailer, "groups")
    summary = build_products_hm(
        config, paths, folder / "articles.csv", [folder / "transactions_train.csv"], AS_OF
    )
    products = pq.read_table(summary["products"]).to_pandas()
    first, second, third = (a["article_id"] for a in articles)
    assert dict(zip(products["product_id"], products["group_key"], strict=True)) == {
        first: articles[0]["product_code"],
        second: articles[0]["product_code"],
        third: third,
    }


def test_products_account_for_every_article_row(run) -> None:
    counts = run["products"]["counts"]
    assert (counts["rows_in"], counts["rows_out"], counts["rows_quarantined"]) == (84, 80, 4)
    rejected = quarantined(run["paths"], "products")
    assert sorted(zip(rejected["reason"], rejected["column"], strict=True)) == [
        ("bad_article_id", "article_id"),  # 108775015: lost its leading zero
        ("duplicate_id", "article_id"),
        ("malformed_csv_row", "*"),  # an extra, unquoted field
        ("missing_title", "prod_name"),
    ]
    assert rejected.loc[rejected["reason"] == "bad_article_id", "article_id"].item() == "108775015"
    # The repeated id's first row is the one kept.
    kept = pq.read_table(run["products"]["products"]).to_pandas().set_index("product_id")
    duplicate = rejected.loc[rejected["reason"] == "duplicate_id", "article_id"].item()
    assert kept.loc[duplicate, "title"] != "Repeat row"


def test_price_is_the_last_day_paid_by_as_of_and_original_the_highest(run) -> None:
    products = pq.read_table(run["products"]["products"]).to_pandas().set_index("product_id")
    # 0109923005: 30/590 paid on 08-01 (x2) and 08-20, 18/590 on 09-14 (x2), 30/590 on 09-20.
    sale = products.loc["0109923005"]
    assert sale["price"] == round(18 / 590, 8) and sale["original_price"] == round(30 / 590, 8)
    assert bool(sale["is_discounted"]) and sale["discount_pct"] == 40.0
    assert run["products"]["n_discounted"] == 1
    never_sold = products.loc["0113330001"]
    assert pd.isna(never_sold["price"]) and pd.isna(never_sold["original_price"])
    assert pd.isna(never_sold["is_discounted"]) and pd.isna(never_sold["discount_pct"])
    assert run["products"]["field_issues"] == {"no_transaction_by_as_of": 1}
    sold = products[products["price"].notna()]
    assert (sold["original_price"] >= sold["price"]).all()
    assert (sold.loc[~sold["is_discounted"].astype(bool), "discount_pct"] == 0).all()


def test_price_history_has_one_row_per_article_and_month(run) -> None:
    table = pq.read_table(run["products"]["price_history"])
    assert table.schema.equals(PRICE_HISTORY_SCHEMA)
    history = table.to_pandas()
    sale = history[history["product_id"] == "0109923005"]
    assert sale["period"].tolist() == [0, 1]  # August, September (09-20 is after as-of)
    assert sale["value"].tolist() == [round(30 / 590, 8), round(18 / 590, 8)]
    assert sale["original"].tolist() == [True, False]
    assert sale["is_current"].tolist() == [False, True]
    assert (sale["valid_from"].tolist(), sale["valid_to"].tolist()) == (
        [date(2020, 8, 1), date(2020, 9, 14)],
        [date(2020, 8, 20), date(2020, 9, 14)],
    )
    assert history.groupby("product_id")["is_current"].sum().eq(1).all()
    assert history["valid_to"].max() <= AS_OF


def test_images_are_listed_when_the_export_has_the_file(tmp_path) -> None:
    export = tmp_path / "export"
    shutil.copytree(FIXTURE, export)
    present = export / image_path("0108812005")
    present.parent.mkdir(parents=True)
    present.write_bytes(b"\xff\xd8\xff")
    config = hm_config(tmp_path / "data", export)
    paths = RunPaths(config.data_root_path, config.retailer, "images")
    transactions = [export / "transactions_train.csv"]
    summary = build_products_hm(config, paths, export / "articles.csv", transactions, AS_OF)
    products = pq.read_table(summary["products"]).to_pandas().set_index("product_id")
    assert list(products.loc["0108812005", "images"]) == ["images/010/0108812005.jpg"]
    assert list(products.loc["0108775001", "images"]) == []
    # The export ships images, so the 79 others without a file are reported.
    assert summary["field_issues"]["image_file_missing"] == 79


# --- events ------------------------------------------------------------------------------------


def test_transactions_become_purchase_events_of_their_day(run) -> None:
    table = pq.read_table(run["events"]["events"])
    assert table.schema.equals(EVENTS_SCHEMA)
    events = table.to_pandas()
    assert (events["event_name"] == "purchase").all() and events["button_name"].isna().all()
    assert (events["product_slot"] == "product_id_cleaned").all()
    assert str(events["event_ts"].dt.tz) == "UTC"
    assert (events["event_ts"] == events["event_ts"].dt.normalize()).all()  # 00:00 UTC
    assert events["product_id"].str.fullmatch(r"0[0-9]{9}").all()
    assert events["event_ts"].max() < pd.Timestamp("2020-09-16", tz="UTC")
    assert run["events"]["events_out"] == len(events) == 573


def test_transactions_after_as_of_are_filtered_and_malformed_ones_quarantined(run) -> None:
    rows = read_fixture("transactions_train.csv")
    after = sum(1 for r in rows if "2020-09-15" < r["t_dat"] <= "2020-12-31")
    counts = run["events"]["counts"]
    assert (counts["rows_in"], counts["rows_out"]) == (len(rows), 573) == (613, 573)
    assert counts["rows_filtered"] == run["events"]["rows_after_as_of"] == after == 31
    assert counts["reasons"] == {
        "bad_article_id": 2,  # 108775001 (short), 0108775X01
        "bad_date": 1,  # 2020-13-45
        "bad_price": 3,  # -0.0169, abc, and a short line without a price
        "implausible_timestamp": 1,  # 1990-01-01
        "missing_user_id": 1,
        "unknown_product_id": 1,  # 0999999999
    }
    rejected = quarantined(run["paths"], "events")
    columns = dict(zip(rejected["reason"], rejected["column"], strict=True))
    assert columns == {
        "missing_user_id": "customer_id",
        "bad_article_id": "article_id",
        "bad_date": "t_dat",
        "implausible_timestamp": "t_dat",
        "bad_price": "price",
        "unknown_product_id": "article_id",
    }
    assert sorted(rejected.loc[rejected["reason"] == "bad_price", "price"]) == [
        "",
        "-0.0169",
        "abc",
    ]


def test_unknown_ids_are_counted_with_their_leading_zero(run) -> None:
    ids = pq.read_table(run["paths"].path(EVENT_PRODUCT_IDS)).to_pandas()
    assert ids.loc[~ids["in_catalogue"], "product_id"].tolist() == ["0999999999"]
    assert run["events"]["unknown_ids"] == {"distinct": 1, "mentions": 1}


def test_same_day_purchases_of_a_pair_stay_on_one_user_day(run) -> None:
    events = pq.read_table(run["events"]["events"]).to_pandas()
    days = events.assign(day=events["event_ts"].dt.date).groupby(["user_id", "day"])
    pairs = days["product_id"].agg(lambda ids: {"0108775001", "0109812005"} <= set(ids))
    assert pairs.sum() >= 8  # planted: eight customers bought this pair on one day


def test_events_reject_rate_failure_names_the_column(tmp_path) -> None:
    config = hm_config(tmp_path / "data")
    paths = RunPaths(config.data_root_path, config.retailer, "bad")
    good = ["2020-09-01", "c" * 64, "0108775001", "0.0169", "2"]
    source = write_csv(
        tmp_path / "transactions_train.csv",
        TX_HEADER,
        [good] * 5 + [[*good[:2], "108775001", *good[3:]]] * 5,
    )
    with pytest.raises(RejectRateExceeded, match=r"'bad_article_id' in column 'article_id'"):
        build_events_hm(config, paths, [source], ["0108775001"], AS_OF)


def test_events_need_purchase_among_the_events_of_interest(tmp_path) -> None:
    config = hm_config(tmp_path / "data", events={"events_of_interest": ["view"]})
    paths = RunPaths(config.data_root_path, config.retailer, "no_purchase")
    with pytest.raises(FashionRecsError, match="lacks 'purchase'"):
        build_events_hm(config, paths, [FIXTURE / "transactions_train.csv"], [], AS_OF)


# --- demographics ------------------------------------------------------------------------------


def test_customers_become_one_row_per_user_with_quarantined_rows_counted(run) -> None:
    summary = run["demographics"]
    counts = summary["counts"]
    assert (counts["rows_in"], counts["rows_out"], counts["rows_quarantined"]) == (63, 60, 3)
    assert counts["reasons"] == {
        "duplicate_customer_id": 1,
        "malformed_csv_row": 1,  # a short line
        "missing_user_id": 1,
    }
    extra = run["config"].columns.answers.extra
    table = pq.read_table(summary["users"])
    assert table.schema.equals(users_schema(extra))
    users = table.to_pandas()
    assert users["user_id"].is_unique and len(users) == summary["n_users"] == 60
    assert users["birth_date"].isna().all()
    assert (users["city"] == "unknown").all() and (users["region"] == "unknown").all()
    assert summary["location_sources"] == {"unknown": 60}


def test_ages_out_of_range_or_missing_are_imputed_and_flagged(run) -> None:
    cfg = run["config"].demographics
    users = pq.read_table(run["demographics"]["users"]).to_pandas().set_index("user_id")
    rows = read_fixture("customers.csv")
    raw = {r["customer_id"]: r for r in rows if r["customer_id"] and r["age"] is not None}
    answered = [c for c, r in raw.items() if r["age"].isdigit() and 16 <= int(r["age"]) <= 100]
    assert (users.loc[answered, "age"] == [float(raw[c]["age"]) for c in answered]).all()
    assert (users.loc[answered, "age_source"] == "answer").all()
    unusable = [c for c, r in raw.items() if c not in answered]
    assert {raw[c]["age"] for c in unusable} == {"", "8", "120", "abc"}
    assert (users.loc[unusable, "age_source"] == "regression").all()
    assert users.loc[unusable, "age"].between(cfg.min_age, cfg.max_age).all()
    assert run["demographics"]["age_sources"] == {"answer": 49, "regression": 11}
    model = run["demographics"]["age_model"]
    assert (model["age_missing"], model["age_out_of_range"], model["age_not_a_number"]) == (8, 2, 1)
    by_hand = pd.cut(users["age"], cfg.age_bins, labels=cfg.age_labels, right=False)
    assert (users["age_group"] == by_hand.astype(str)).all()
    member = users.loc[answered[1]]
    assert member["club_member_status"] == raw[answered[1]]["club_member_status"]
    assert member["fashion_news_frequency"] == raw[answered[1]]["fashion_news_frequency"]


def test_age_model_trains_on_a_sample_but_imputes_every_missing_age() -> None:
    cfg = load_config(EXAMPLE).demographics
    ages = [float(20 + i % 40) for i in range(60)] + [None] * 5
    users = pd.DataFrame(
        {"age": ages, "club_member_status": ["ACTIVE", "PRE-CREATE"] * 32 + ["ACTIVE"]}
    )
    imputed, report = impute_missing_ages(
        users, ["club_member_status"], cfg, seed=1, max_training_users=30
    )
    assert (report["n_known"], report["n_training"], report["n_imputed"]) == (60, 30, 5)
    assert imputed["age"].iloc[:60].tolist() == ages[:60]
    assert (imputed["age_source"].iloc[:60] == "answer").all()
    assert (imputed["age_source"].iloc[60:] == "regression").all()
    assert imputed["age"].iloc[60:].between(cfg.min_age, cfg.max_age).all()


def test_rerun_gives_identical_files(run, tmp_path) -> None:
    config = hm_config(run["config"].data_root_path)
    paths = RunPaths(config.data_root_path, config.retailer, "hm_rerun")
    transactions = [FIXTURE / "transactions_train.csv"]
    again = build_products_hm(config, paths, FIXTURE / "articles.csv", transactions, AS_OF)
    for key in ("products", "price_history"):
        assert Path(again[key]).read_bytes() == Path(run["products"][key]).read_bytes()
