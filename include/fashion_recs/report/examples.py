"""Examples a person looks at to judge the models: rules, look-alike grids, users' lists.

Products are shown as small thumbnails embedded in the page (so the report stays one file
that opens anywhere, offline), fetched through the same image cache as the encoders. Which
products and users are shown is chosen deterministically, so two renders of a run agree.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from PIL import Image

from fashion_recs.similar.images import decode_image, fetch_image

log = logging.getLogger(__name__)

ROUTES = ("existing", "new_with_events", "new_without_events")


@dataclass(frozen=True)
class ProductCard:
    product_id: str
    title: str
    department: str
    thumbnail: str | None  # a data URI, or None when the product has no usable image


class Thumbnails:
    """Product id -> card with an embedded thumbnail, fetched once per product.

    Images already in the cache cost nothing; remote ones are fetched once, without retries,
    and after `max_remote_failures` failed fetches in a row (no network, a dead image host)
    the report stops asking the network, so it can never hang on a hundred timeouts.
    """

    max_remote_failures = 3

    def __init__(
        self,
        products: pd.DataFrame,
        base_dir: Path | None,
        cache: Path,
        size: int = 96,
        timeout: float = 5.0,
    ) -> None:
        self._products = products.set_index("product_id", drop=False)
        self._base_dir = base_dir
        self._cache = cache
        self._size = size
        self._timeout = timeout
        self._cards: dict[str, ProductCard] = {}
        self._remote_failures = 0

    def card(self, product_id: str) -> ProductCard:
        if product_id not in self._cards:
            self._cards[product_id] = self._make(product_id)
        return self._cards[product_id]

    def cards(self, product_ids: list[str]) -> list[ProductCard]:
        return [self.card(p) for p in product_ids]

    def _make(self, product_id: str) -> ProductCard:
        if product_id not in self._products.index:
            return ProductCard(product_id, "(not in the catalogue)", "", None)
        row = self._products.loc[product_id]
        return ProductCard(
            product_id,
            str(row.get("title") or ""),
            str(row.get("department") or ""),
            self._thumbnail(row.get("images")),
        )

    def _thumbnail(self, images: Any) -> str | None:
        uris = [] if images is None else [str(u) for u in list(images) if u]
        if not uris or self._base_dir is None:
            return None
        remote = urlparse(uris[0]).scheme in ("http", "https")
        if remote and self._remote_failures >= self.max_remote_failures:
            return None
        got = fetch_image(uris[0], self._base_dir, self._cache, timeout=self._timeout, retries=0)
        if remote:
            self._remote_failures = 0 if got.path is not None else self._remote_failures + 1
        if got.path is None:
            return None
        try:
            image = decode_image(got.path)
        except ValueError:
            return None
        image.thumbnail((self._size, self._size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def top_rules(rules: pd.DataFrame, n: int, measure: str = "lift") -> pd.DataFrame:
    """The strongest rules by `measure` (ties broken by confidence, then support, then ids),
    one per itemset: {a, b} -> {c} and {a, c} -> {b} show the same bundle, so only the
    stronger of them is listed."""
    if rules.empty:
        return rules
    ordered = rules.sort_values(
        [measure, "confidence", "support", "antecedent", "consequent"],
        ascending=[False, False, False, True, True],
    )
    itemset = (ordered["antecedent"] + "," + ordered["consequent"]).map(
        lambda ids: ",".join(sorted(ids.split(",")))
    )
    return ordered[~itemset.duplicated()].head(n).reset_index(drop=True)


def showcase_products(popular: pd.DataFrame | None, products: pd.DataFrame, n: int) -> list[str]:
    """The best-selling product of each of the `n` biggest departments (the products a shop
    shows most, so their look-alikes matter most); catalogue order when there is no
    popularity."""
    catalogue = products.set_index("product_id")["department"]
    if popular is not None and not popular.empty:
        overall = popular[popular["segment_type"] == "overall"].sort_values("rank")
        ranked = [p for p in overall["product_id"] if p in catalogue.index]
    else:
        ranked = list(products.sort_values("product_id")["product_id"])
    chosen, seen = [], set()
    for product_id in ranked:
        department = catalogue[product_id]
        if department not in seen:
            chosen.append(product_id)
            seen.add(department)
        if len(chosen) == n:
            break
    return chosen


def showcase_users(routes: pd.DataFrame | None, per_route: int) -> list[tuple[str, str]]:
    """(user, route) pairs: for each route, the first users by id with the most history among
    the first hundred, so the examples show users with something to look at."""
    if routes is None or routes.empty:
        return []
    chosen = []
    for route in ROUTES:
        part = routes[routes["route"] == route].sort_values("user_id")
        if route != "new_without_events":
            part = part.head(100).sort_values(["n_items", "user_id"], ascending=[False, True])
        chosen += [(u, route) for u in part["user_id"].head(per_route)]
    return chosen


def user_history(interactions: pd.DataFrame, user_id: str, n: int) -> pd.DataFrame:
    """The user's latest `n` interactions, newest first."""
    mine = interactions[interactions["user_id"] == user_id]
    return mine.sort_values(["event_ts", "product_id"], ascending=[False, True]).head(n)
