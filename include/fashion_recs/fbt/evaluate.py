"""How good are the FBT lists: planted bundles recovered, and held-out baskets completed.

- Bundle recovery (synthetic retailer only): the unordered product pairs of one-to-one rules
  against the pairs inside the planted bundles; precision, recall, and the share of bundles
  whose every pair was found.
- Basket completion on a temporal split: rules and lists are rebuilt from the baskets before
  the cut; for each later basket with two or more products, one of its products (chosen with
  the run's seed) is the query and the rest of the basket is the truth. The served lists are
  scored beside the popularity baseline with the shared ranking metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import polars as pl
import scipy.sparse as sp

from fashion_recs.evaluate import evaluate_all, holdout_cutoff
from fashion_recs.fbt.matrix import BasketMatrix

log = logging.getLogger(__name__)

QUERY = "query_id"


def rule_pairs(rules: pd.DataFrame, min_pair_count: int = 1) -> set[tuple[str, str]]:
    """Unordered product pairs of the one-to-one rules."""
    pairs = rules[
        (rules["antecedent_len"] == 1)
        & (rules["consequent_len"] == 1)
        & (rules["n_both"] >= min_pair_count)
    ]
    a, c = pairs["antecedent"].to_numpy(), pairs["consequent"].to_numpy()
    return {(x, y) if x < y else (y, x) for x, y in zip(a.tolist(), c.tolist(), strict=True)}


def bundle_pairs(bundles: pd.DataFrame) -> tuple[set[tuple[str, str]], dict[int, set]]:
    """All within-bundle product pairs, and each bundle's own pairs."""
    every: set[tuple[str, str]] = set()
    per_bundle: dict[int, set] = {}
    for bundle_id, members in bundles.groupby("bundle_id")["product_id"]:
        ids = sorted(members.tolist())
        own = {(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))}
        per_bundle[int(bundle_id)] = own
        every |= own
    return every, per_bundle


def bundle_recovery(
    rules: pd.DataFrame, bundles: pd.DataFrame, min_pair_count: int = 1
) -> dict[str, float]:
    """Precision / recall of rule pairs against planted bundle pairs."""
    found = rule_pairs(rules, min_pair_count)
    truth, per_bundle = bundle_pairs(bundles)
    hits = found & truth
    complete = sum(1 for own in per_bundle.values() if own <= found)
    return {
        "bundle_pair_precision": len(hits) / len(found) if found else 0.0,
        "bundle_pair_recall": len(hits) / len(truth) if truth else 0.0,
        "bundles_complete": complete / len(per_bundle) if per_bundle else 0.0,
        "n_rule_pairs": float(len(found)),
        "n_bundle_pairs": float(len(truth)),
    }


