"""Stage 2, `products`: the catalogue export parsed into typed columns.

The export comes from a document store: ids are written `ObjectId('<hex>')`, `price` is the
text of a Python list of dicts (one per price period) and `other_attributes` the text of a dict.
The seed parsed these with string slicing and `eval`; here untrusted text is parsed with
`ast.literal_eval` (literals only, never code) under a length cap.

Row-level problems (no usable id, a repeated id, no title, no usable price) quarantine the
row. Field-level problems inside `other_attributes` (a rating of 'abc') null that field and are
recorded in a field-issues file, because the product itself is still worth recommending.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from fashion_recs.artifacts import Frame, RunPaths, write_artifact, write_table
from fashion_recs.config import ProductColumns, ProductsConfig, RetailerConfig
from fashion_recs.contract import PRICE_HISTORY, PRODUCTS, quarantine
from fashion_recs.quality.quarantine import (
    account_rows,
    enforce_reject_rate,
    quarantine_frame,
)
from fashion_recs.stages.raw_csv import RawCsv, read_raw_csv

log = logging.getLogger(__name__)

STAGE = "products"
MAX_LITERAL_CHARS = 20_000
_OBJECT_ID = re.compile(
    r"""^\s*(?:ObjectId\(\s*['"]?([0-9a-fA-F]{24})['"]?\s*\)|([0-9a-fA-F]{24}))\s*$"""
)

TEXT_ATTRIBUTES = (
    "sku",
    "product_url",
    "color",
    "measurements",
    "availability",
    "care_instructions",
    "original_description",
)


class LiteralError(ValueError):
    """Text that is not the Python literal it should be."""


def extract_hexadecimal(object_id: str) -> str | None:
    """The 24-hex id inside `ObjectId('...')` (or a bare hex id), lower-cased; None if absent."""
    match = _OBJECT_ID.match(object_id or "")
    if not match:
        return None
    return (match.group(1) or match.group(2)).lower()


def parse_literal(text: str) -> Any:
    """Parse the text of a Python literal without evaluating code."""
    if not text or not text.strip():
        raise LiteralError("empty")
    if len(text) > MAX_LITERAL_CHARS:
        raise LiteralError(f"longer than {MAX_LITERAL_CHARS} characters")
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise LiteralError(type(exc).__name__) from exc


def _as_date(value: Any) -> date | None:
    if value in (None, "", "None"):
        return None
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _as_flag(value: Any) -> bool:
    """A boolean from the export: True/False, 1/0 or their spellings; 'False' is not true."""
    if isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _as_price(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("boolean price")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"price {value!r} is not a positive number")
    return number


@dataclass(frozen=True)
class PricePeriod:
    value: float
    currency: str | None
    original: bool
    valid_from: date | None
    valid_to: date | None

    def active_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_to is None or day <= self.valid_to
        )


def parse_price_periods(text: str) -> list[PricePeriod]:
    """Parse the `price` column: a list of period dicts. Raises ValueError with the reason."""
    periods = parse_literal(text)
    if isinstance(periods, dict):
        periods = [periods]
    if not isinstance(periods, list | tuple):
        raise LiteralError("not a list of price periods")
    if not periods:
        raise ValueError("empty_price")
    parsed = []
    for period in periods:
        if not isinstance(period, dict):
            raise LiteralError("a price period is not a dict")
        try:
            parsed.append(
                PricePeriod(
                    value=_as_price(period.get("value")),
                    currency=str(period["currency"]) if period.get("currency") else None,
                    original=_as_flag(period.get("original", False)),
                    valid_from=_as_date(period.get("valid_from")),
                    valid_to=_as_date(period.get("valid_to")),
                )
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError("bad_price_value") from exc
    return parsed


def current_price(periods: list[PricePeriod], as_of: date) -> dict[str, Any]:
    """Pick the price a shopper sees on `as_of` and the original price it is compared with.

    The current price is the most recently started period active on `as_of`; when none is
    active, the original (list) price applies. The original price is the period flagged
    `original` (the highest price when the export flags none), raised to the current price
    when that is higher, so `original_price >= price` always holds.
    """
    originals = [p for p in periods if p.original]
    original = originals[0] if originals else max(periods, key=lambda p: p.value)
    active = [p for p in periods if p.active_on(as_of)]
    current = (
        max(active, key=lambda p: (p.valid_from or date.min, -p.value)) if active else original
    )
    # A current price above the flagged original is a raised list price, not a negative discount.
    list_price = max(original.value, current.value)
    discounted = current.value < list_price
    return {
        "price": current.value,
        "currency": current.currency or original.currency,
        "original_price": list_price,
        "is_discounted": discounted,
        "discount_pct": round((1 - current.value / list_price) * 100, 2) if discounted else 0.0,
        "current_period": periods.index(current),
    }


def parse_other_attributes(
    text: str, group_key: str | None = None
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Typed fields from `other_attributes`; returns (fields, [(column, value, reason), ...]).

    `group_key` names the attribute holding the product's design (variant group); its stripped
    value is the `group_key` field, None when absent or empty (the caller then uses the
    product's own id).
    """
    raw = parse_literal(text)
    if not isinstance(raw, dict):
        raise LiteralError("not a dict")
    issues: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {k: None for k in TEXT_ATTRIBUTES}
    for key in TEXT_ATTRIBUTES:
        value = raw.get(key)
        out[key] = None if value in (None, "") else str(value)
    group = raw.get(group_key) if group_key is not None else None
    out["group_key"] = (str(group).strip() or None) if group is not None else None
    pid = raw.get("product_id")
    out["retailer_product_id"] = None if pid in (None, "") else str(pid)

    rating = raw.get("review_rating")
    out["review_rating"] = None
    if rating not in (None, ""):
        try:
            number = float(rating)
            if not 0 <= number <= 5:
                raise ValueError
            out["review_rating"] = number
        except (TypeError, ValueError, OverflowError):
            issues.append(("review_rating", str(rating), "review_rating_not_in_0_5"))

    count = raw.get("review_count")
    out["review_count"] = None
    if count not in (None, ""):
        try:
            number = float(count)
            if number < 0 or number != int(number):
                raise ValueError
            out["review_count"] = int(number)
        except (TypeError, ValueError, OverflowError):
            issues.append(("review_count", str(count), "review_count_not_a_count"))

    images = raw.get("images")
    if images is None or images == "":
        out["images"] = []
    elif isinstance(images, str):
        out["images"] = [images]
    elif isinstance(images, list | tuple) and all(isinstance(i, str) for i in images):
        out["images"] = list(images)
    else:
        out["images"] = []
        issues.append(("images", str(images)[:200], "images_not_a_list_of_strings"))
    return out, issues


def screen_periods(
    periods: list[PricePeriod], as_of: date, cfg: ProductsConfig
) -> tuple[list[PricePeriod], list[tuple[str, str, str]]]:
    """Drop the price periods a catalogue should not hold; return (kept, field issues).

    A price below `min_price` (1e-300 is no price), a period that ends before it starts, or one
    that starts more than `max_years_ahead` after as-of is dropped; a period that ends that far
    ahead (year 2999 for "until further notice") is kept open-ended. Each is a field issue.
    """
    horizon = date(min(as_of.year + cfg.max_years_ahead, 9999), as_of.month, min(as_of.day, 28))
    kept: list[PricePeriod] = []
    issues: list[tuple[str, str, str]] = []
    for p in periods:
        if p.value < cfg.min_price:
            issues.append(("price", repr(p.value), "price_below_minimum"))
        elif p.valid_from and p.valid_to and p.valid_to < p.valid_from:
            issues.append(("price", f"{p.valid_from}..{p.valid_to}", "price_period_reversed"))
        elif p.valid_from and p.valid_from > horizon:
            issues.append(("price", f"from {p.valid_from}", "price_period_far_future"))
        else:
            if p.valid_to and p.valid_to > horizon:
                issues.append(("price", f"to {p.valid_to}", "price_period_open_ended"))
                p = PricePeriod(p.value, p.currency, p.original, p.valid_from, None)
            kept.append(p)
    return kept, issues


@dataclass
class ParsedProducts:
    products: pd.DataFrame
    price_history: pd.DataFrame
    quarantine: pd.DataFrame
    field_issues: pd.DataFrame


def parse_products(
    raw: pd.DataFrame,
    columns: ProductColumns,
    as_of: date,
    group_key: str | None = None,
    cfg: ProductsConfig | None = None,
) -> ParsedProducts:
    """Parse the raw catalogue (all strings) into products, price history and rejects.

    `group_key` is the `other_attributes` key naming a product's design (config
    products.group_key); a product without one is a group of its own. Price periods are
    screened with `cfg` (see `screen_periods`).
    """
    c = columns
    cfg = cfg or ProductsConfig(group_key=group_key)
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    rejects: list[tuple[int, str, str]] = []
    issues: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, record in enumerate(raw.to_dict("records")):
        product_id = extract_hexadecimal(record[c.id])
        if product_id is None:
            rejects.append((i, "bad_object_id", c.id))
            continue
        if product_id in seen:
            rejects.append((i, "duplicate_id", c.id))
            continue
        title = (record[c.title] or "").strip()
        if not title:
            rejects.append((i, "missing_title", c.title))
            continue
        try:
            periods = parse_price_periods(record[c.price])
        except LiteralError:
            rejects.append((i, "unparseable_price", c.price))
            continue
        except ValueError as exc:
            rejects.append((i, str(exc), c.price))
            continue
        periods, price_issues = screen_periods(periods, as_of, cfg)
        if not periods:
            rejects.append((i, "no_plausible_price_period", c.price))
            continue
        try:
            attributes, field_issues = parse_other_attributes(record[c.other_attributes], group_key)
        except LiteralError:
            rejects.append((i, "unparseable_other_attributes", c.other_attributes))
            continue
        seen.add(product_id)
        price = current_price(periods, as_of)
        current_period = price.pop("current_period")
        rows.append(
            {
                "product_id": product_id,
                "title": title,
                "target_audience": (record[c.target_audience] or "").strip().lower() or None,
                "department": (record[c.department] or "").strip().lower() or None,
                **price,
                **attributes,
                "group_key": attributes["group_key"] or product_id,
            }
        )
        history += [
            {
                "product_id": product_id,
                "period": n,
                "value": p.value,
                "currency": p.currency,
                "original": p.original,
                "valid_from": p.valid_from,
                "valid_to": p.valid_to,
                "is_current": n == current_period,
            }
            for n, p in enumerate(periods)
        ]
        issues += [
            {"product_id": product_id, "column": col, "value": val, "reason": why}
            for col, val, why in [*price_issues, *field_issues]
        ]
    reject_idx = [r[0] for r in rejects]
    rejected = quarantine_frame(
        raw.iloc[reject_idx].reset_index(drop=True),
        pd.Series([r[1] for r in rejects], dtype="string"),
        pd.Series([r[2] for r in rejects], dtype="string"),
    )
    rejected.insert(2, "source_row", pd.Series(reject_idx, dtype="string"))
    products = pd.DataFrame(rows, columns=PRODUCTS.schema.names)
    products = products.sort_values("product_id", kind="stable").reset_index(drop=True)
    price_history = pd.DataFrame(history, columns=PRICE_HISTORY.schema.names)
    price_history = price_history.sort_values(["product_id", "period"]).reset_index(drop=True)
    field_issues = pd.DataFrame(issues, columns=["product_id", "column", "value", "reason"])
    return ParsedProducts(products, price_history, rejected, field_issues)


def build_products(config: RetailerConfig, paths: RunPaths, source: Path, as_of: date) -> dict:
    """Stage entry point: parse the catalogue export, write artifacts, enforce the reject rate."""
    c = config.columns.products
    raw = read_raw_csv(
        source,
        [c.id, c.title, c.target_audience, c.department, c.price, c.other_attributes],
        config.quality.max_record_bytes,
    )
    parsed = parse_products(raw.rows, c, as_of, config.products.group_key, config.products)
    issues = pd.concat([parsed.field_issues, control_character_issues(raw, c)], ignore_index=True)
    return finish_products(
        config,
        paths,
        parsed.products,
        parsed.price_history,
        issues,
        [raw.locate(parsed.quarantine), raw.rejected],
        rows_in=raw.records,
        raw=raw,
    )


def control_character_issues(raw: RawCsv, c: ProductColumns) -> pd.DataFrame:
    """Field issues for the control characters the reader removed (a NUL in a title would
    otherwise pass every check and fail the PostgreSQL publish at the very end)."""
    found = raw.control_characters
    ids = raw.rows[c.id].iloc[found["source_row"].to_numpy(dtype=int)].map(extract_hexadecimal)
    return pd.DataFrame(
        {
            "product_id": ids.to_numpy(dtype=object),
            "column": found["column"].to_numpy(dtype=object),
            "value": found["value"].to_numpy(dtype=object),
            "reason": "control_characters_removed",
        },
        columns=["product_id", "column", "value", "reason"],
    )


def finish_products(
    config: RetailerConfig,
    paths: RunPaths,
    products: pd.DataFrame,
    price_history: Frame,
    field_issues: pd.DataFrame,
    rejected: list[pd.DataFrame],
    rows_in: int,
    raw: RawCsv | None = None,
) -> dict:
    """Write the catalogue's artifacts, field issues and quarantine, count and log the rows,
    enforce the reject rate (on the first rejected frame's columns) and summarise: one ending
    for every source format's products stage."""
    out = {
        "products": str(write_artifact(paths, PRODUCTS, products)),
        "price_history": str(write_artifact(paths, PRICE_HISTORY, price_history)),
    }
    issues_path = paths.run_dir / "09_quarantine" / "products_field_issues.parquet"
    write_table(field_issues.astype("string"), issues_path)
    counts = account_rows(
        STAGE,
        rejected,
        paths.path(quarantine(STAGE)),
        rows_in=rows_in,
        rows_out=len(products),
        lines=raw.line_counts(rejected) if raw is not None else None,
        source=str(raw.source) if raw is not None else "",
    )
    log.info(
        "products: %d rows in, %d products, %d quarantined %s, %d field issues",
        counts.rows_in,
        counts.rows_out,
        counts.rows_quarantined,
        counts.reasons,
        len(field_issues),
    )
    enforce_reject_rate(counts, config.quality.threshold(STAGE), pd.concat(rejected))
    field_counts = field_issues.groupby("reason").size().to_dict()
    return {
        **out,
        "counts": counts.as_dict(),
        "field_issues": {str(k): int(v) for k, v in field_counts.items()},
        "field_issues_path": str(issues_path),
        "n_discounted": int(products["is_discounted"].fillna(False).astype(bool).sum()),
    }
