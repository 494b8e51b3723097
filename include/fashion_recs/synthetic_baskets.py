"""Planted basket regimes for FBT tests and benchmarks, shaped like real basket data.

Two regimes the synthetic retailer's sessions do not cover, both seen on real data:

- `large`: a fashion retailer's orders, about six products a basket; products of a theme (an
  outfit) sit in different departments; a fifth of the catalogue has no department.
- `small`: a grocer's baskets, about two products, a steep popularity curve (staples in many
  baskets) and three coarse departments, each holding whole themes (pasta and its sauce share
  an aisle), so "same department" says nothing about substitutes.

Baskets draw a theme, then each product from the theme's products (by popularity) with
probability `theme_share`, else from the whole catalogue. Chance pairs of rare products get
high lift from a couple of baskets, which is what misleads lift-first lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import polars as pl

Regime = Literal["large", "small"]


@dataclass(frozen=True)
class BasketRegime:
    mean_extra_items: float  # basket size is 1 + Poisson(mean_extra_items)
    zipf: float
    departments: int
    themes_within_department: bool
    no_department_share: float
    audiences: tuple[str, ...]
    theme_share: float = 0.5
    items_per_theme: int = 8


REGIMES: dict[str, BasketRegime] = {
    "large": BasketRegime(5.0, 0.9, 12, False, 0.2, ("women", "men")),
    "small": BasketRegime(1.2, 1.1, 3, True, 0.0, ()),
}


def planted_baskets(
    regime: Regime, n_baskets: int, n_items: int, seed: int = 42
) -> tuple[pl.DataFrame, pd.DataFrame]:
    """(baskets: basket_id, product_id; catalogue: product_id, department, target_audience)."""
    spec = REGIMES[regime]
    rng = np.random.default_rng(seed)
    ids = np.asarray([f"p{i:06d}" for i in range(n_items)], dtype=object)
    weight = 1.0 / np.arange(1, n_items + 1) ** spec.zipf
    rng.shuffle(weight)
    n_themes = max(n_items // spec.items_per_theme, 1)
    theme = rng.integers(0, n_themes, n_items)
    if spec.themes_within_department:
        department = (theme % spec.departments).astype(object)
    else:
        department = rng.integers(0, spec.departments, n_items).astype(object)
    department = np.asarray([f"d{d}" for d in department], dtype=object)
    department[rng.random(n_items) < spec.no_department_share] = None
    audience = (
        rng.choice(list(spec.audiences), n_items).astype(object)
        if spec.audiences
        else np.full(n_items, None, dtype=object)
    )
    members = [np.flatnonzero(theme == t) for t in range(n_themes)]
    theme_weight = np.asarray([weight[m].sum() for m in members])
    p_all = weight / weight.sum()
    sizes = 1 + rng.poisson(spec.mean_extra_items, n_baskets)
    chosen_theme = rng.choice(n_themes, n_baskets, p=theme_weight / theme_weight.sum())
    rows, items = [], []
    for b in range(n_baskets):
        own = members[chosen_theme[b]]
        from_theme = rng.random(sizes[b]) < spec.theme_share
        picks = set()
        if from_theme.sum() and len(own):
            p = weight[own] / weight[own].sum()
            picks |= set(rng.choice(own, int(from_theme.sum()), p=p).tolist())
        if (~from_theme).sum():
            picks |= set(rng.choice(n_items, int((~from_theme).sum()), p=p_all).tolist())
        rows += [b] * len(picks)
        items += sorted(picks)
    baskets = pl.DataFrame(
        {"basket_id": np.asarray(rows, dtype=np.int64), "product_id": ids[np.asarray(items)]},
        schema={"basket_id": pl.Int64, "product_id": pl.String},
    )
    catalogue = pd.DataFrame(
        {"product_id": ids, "department": department, "target_audience": audience}
    )
    return baskets, catalogue
