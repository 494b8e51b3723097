"""The catalogue parser: ids, price periods, attributes, and every malformed class."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fashion_recs.contract import PRICE_HISTORY, PRODUCTS, quarantine
from fashion_recs.errors import RejectRateExceeded
from fashion_recs.stages.products import (
    build_products,
    current_price,
    extract_hexadecimal,
    parse_other_attributes,
    parse_price_periods,
)
from tests.helpers import make_config, run_paths, write_csv

AS_OF = date(2026, 11, 1)
HEX = ["a" * 23 + str(i) for i in range(10)]
ATTRS = (
    "{'product_id': 'P1', 'sku': 'SKU-1', 'product_url': 'https://x/p/1', 'review_rating': 4.5, "
    "'review_count': 12, 'color': 'navy', 'images': ['images/1.png'], 'measurements': 'L 90cm', "
    "'availability': 'in_stock', 'care_instructions': 'wash 30', 'original_description': 'A dress'}"
)
PRICE = (
    "[{'value': 50.0, 'currency': 'EUR', 'original': True, 'valid_from': '2026-01-01', "
    "'valid_to': None}, {'value': 40.0, 'currency': 'EUR', 'original': False, "
    "'valid_from': '2026-10-15', 'valid_to': '2026-12-31'}]"
)
HEADER = ["id", "title", "target_audience", "department", "price", "other_attributes"]


def row(i: int, **changes: str) -> list[str]:
    base = {
        "id": f"ObjectId('{HEX[i]}')",
        "title": f"Navy Dress {i}",
        "target_audience": "Women",
        "department": "Dresses",
        "price": PRICE,
        "other_attributes": ATTRS,
    }
    base.update(changes)
    return [base[c] for c in HEADER]


def test_extract_hexadecimal_accepts_object_id_and_bare_hex() -> None:
    assert extract_hexadecimal(f"ObjectId('{HEX[0].upper()}')") == HEX[0]
    assert extract_hexadecimal(f' ObjectId("{HEX[1]}") ') == HEX[1]
    assert extract_hexadecimal(HEX[2]) == HEX[2]
    assert extract_hexadecimal("ObjectId('xyz')") is None
    assert extract_hexadecimal("") is None


@given(st.binary(min_size=12, max_size=12))
def test_extract_hexadecimal_round_trips_any_object_id(raw: bytes) -> None:
    assert extract_hexadecimal(f"ObjectId('{raw.hex()}')") == raw.hex()


def test_current_price_prefers_active_discount_and_keeps_original() -> None:
    periods = parse_price_periods(PRICE)
    price = current_price(periods, AS_OF)
    assert price["price"] == 40.0
    assert price["original_price"] == 50.0
    assert price["is_discounted"] is True
    assert price["discount_pct"] == 20.0
    assert price["currency"] == "EUR"
    # After the discount ends the original price applies again.
    after = current_price(periods, date(2027, 1, 15))
    assert (after["price"], after["is_discounted"], after["discount_pct"]) == (50.0, False, 0.0)


def test_price_parser_rejects_code_instead_of_evaluating_it() -> None:
    with pytest.raises(ValueError):
        parse_price_periods("__import__('os').system('true')")


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=1e6, allow_nan=False), st.booleans(), st.dates()
        ),
        min_size=1,
        max_size=4,
    )
)
def test_current_price_is_one_of_the_periods(periods: list[tuple[float, bool, date]]) -> None:
    text = repr(
        [
            {
                "value": v,
                "currency": "EUR",
                "original": o,
                "valid_from": d.isoformat(),
                "valid_to": None,
            }
            for v, o, d in periods
        ]
    )
    parsed = parse_price_periods(text)
    price = current_price(parsed, AS_OF)
    assert price["price"] in {v for v, _, _ in periods}
    assert price["original_price"] in {v for v, _, _ in periods}
    assert 0.0 <= price["discount_pct"] <= 100.0
    assert price["is_discounted"] == (price["price"] < price["original_price"])


def test_other_attributes_nulls_bad_fields_and_reports_them() -> None:
    fields, issues = parse_other_attributes(
        "{'review_rating': 'abc', 'review_count': -3, 'images': 'one.png', 'color': 'red'}"
    )
    assert fields["review_rating"] is None and fields["review_count"] is None
    assert fields["images"] == ["one.png"] and fields["color"] == "red"
    assert fields["sku"] is None  # a missing key is not an issue
    assert {i[2] for i in issues} == {"review_rating_not_in_0_5", "review_count_not_a_count"}


def test_group_key_is_the_configured_attribute_stripped() -> None:
    text = "{'style_code': ' S-12 ', 'color': 'red'}"
    fields, issues = parse_other_attributes(text, "style_code")
    assert fields["group_key"] == "S-12" and issues == []
    for text in ("{'style_code': '  '}", "{'color': 'red'}"):
        assert parse_other_attributes(text, "style_code")[0]["group_key"] is None
    assert parse_other_attributes("{'style_code': 'S-12'}", None)[0]["group_key"] is None


def test_colour_variants_share_a_group_key_and_others_are_their_own_group(tmp_path) -> None:
    variant = ATTRS.replace("'sku'", "'style_code': 'S-1', 'sku'")
    rows = [
        row(0, other_attributes=variant),
        row(1, other_attributes=variant.replace("navy", "red")),
        row(2),
        row(3, other_attributes=ATTRS.replace("'sku'", "'style_code': '', 'sku'")),
    ]
    source = write_csv(tmp_path / "product_data.csv", HEADER, rows)
    config = make_config(tmp_path)
    paths = run_paths(config)
    summary = build_products(config, paths, source, AS_OF)
    products = pq.read_table(paths.path(PRODUCTS)).to_pandas().set_index("product_id")
    assert products["group_key"].to_dict() == {
        HEX[0]: "S-1",
        HEX[1]: "S-1",
        HEX[2]: HEX[2],
        HEX[3]: HEX[3],
    }
    assert summary["field_issues"] == {}

    config = make_config(tmp_path, products={"group_key": None})
    build_products(config, paths, source, AS_OF)
    products = pq.read_table(paths.path(PRODUCTS)).to_pandas()
    assert (products["group_key"] == products["product_id"]).all()


def test_build_products_quarantines_each_malformed_class(tmp_path) -> None:
    rows = [row(i) for i in range(3)]
    rows += [
        row(3, id="ObjectId('xyz')"),
        row(0, title="Duplicate of 0"),
        row(4, title=""),
        row(5, price="[{'value': 49.9"),
        row(6, price="[{'value': 'N/A', 'currency': 'EUR', 'original': True}]"),
        row(7, price="[]"),
        row(8, other_attributes="{'sku': 'SKU"),
        row(9, other_attributes=ATTRS.replace("4.5", "'abc'")),
    ]
    source = write_csv(tmp_path / "product_data.csv", HEADER, rows)
    config = make_config(tmp_path, quality={"max_reject_rate": {"products": 1.0}})
    paths = run_paths(config)
    summary = build_products(config, paths, source, AS_OF)

    products = pq.read_table(paths.path(PRODUCTS)).to_pandas()
    assert sorted(products["product_id"]) == sorted([HEX[0], HEX[1], HEX[2], HEX[9]])
    assert products.set_index("product_id").loc[HEX[9], "review_rating"] is None or pd.isna(
        products.set_index("product_id").loc[HEX[9], "review_rating"]
    )
    first = products.set_index("product_id").loc[HEX[0]]
    assert (first["price"], first["original_price"], first["color"]) == (40.0, 50.0, "navy")
    assert first["department"] == "dresses" and list(first["images"]) == ["images/1.png"]

    q = pq.read_table(paths.path(quarantine("products"))).to_pandas()
    assert dict(q["reason"].value_counts()) == {
        "bad_object_id": 1,
        "duplicate_id": 1,
        "missing_title": 1,
        "unparseable_price": 1,
        "bad_price_value": 1,
        "empty_price": 1,
        "unparseable_other_attributes": 1,
    }
    assert set(q.loc[q["reason"] == "unparseable_price", "column"]) == {"price"}
    counts = summary["counts"]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"] == 11
    assert summary["field_issues"] == {"review_rating_not_in_0_5": 1}
    history = pq.read_table(paths.path(PRICE_HISTORY)).to_pandas()
    assert len(history) == 2 * 4 and history["is_current"].sum() == 4


def test_build_products_fails_naming_file_and_column_when_reject_rate_is_high(tmp_path) -> None:
    rows = [row(0), row(1, price="[{'value'"), row(2, price="[{'value'")]
    source = write_csv(tmp_path / "product_data.csv", HEADER, rows)
    config = make_config(tmp_path)
    with pytest.raises(RejectRateExceeded) as info:
        build_products(config, run_paths(config), source, AS_OF)
    message = str(info.value)
    assert "'unparseable_price'" in message and "column 'price'" in message
    assert "products_quarantine.parquet" in message


def test_build_products_rerun_gives_identical_files(tmp_path) -> None:
    source = write_csv(tmp_path / "product_data.csv", HEADER, [row(i) for i in range(5)])
    config = make_config(tmp_path)
    paths = run_paths(config)
    build_products(config, paths, source, AS_OF)
    first = paths.path(PRODUCTS).read_bytes(), paths.path(PRICE_HISTORY).read_bytes()
    build_products(config, paths, source, AS_OF)
    assert (paths.path(PRODUCTS).read_bytes(), paths.path(PRICE_HISTORY).read_bytes()) == first


def test_missing_column_is_a_clear_source_error(tmp_path) -> None:
    from fashion_recs.errors import SourceError

    source = write_csv(tmp_path / "product_data.csv", HEADER[:-1], [row(0)[:-1]])
    config = make_config(tmp_path)
    with pytest.raises(SourceError, match="other_attributes"):
        build_products(config, run_paths(config), source, AS_OF)


def test_original_flag_spelled_as_text_is_read_as_a_boolean() -> None:
    text = (
        "[{'value': 50.0, 'original': 'True'}, {'value': 40.0, 'original': 'False', "
        "'valid_from': '2026-10-01', 'valid_to': None}]"
    )
    price = current_price(parse_price_periods(text), AS_OF)
    assert (price["price"], price["original_price"], price["is_discounted"]) == (40.0, 50.0, True)
    with pytest.raises(ValueError, match="bad_price_value"):
        parse_price_periods("[{'value': 5.0, 'original': 'maybe'}]")


def test_huge_numbers_and_non_utf8_bytes_are_quarantined_not_fatal(tmp_path) -> None:
    huge = "1" + "0" * 400
    rows = [row(0), row(1, price=f"[{{'value': {huge}, 'original': True}}]")]
    rows.append(row(2, other_attributes=ATTRS.replace("4.5", huge)))
    source = write_csv(tmp_path / "product_data.csv", HEADER, rows)
    with open(source, "ab") as handle:
        handle.write(b"ObjectId('" + HEX[3].encode() + b"'),Caf\xe9 Dress,women,dresses,")
        handle.write(b'"' + PRICE.encode() + b'","' + ATTRS.encode() + b'"\n')
    config = make_config(tmp_path, quality={"max_reject_rate": {"products": 1.0}})
    paths = run_paths(config)
    summary = build_products(config, paths, source, AS_OF)
    assert summary["counts"]["reasons"] == {"bad_price_value": 1, "invalid_utf8": 1}
    assert summary["field_issues"] == {"review_rating_not_in_0_5": 1}
    assert summary["counts"]["rows_in"] == 4


def test_an_export_column_named_reason_survives_quarantine(tmp_path) -> None:
    header = [*HEADER, "reason"]
    rows = [[*row(0), "x"], [*row(1, title=""), "y"]]
    source = write_csv(tmp_path / "product_data.csv", header, rows)
    config = make_config(tmp_path, quality={"max_reject_rate": {"products": 1.0}})
    paths = run_paths(config)
    build_products(config, paths, source, AS_OF)
    q = pq.read_table(paths.path(quarantine("products"))).to_pandas()
    assert list(q["reason"]) == ["missing_title"] and list(q["raw_reason"]) == ["y"]


def test_empty_or_headerless_files_are_source_errors(tmp_path) -> None:
    from fashion_recs.errors import SourceError

    empty = tmp_path / "product_data.csv"
    empty.write_bytes(b"")
    config = make_config(tmp_path)
    with pytest.raises(SourceError, match="empty"):
        build_products(config, run_paths(config), empty, AS_OF)


def test_a_raised_price_is_the_new_list_price_not_a_negative_discount() -> None:
    text = (
        "[{'value': 40.0, 'original': True, 'valid_from': '2026-01-01', 'valid_to': None}, "
        "{'value': 45.0, 'original': False, 'valid_from': '2026-10-01', 'valid_to': None}]"
    )
    price = current_price(parse_price_periods(text), AS_OF)
    assert (price["price"], price["original_price"]) == (45.0, 45.0)
    assert (price["is_discounted"], price["discount_pct"]) == (False, 0.0)
