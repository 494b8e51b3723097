"""Association rules from frequent itemsets: support, confidence, lift, leverage, conviction.

Rules are derived from integer basket counts, once, for whatever engine mined the itemsets,
so every engine yields the same rules. Thresholds are applied to the exact counts
(`n_both >= min_confidence * n_antecedent`), never to rounded ratios, so a rule sitting exactly
on a threshold is kept or dropped the same way everywhere. `mlxtend_rules` runs the seed's
`mlxtend.frequent_patterns.association_rules` for comparison: its metric values are kept as
mlxtend computed them, and tests hold them equal to ours to 1e-9.

An itemset's items and a rule's sides are written as sorted product ids joined by `,`
(product ids never contain one), so a reader can look a cart's subsets up by exact match.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from fashion_recs.contract import FBT_RULES_SCHEMA as RULES_SCHEMA
from fashion_recs.fbt.mining import Itemsets

log = logging.getLogger(__name__)

SEPARATOR = ","
METRIC_COLUMNS = ["support", "confidence", "lift", "leverage", "conviction"]


def empty_rules() -> pd.DataFrame:
    return RULES_SCHEMA.empty_table().to_pandas()


def _keys(rows: np.ndarray, base: int) -> np.ndarray:
    """One integer per itemset row (mixed radix `base`); order-preserving for sorted rows."""
    key = np.zeros(len(rows), dtype=np.int64)
    for p in range(rows.shape[1]):
        key = key * base + rows[:, p]
    return key


class _CountIndex:
    """Basket count of any frequent itemset, looked up by its sorted item-index rows."""

    def __init__(self, itemsets: Itemsets) -> None:
        self.base = max(len(itemsets.item_ids), 1)
        self.exact = {}
        self.fallback = {}
        for k in itemsets.lengths():
            if k * np.log2(self.base + 1) < 62:
                self.exact[k] = (_keys(itemsets.items[k], self.base), itemsets.counts[k])
            else:
                self.fallback[k] = itemsets.count_lookup(k)

    def counts(self, rows: np.ndarray) -> np.ndarray:
        k = rows.shape[1]
        if k in self.exact:
            keys, counts = self.exact[k]
            wanted = _keys(rows, self.base)
            pos = np.searchsorted(keys, wanted)
            if len(keys) == 0 or not np.array_equal(keys[np.minimum(pos, len(keys) - 1)], wanted):
                raise ValueError("an itemset's subset is missing: itemsets are not downward closed")
            return counts[pos]
        lookup = self.fallback[k]
        return np.asarray([lookup[tuple(r)] for r in rows.tolist()], dtype=np.int64)


def _join(item_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if rows.shape[1] == 1:
        return item_ids[rows[:, 0]].astype(object)
    parts = [item_ids[rows[:, p]].astype(str) for p in range(rows.shape[1])]
    out = parts[0].astype(object)
    for part in parts[1:]:
        out = out + SEPARATOR + part.astype(object)
    return out


def _metrics(n_a: np.ndarray, n_c: np.ndarray, n_ac: np.ndarray, n: int) -> dict[str, np.ndarray]:
    sup_a, sup_c, sup = n_a / n, n_c / n, n_ac / n
    confidence = sup / sup_a
    with np.errstate(divide="ignore", invalid="ignore"):
        conviction = np.where(n_ac == n_a, np.nan, (1.0 - sup_c) / (1.0 - confidence))
    return {
        "antecedent_support": sup_a,
        "consequent_support": sup_c,
        "support": sup,
        "confidence": confidence,
        "lift": confidence / sup_c,
        "leverage": sup - sup_a * sup_c,
        "conviction": conviction,
    }


def _passes(
    n_a: np.ndarray, n_c: np.ndarray, n_ac: np.ndarray, n: int, min_conf: float, min_lift: float
) -> np.ndarray:
    """Threshold test on exact counts: conf = n_ac / n_a, lift = n_ac * n / (n_a * n_c)."""
    n_ac_f = n_ac.astype(np.float64)
    return (n_ac_f >= min_conf * n_a) & (n_ac_f * n >= min_lift * (n_a.astype(np.float64) * n_c))


def association_rules(
    itemsets: Itemsets, *, min_confidence: float, min_lift: float
) -> pd.DataFrame:
    """Every rule A -> C with A, C a partition of a frequent itemset, passing both thresholds.

    Rows are sorted by antecedent, descending confidence, then consequent.
    """
    index = _CountIndex(itemsets)
    n = itemsets.n_baskets
    frames = []
    for k in itemsets.lengths():
        if k < 2:
            continue
        rows, n_ac = itemsets.items[k], itemsets.counts[k]
        for size in range(1, k):
            for ante in itertools.combinations(range(k), size):
                cons = [p for p in range(k) if p not in ante]
                a_rows, c_rows = rows[:, list(ante)], rows[:, cons]
                n_a, n_c = index.counts(a_rows), index.counts(c_rows)
                keep = _passes(n_a, n_c, n_ac, n, min_confidence, min_lift)
                if not keep.any():
                    continue
                frame = pd.DataFrame(
                    {
                        "antecedent": _join(itemsets.item_ids, a_rows[keep]),
                        "consequent": _join(itemsets.item_ids, c_rows[keep]),
                        "antecedent_len": np.int32(size),
                        "consequent_len": np.int32(k - size),
                        "n_antecedent": n_a[keep],
                        "n_consequent": n_c[keep],
                        "n_both": n_ac[keep],
                    }
                )
                frames.append(frame)
    if not frames:
        return empty_rules()
    rules = pd.concat(frames, ignore_index=True)
    rules["n_baskets"] = np.int64(n)
    metrics = _metrics(
        rules["n_antecedent"].to_numpy(),
        rules["n_consequent"].to_numpy(),
        rules["n_both"].to_numpy(),
        n,
    )
    for name, values in metrics.items():
        rules[name] = values
    rules["engine"] = itemsets.engine
    return _ordered(rules)


def _ordered(rules: pd.DataFrame) -> pd.DataFrame:
    rules = rules.sort_values(
        ["antecedent", "confidence", "consequent"], ascending=[True, False, True], kind="stable"
    )
    return rules[RULES_SCHEMA.names].reset_index(drop=True)


def mlxtend_rules(
    frequent: pd.DataFrame,
    item_ids: np.ndarray,
    n_baskets: int,
    *,
    min_confidence: float,
    min_lift: float,
    engine: str,
) -> pd.DataFrame:
    """The seed's way: `mlxtend.frequent_patterns.association_rules` on mlxtend's itemsets.

    Column names in `frequent` are item indices. mlxtend's candidate set is taken slightly
    below the confidence threshold and then cut on exact counts, like `association_rules`.
    """
    from mlxtend.frequent_patterns import association_rules as mlx_rules

    if frequent.empty or not (frequent["itemsets"].map(len) >= 2).any():
        return empty_rules()
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = mlx_rules(
            frequent,
            num_itemsets=n_baskets,
            metric="confidence",
            min_threshold=max(min_confidence - 1e-9, 0.0),
        )
    if raw.empty:
        return empty_rules()
    n = n_baskets
    n_a = np.rint(raw["antecedent support"].to_numpy() * n).astype(np.int64)
    n_c = np.rint(raw["consequent support"].to_numpy() * n).astype(np.int64)
    n_ac = np.rint(raw["support"].to_numpy() * n).astype(np.int64)
    keep = _passes(n_a, n_c, n_ac, n, min_confidence, min_lift)
    raw = raw[keep].reset_index(drop=True)
    ante = [sorted(int(i) for i in s) for s in raw["antecedents"]]
    cons = [sorted(int(i) for i in s) for s in raw["consequents"]]
    conviction = raw["conviction"].to_numpy(dtype=np.float64)
    rules = pd.DataFrame(
        {
            "antecedent": [SEPARATOR.join(item_ids[a].astype(str)) for a in ante],
            "consequent": [SEPARATOR.join(item_ids[c].astype(str)) for c in cons],
            "antecedent_len": np.asarray([len(a) for a in ante], dtype=np.int32),
            "consequent_len": np.asarray([len(c) for c in cons], dtype=np.int32),
            "n_antecedent": n_a[keep],
            "n_consequent": n_c[keep],
            "n_both": n_ac[keep],
            "n_baskets": np.int64(n),
            "antecedent_support": raw["antecedent support"].to_numpy(dtype=np.float64),
            "consequent_support": raw["consequent support"].to_numpy(dtype=np.float64),
            "support": raw["support"].to_numpy(dtype=np.float64),
            "confidence": raw["confidence"].to_numpy(dtype=np.float64),
            "lift": raw["lift"].to_numpy(dtype=np.float64),
            "leverage": raw["leverage"].to_numpy(dtype=np.float64),
            "conviction": np.where(np.isinf(conviction), np.nan, conviction),
            "engine": engine,
        }
    )
    return _ordered(rules) if len(rules) else empty_rules()


def compare_rules(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-9) -> list[str]:
    """Differences between two rule tables (empty when identical up to `rtol`)."""
    key = ["antecedent", "consequent"]
    left, right = a.set_index(key).sort_index(), b.set_index(key).sort_index()
    problems = []
    only_a = left.index.difference(right.index)
    only_b = right.index.difference(left.index)
    if len(only_a):
        problems.append(f"{len(only_a)} rules only in {_engines(a)}: {list(only_a[:3])}")
    if len(only_b):
        problems.append(f"{len(only_b)} rules only in {_engines(b)}: {list(only_b[:3])}")
    common = left.index.intersection(right.index)
    for col in ["n_antecedent", "n_consequent", "n_both"]:
        if not np.array_equal(left.loc[common, col], right.loc[common, col]):
            problems.append(f"counts differ in {col}")
    for col in ["antecedent_support", "consequent_support", *METRIC_COLUMNS]:
        x = left.loc[common, col].to_numpy(dtype=np.float64)
        y = right.loc[common, col].to_numpy(dtype=np.float64)
        if not np.allclose(x, y, rtol=rtol, atol=0.0, equal_nan=True):
            worst = np.nanmax(np.abs(x - y) / np.maximum(np.abs(y), 1e-300))
            problems.append(f"{col} differs (worst relative error {worst:.3g})")
    return problems


def _engines(frame: pd.DataFrame) -> str:
    return ",".join(sorted(frame["engine"].unique())) if len(frame) else "(empty)"
