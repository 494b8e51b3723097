"""How good are a model's similar-product lists.

- Planted look-alikes (synthetic retailer): for a product in a look-alike group of size g,
  R-precision = share of its first g - 1 neighbours that are group mates, and recall@k =
  share of its g - 1 mates found in its top k.
- Consistency: share of the top-k neighbours with the product's department, colour,
  audience, variant group and any other attribute the model uses (product type).
- Robustness: top-k overlap between a product's clean list and the list it gets when its own
  input is perturbed (noised text here; cropped / flipped / jittered images for encoders),
  asked against the unchanged catalogue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashion_recs.similar.retrieval import Neighbors, recall_at_k


def metric_rows(model: str, values: dict[str, tuple[float, int | None, int]]) -> pd.DataFrame:
    """METRICS-schema rows from {metric: (value, k, n)}."""
    return pd.DataFrame(
        {
            "model": model,
            "metric": list(values),
            "k": pd.array([v[1] for v in values.values()], dtype="Int32"),
            "value": [float(v[0]) for v in values.values()],
            "n_users": [int(v[2]) for v in values.values()],
        }
    )


def lookalike_scores(
    neighbors: Neighbors, product_ids: np.ndarray, lookalikes: pd.DataFrame, k: int
) -> dict[str, tuple[float, int | None, int]]:
    position = {p: i for i, p in enumerate(product_ids.tolist())}
    groups = lookalikes[lookalikes["product_id"].isin(position)]
    r_precision, recall = [], []
    for _, members in groups.groupby("group_id")["product_id"]:
        rows = [position[p] for p in members]
        if len(rows) < 2:
            continue
        mates = set(rows)
        g = len(rows) - 1
        for r in rows:
            found = neighbors.indices[r]
            r_precision.append(len(set(found[:g].tolist()) & (mates - {r})) / g)
            recall.append(len(set(found[:k].tolist()) & (mates - {r})) / g)
    n = len(r_precision)
    return {
        "lookalike_r_precision": (float(np.mean(r_precision)) if n else 0.0, None, n),
        "lookalike_recall": (float(np.mean(recall)) if n else 0.0, k, n),
    }


CONSISTENCY_COLUMNS = ("department", "color", "target_audience", "group_key")


def consistency_scores(
    neighbors: Neighbors, products: pd.DataFrame, k: int, columns: list[str] | None = None
) -> dict[str, tuple[float, int | None, int]]:
    """Share of the top-k neighbours that share the product's value, for every attribute the
    catalogue has (`same_<column>`): a coarse department looks consistent while the product
    type is not, so each attribute is reported. Products missing the value are not asked."""
    out = {}
    idx = neighbors.indices[:, :k]
    valid = idx >= 0
    wanted = columns or [c for c in CONSISTENCY_COLUMNS if c in products]
    for column in wanted:
        values = products[column].astype("string").fillna("\x00").to_numpy(dtype=object)
        known = values != "\x00"
        asked = valid & known[:, None]
        same = (values[np.where(asked, idx, 0)] == values[:, None]) & asked
        share = same.sum() / max(asked.sum(), 1)
        out[f"same_{column}"] = (float(share), k, int(known.sum()))
    return out


def overlap_at_k(clean: Neighbors, perturbed: Neighbors, rows: np.ndarray, k: int) -> float:
    """Mean share of the clean top-k kept under perturbation, over `rows` (the recall of
    the perturbed lists against the clean ones)."""
    return recall_at_k(perturbed, clean, k, rows)


def similar_lists(
    neighbors: Neighbors, product_ids: np.ndarray, model: str, default_model: str
) -> pd.DataFrame:
    """SIMILAR_PRODUCTS rows from neighbour arrays (empty slots dropped)."""
    n, k = neighbors.indices.shape
    rows = np.repeat(np.arange(n), k)
    idx = neighbors.indices.reshape(-1)
    keep = idx >= 0
    return pd.DataFrame(
        {
            "product_id": product_ids[rows[keep]],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep],
            "similar_product_id": product_ids[idx[keep]],
            "score": neighbors.scores.reshape(-1)[keep].astype(np.float64),
            "model": model,
            "is_default": model == default_model,
        }
    )


__all__ = [
    "consistency_scores",
    "lookalike_scores",
    "metric_rows",
    "overlap_at_k",
    "similar_lists",
]
