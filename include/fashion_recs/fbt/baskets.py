"""Baskets from weighted interactions: which products a shopper gathered together.

The export has no basket table, so baskets are cut out of the event log (the seed mined its
filtered events of interest): a user's interactions of the configured categories, delimited
by an inactivity gap (`session`), by UTC day (`user_day`) or by one purchase event
(`order`: the export lists an order's products in its purchase row, which the events stage
explodes into rows sharing user and timestamp). A product appears at most once per basket.

Every input row is accounted for: kept, or dropped and counted by reason (category not used
for baskets, product no longer in the catalogue, basket over the size cap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from fashion_recs.config import BasketConfig
from fashion_recs.fbt.matrix import BasketMatrix, coded_basket_matrix


@dataclass
class BasketStats:
    """Row accounting and size statistics of one basket build."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    n_baskets: int = 0
    n_single_item: int = 0
    n_oversized: int = 0
    size_mean: float = 0.0
    size_p50: float = 0.0
    size_p90: float = 0.0
    size_p99: float = 0.0
    size_max: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _basket_keys(frame: pl.DataFrame, config: BasketConfig) -> pl.DataFrame:
    """Add `_key` (one value per basket within a user) and sort by user and time."""
    frame = frame.sort(["user_id", "event_ts", "product_id"])
    if config.delimiter == "user_day":
        return frame.with_columns(_key=pl.col("event_ts").dt.date().cast(pl.Int64))
    if config.delimiter == "order":
        return frame.with_columns(_key=pl.col("event_ts").dt.epoch("us"))
    gap = pl.duration(seconds=config.session_gap_minutes * 60)
    new = (pl.col("user_id") != pl.col("user_id").shift(1)) | (
        pl.col("event_ts") - pl.col("event_ts").shift(1) > gap
    )
    return frame.with_columns(_key=new.fill_null(True).cast(pl.Int64).cum_sum())


def build_baskets(
    interactions: pl.DataFrame, catalogue_ids: Iterable[str], config: BasketConfig
) -> tuple[pl.DataFrame, BasketStats]:
    """Baskets (BASKETS_SCHEMA rows, one per basket and product) and their statistics."""
    stats = BasketStats(rows_in=interactions.height)
    frame = interactions.select("user_id", "product_id", "event_ts", "category")
    kept = frame.filter(pl.col("category").is_in(config.categories))
    stats.dropped["category_not_in_baskets"] = frame.height - kept.height
    catalogue = pl.Series("product_id", list(catalogue_ids), dtype=pl.String)
    known = kept.filter(pl.col("product_id").is_in(catalogue.implode()))
    stats.dropped["unknown_product"] = kept.height - known.height

    keyed = _basket_keys(known, config)
    baskets = (
        keyed.group_by(["user_id", "_key"], maintain_order=True)
        .agg(
            pl.col("event_ts").min().alias("basket_start"),
            pl.col("product_id"),
            pl.col("category"),
        )
        .explode(["product_id", "category"])
        .unique(["user_id", "_key", "product_id"], keep="first", maintain_order=True)
    )
    stats.dropped["duplicate_in_basket"] = known.height - baskets.height
    sizes = baskets.group_by(["user_id", "_key"], maintain_order=True).agg(pl.len().alias("_size"))
    oversized = sizes.filter(pl.col("_size") > config.max_items)
    stats.n_oversized = oversized.height
    stats.dropped["oversized_basket"] = int(oversized["_size"].sum() or 0)
    baskets = baskets.join(oversized.select("user_id", "_key"), on=["user_id", "_key"], how="anti")
    # Baskets numbered in time order (ties by user), so ids are stable for the same input.
    baskets = baskets.sort(["basket_start", "user_id", "_key", "product_id"])
    ids = (
        baskets.select("user_id", "_key")
        .unique(maintain_order=True)
        .with_row_index("basket_id")
        .with_columns(pl.col("basket_id").cast(pl.Int64))
    )
    out = (
        baskets.join(ids, on=["user_id", "_key"], how="left", maintain_order="left")
        .select(
            "basket_id",
            "user_id",
            "basket_start",
            "product_id",
            pl.col("category").alias("first_category"),
        )
        .sort(["basket_id", "product_id"])
    )
    stats.rows_out = out.height
    assert stats.rows_in == stats.rows_out + sum(stats.dropped.values()), stats
    _size_stats(out, stats)
    return out, stats


def _size_stats(baskets: pl.DataFrame, stats: BasketStats) -> None:
    sizes = baskets.group_by("basket_id").len()["len"].to_numpy()
    stats.n_baskets = len(sizes)
    if not len(sizes):
        return
    stats.n_single_item = int((sizes == 1).sum())
    stats.size_mean = round(float(sizes.mean()), 4)
    p50, p90, p99 = np.percentile(sizes, [50, 90, 99])
    stats.size_p50, stats.size_p90, stats.size_p99 = float(p50), float(p90), float(p99)
    stats.size_max = int(sizes.max())


def to_matrix(baskets: pl.DataFrame) -> BasketMatrix:
    """The basket x item matrix of a baskets table (every basket a row, singles included).

    Product ids are coded in polars (sorted distinct ids, then a binary search per row): the
    same codes as `basket_matrix`, without turning millions of ids into Python strings."""
    products = baskets["product_id"].cast(pl.String)
    item_ids = products.unique().sort()
    item_code = item_ids.search_sorted(products).to_numpy()
    return coded_basket_matrix(
        baskets["basket_id"].to_numpy(), item_code, item_ids.to_numpy().astype(object)
    )