def split_baskets(baskets: pl.DataFrame, holdout_days: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Baskets started on the last `holdout_days` calendar days test; earlier ones train.

    The cut is `fashion_recs.evaluate.holdout_cutoff` of the latest basket start, the rule
    every hold-out of a run follows.
    """
    if baskets.height == 0:
        return baskets, baskets
    cut = holdout_cutoff(pd.Timestamp(baskets["basket_start"].max()), holdout_days).to_pydatetime()
    train = baskets.filter(pl.col("basket_start") < cut)
    test = baskets.filter(pl.col("basket_start") >= cut)
    return train, test


def completion_queries(
    test: pl.DataFrame, known: set[str], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(queries: query_id, product_id) and (truth: query_id, product_id) from test baskets.

    Only products the training side knows can be asked about; a basket needs a known query
    product and at least one other product.
    """
    frame = test.select("basket_id", "product_id").to_pandas()
    frame = frame[frame["product_id"].isin(known)]
    sizes = frame.groupby("basket_id")["product_id"].transform("size")
    frame = frame[sizes >= 2].sort_values(["basket_id", "product_id"]).reset_index(drop=True)
    if frame.empty:
        empty = pd.DataFrame({QUERY: pd.Series(dtype="int64"), "product_id": pd.Series(dtype=str)})
        return empty, empty
    rng = np.random.default_rng(seed)
    starts = frame.groupby("basket_id").indices
    chosen = np.asarray(
        [idx[rng.integers(len(idx))] for _, idx in sorted(starts.items())], dtype=np.int64
    )
    is_query = np.zeros(len(frame), dtype=bool)
    is_query[chosen] = True
    queries = frame[is_query].rename(columns={"basket_id": QUERY})
    truth = frame[~is_query].rename(columns={"basket_id": QUERY})
    return queries.reset_index(drop=True), truth.reset_index(drop=True)


def list_predictions(queries: pd.DataFrame, lists: pd.DataFrame) -> pd.DataFrame:
    """Each query's served list: (query_id, product_id, rank)."""
    served = queries.merge(lists[["product_id", "rank", "recommended_product_id"]], on="product_id")
    return served[[QUERY, "recommended_product_id", "rank"]].rename(
        columns={"recommended_product_id": "product_id"}
    )


def popularity_predictions(queries: pd.DataFrame, popularity: pd.Series, k: int) -> pd.DataFrame:
    """The k most popular training products for every query, skipping the query product."""
    top = popularity.sort_values(ascending=False, kind="stable").head(k + 1).index.to_numpy()
    rows = queries[[QUERY, "product_id"]].merge(
        pd.DataFrame({"candidate": top, "rank": np.arange(1, len(top) + 1)}), how="cross"
    )
    rows = rows[rows["candidate"] != rows["product_id"]]
    rows = rows[[QUERY, "candidate", "rank"]].rename(columns={"candidate": "product_id"})
    return rows


def basket_completion(
    baskets: pl.DataFrame,
    build_lists: Callable[[pl.DataFrame], tuple[pd.DataFrame, pd.Series]],
    *,
    holdout_days: int,
    k: int,
    seed: int,
    catalogue_size: int,
) -> pd.DataFrame:
    """Metrics rows (METRICS schema) for `fbt` and `fbt_popularity` on held-out baskets.

    `build_lists(train_baskets)` returns (lists, popularity by product) built from train only.
    """
    train, test = split_baskets(baskets, holdout_days)
    lists, popularity = build_lists(train)
    queries, truth = completion_queries(test, set(popularity.index), seed)
    log.info(
        "fbt evaluation: %d train baskets, %d test baskets, %d queries",
        train["basket_id"].n_unique(),
        test["basket_id"].n_unique(),
        len(queries),
    )
    candidates = {
        "fbt": list_predictions(queries, lists),
        "fbt_popularity": popularity_predictions(queries, popularity, k),
    }
    return pd.concat(
        [
            evaluate_all(
                truth, preds, user_col=QUERY, k=k, catalogue_size=catalogue_size, model=name
            )
            for name, preds in candidates.items()
        ],
        ignore_index=True,
    )


def completion_hit_rate(lists: pd.DataFrame, test: BasketMatrix, k: int) -> tuple[float, int]:
    """(hit rate, queries): for every product of every held-out basket with two or more
    products, does any other product of that basket appear in the product's top k?

    Every product of a basket is asked in turn (a basket of n products is n queries), the
    way a front-end shows the list beside each product in a cart. A product without a list
    is a miss.
    """
    sizes = test.basket_sizes()
    X = test.X[sizes >= 2].tocsr()
    n_queries = int(X.nnz)
    if n_queries == 0:
        return 0.0, 0
    position = pd.Series(np.arange(test.n_items), index=test.item_ids.astype(str))
    top = lists[lists["rank"] <= k]
    a = top["product_id"].map(position).to_numpy(dtype=np.float64)
    b = top["recommended_product_id"].map(position).to_numpy(dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    rows, cols = a[keep].astype(np.int64), b[keep].astype(np.int64)
    L = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(test.n_items, test.n_items)
    )
    return _queries_hit(X, L, QUERY_BLOCK) / n_queries, n_queries


# Queries whose list entries are looked up at once (about 12 entries each).
QUERY_BLOCK = 1_000_000


def _queries_hit(X: sp.csr_matrix, L: sp.csr_matrix, block: int) -> int:
    """How many (basket, product) entries of `X` have a product of the same basket in the
    product's row of `L`.

    Only each query's own list is looked up (queries x k entries). The product X @ L.T would
    count every listed product of every basket, and a product in everyone's list (the popular
    ones are) has a column as long as the catalogue: two billion entries at 50k products."""
    X = sp.csr_matrix(X)
    X.sort_indices()
    width = np.int64(X.shape[1])
    basket = np.repeat(np.arange(X.shape[0], dtype=np.int64), np.diff(X.indptr))
    keys = basket * width + X.indices  # sorted: rows ascending, columns ascending within
    hits = 0
    for lo in range(0, len(keys), block):
        rows, items = basket[lo : lo + block], X.indices[lo : lo + block].astype(np.int64)
        starts, lengths = L.indptr[items], np.diff(L.indptr)[items]
        query = np.repeat(np.arange(len(items)), lengths)
        offset = np.arange(len(query)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        listed = L.indices[np.repeat(starts, lengths) + offset].astype(np.int64)
        wanted = rows[query] * width + listed
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        hit = np.zeros(len(items), dtype=bool)
        hit[query[keys[pos] == wanted]] = True
        hits += int(hit.sum())
    return hits
