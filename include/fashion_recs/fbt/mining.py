"""Frequent itemsets from a basket matrix, by four interchangeable engines.

- `sparse`: this project's exact engine. Pairs are one sparse product `X.T @ X` over the
  frequent items, computed in item blocks so its memory stays bounded; longer itemsets grow
  depth-first from each frequent prefix by the same product on the prefix's baskets only
  (a sparse Eclat). Exact at any length with bounded memory; pyfim can be faster on real
  baskets (see `choose_engine`).
- `pyfim_fpgrowth`: Christian Borgelt's C implementation of FP-Growth (pyfim).
- `mlxtend_fpgrowth`, `mlxtend_apriori`: the seed's two algorithms, through mlxtend on a
  sparse one-hot frame.

Every engine returns the same `Itemsets` (sorted item indices with absolute basket counts)
for the same threshold, so rules are derived once, identically, whatever mined them; tests and
the daily cross-check hold the engines to that. Each engine estimates its working memory first
and refuses, saying what to raise, when the estimate passes the configured limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from fashion_recs.errors import ResourceLimitExceeded
from fashion_recs.fbt.matrix import BasketMatrix

log = logging.getLogger(__name__)

ENGINES = ("sparse", "pyfim_fpgrowth", "mlxtend_fpgrowth", "mlxtend_apriori")
MIB = 1 << 20


@dataclass
class Itemsets:
    """Frequent itemsets by length: `items[k]` is an (m, k) array of sorted item indices,
    `counts[k]` their basket counts; rows are in lexicographic order."""

    item_ids: np.ndarray
    n_baskets: int
    min_count: int
    items: dict[int, np.ndarray] = field(default_factory=dict)
    counts: dict[int, np.ndarray] = field(default_factory=dict)
    engine: str = ""
    seconds: float = 0.0

    @property
    def n_itemsets(self) -> int:
        return int(sum(len(c) for c in self.counts.values()))

    def lengths(self) -> list[int]:
        return sorted(k for k, c in self.counts.items() if len(c))

    def as_dict(self) -> dict[tuple[str, ...], int]:
        """{tuple of product ids: count}, for comparing engines and for tests."""
        out: dict[tuple[str, ...], int] = {}
        for k in self.lengths():
            for row, count in zip(self.items[k], self.counts[k], strict=True):
                out[tuple(self.item_ids[row].tolist())] = int(count)
        return out

    def count_lookup(self, k: int) -> dict[tuple[int, ...], int]:
        return {
            tuple(row.tolist()): int(c)
            for row, c in zip(self.items[k], self.counts[k], strict=True)
        }


def support_threshold(n_baskets: int, min_support: float, min_count: int) -> int:
    """The smallest basket count that makes an itemset frequent."""
    return max(int(min_count), math.ceil(min_support * n_baskets - 1e-9), 1)


def _finish(
    m: BasketMatrix,
    t: int,
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]],
    engine: str,
    started: float,
) -> Itemsets:
    """Concatenate, sort lexicographically and package the per-length pieces."""
    out = Itemsets(m.item_ids, m.n_baskets, t, engine=engine)
    for k, pieces in sorted(found.items()):
        pieces = [p for p in pieces if len(p[1])]
        if not pieces:
            continue
        items = np.concatenate([p[0] for p in pieces]).astype(np.int64).reshape(-1, k)
        counts = np.concatenate([p[1] for p in pieces]).astype(np.int64)
        order = np.lexsort(items.T[::-1])
        out.items[k], out.counts[k] = items[order], counts[order]
    out.seconds = time.perf_counter() - started
    return out


# --- sparse -----------------------------------------------------------------------------------


def _pair_blocks(work: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Contiguous item ranges whose summed pair work stays within `budget` entries."""
    blocks, start, acc = [], 0, 0
    for i, w in enumerate(work.tolist()):
        if acc and acc + w > budget:
            blocks.append((start, i))
            start, acc = i, 0
        acc += w
    if start < len(work):
        blocks.append((start, len(work)))
    return blocks


def _sparse_pairs(
    Xf: sp.csr_matrix, t: int, budget_entries: int, max_bytes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, count) for every pair a < b of columns of Xf co-occurring in >= t rows."""
    sizes = np.diff(Xf.indptr).astype(np.int64)
    XT = Xf.T.tocsr()
    # Upper bound of one item's non-zero products: the other items of its baskets.
    work = np.asarray(XT @ np.maximum(sizes - 1, 0)).ravel().astype(np.int64)
    rows_a, rows_b, rows_c = [], [], []
    kept = 0
    for lo, hi in _pair_blocks(work, budget_entries):
        block = (XT[lo:hi] @ Xf).tocoo()
        a = block.row.astype(np.int64) + lo
        keep = (block.col > a) & (block.data >= t)
        rows_a.append(a[keep])
        rows_b.append(block.col[keep].astype(np.int64))
        rows_c.append(block.data[keep].astype(np.int64))
        kept += int(keep.sum())
        if kept * 24 > max_bytes:
            raise ResourceLimitExceeded(
                f"more than {kept:,} frequent pairs at a threshold of {t} baskets would pass "
                f"the memory limit of {max_bytes // MIB} MiB; raise fbt.mining.min_support or "
                "fbt.mining.min_count (or fbt.mining.max_memory_mb)"
            )
    if not rows_a:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    a, b, c = np.concatenate(rows_a), np.concatenate(rows_b), np.concatenate(rows_c)
    order = np.lexsort((b, a))
    return a[order], b[order], c[order]


def _extend(
    Xf: sp.csr_matrix,
    prefix: tuple[int, ...],
    rows: np.ndarray,
    cands: np.ndarray,
    t: int,
    max_len: int,
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]],
) -> None:
    """Itemsets prefix + {x, y} for candidate extensions x < y (each prefix + {x} frequent),
    counted by one sparse product on the prefix's baskets; recurse on each new prefix."""
    k = len(prefix) + 2
    if k > max_len or len(cands) < 2:
        return
    sub = Xf[rows][:, cands].tocsc()
    S = (sub.T @ sub).tocoo()
    keep = (S.col > S.row) & (S.data >= t)
    i, j, c = S.row[keep], S.col[keep], S.data[keep]
    if not len(c):
        return
    order = np.lexsort((j, i))
    i, j, c = i[order], j[order], c[order]
    head = np.tile(np.asarray(prefix, dtype=np.int64), (len(c), 1))
    found.setdefault(k, []).append(
        (np.column_stack([head, cands[i], cands[j]]), c.astype(np.int64))
    )
    if k + 1 > max_len:
        return
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    ends = np.r_[starts[1:], len(i)]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        x = int(i[s])
        if e - s < 2:
            continue
        col = sub.indices[sub.indptr[x] : sub.indptr[x + 1]]
        _extend(Xf, (*prefix, int(cands[x])), rows[col], cands[j[s:e]], t, max_len, found)


def mine_sparse(m: BasketMatrix, t: int, max_len: int, max_bytes: int) -> Itemsets:
    """Exact frequent itemsets by sparse co-occurrence products (see the module docstring)."""
    started = time.perf_counter()
    counts = m.item_counts()
    freq = np.flatnonzero(counts >= t)
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {1: [(freq[:, None], counts[freq])]}
    if max_len >= 2 and len(freq) >= 2:
        Xf = m.X[:, freq].tocsr()
        Xf = Xf[np.diff(Xf.indptr) >= 2]
        budget = max(max_bytes // 48, 1 << 16)
        a, b, c = _sparse_pairs(Xf, t, budget, max_bytes)
        found[2] = [(np.column_stack([freq[a], freq[b]]), c)]
        if max_len >= 3 and len(c):
            XT = Xf.T.tocsr()
            starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
            ends = np.r_[starts[1:], len(a)]
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                if e - s < 2:
                    continue
                x = int(a[s])
                rows = XT.indices[XT.indptr[x] : XT.indptr[x + 1]]
                local: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
                _extend(Xf, (x,), rows, b[s:e], t, max_len, local)
                for k, pieces in local.items():
                    found.setdefault(k, []).extend((freq[p], cnt) for p, cnt in pieces)
    return _finish(m, t, found, "sparse", started)


# --- pyfim ------------------------------------------------------------------------------------


def mine_pyfim_fpgrowth(m: BasketMatrix, t: int, max_len: int, max_bytes: int) -> Itemsets:
    """Borgelt's FP-Growth (C) over the baskets as lists of item indices."""
    import fim

    _require(m.X.nnz * 64, max_bytes, "pyfim_fpgrowth", "the FP-tree")
    started = time.perf_counter()
    # pyfim leaves out the singleton of an item that is in every transaction (measured with
    # pyfim 6.28); one extra empty transaction keeps every item below "all", and counts are
    # absolute, so nothing else changes.
    transactions = [*m.transactions(), []]
    result = fim.fpgrowth(transactions, target="s", supp=-t, zmin=1, zmax=max_len, report="a")
    return _finish(m, t, _group(result), "pyfim_fpgrowth", started)


def _group(result: list[tuple[tuple[int, ...], int]]) -> dict[int, list]:
    by_len: dict[int, tuple[list, list]] = {}
    for itemset, count in result:
        rows, counts = by_len.setdefault(len(itemset), ([], []))
        rows.append(sorted(itemset))
        counts.append(count)
    return {
        k: [(np.asarray(rows, dtype=np.int64).reshape(-1, k), np.asarray(counts, dtype=np.int64))]
        for k, (rows, counts) in by_len.items()
    }


# --- mlxtend ----------------------------------------------------------------------------------


def mlxtend_itemsets(
    algorithm: str, m: BasketMatrix, t: int, max_len: int, max_bytes: int
) -> tuple[Itemsets, object]:
    """Run an mlxtend miner; also returns its frequent-itemset frame for `association_rules`."""
    import pandas as pd
    from mlxtend.frequent_patterns import apriori, fpgrowth

    counts = m.item_counts()
    n_freq = int((counts >= t).sum())
    if algorithm == "apriori":
        # Level 2 tests every pair of frequent items on every basket (n x C(F, 2) booleans).
        _require(m.n_baskets * n_freq * (n_freq - 1), max_bytes, "mlxtend_apriori", "candidates")
    else:
        _require(m.X.nnz * 200, max_bytes, "mlxtend_fpgrowth", "the FP-tree")
    started = time.perf_counter()
    engine = f"mlxtend_{algorithm}"
    if m.n_baskets == 0 or m.n_items == 0 or n_freq == 0:
        return _finish(m, t, {}, engine, started), pd.DataFrame(columns=["support", "itemsets"])
    onehot = pd.DataFrame.sparse.from_spmatrix(m.X.astype(bool), columns=np.arange(m.n_items))
    # Half a basket below the threshold: the float comparison cannot flip a boundary itemset.
    min_support = (t - 0.5) / m.n_baskets
    miner = apriori if algorithm == "apriori" else fpgrowth
    frame = miner(onehot, min_support=min_support, use_colnames=True, max_len=max_len)
    found: dict[int, tuple[list, list]] = {}
    for support, itemset in zip(frame["support"].tolist(), frame["itemsets"].tolist(), strict=True):
        rows, cnts = found.setdefault(len(itemset), ([], []))
        rows.append(sorted(int(i) for i in itemset))
        cnts.append(round(support * m.n_baskets))
    grouped = {
        k: [(np.asarray(r, dtype=np.int64).reshape(-1, k), np.asarray(c, dtype=np.int64))]
        for k, (r, c) in found.items()
    }
    return _finish(m, t, grouped, engine, started), frame


def mine_mlxtend_fpgrowth(m: BasketMatrix, t: int, max_len: int, max_bytes: int) -> Itemsets:
    return mlxtend_itemsets("fpgrowth", m, t, max_len, max_bytes)[0]


def mine_mlxtend_apriori(m: BasketMatrix, t: int, max_len: int, max_bytes: int) -> Itemsets:
    return mlxtend_itemsets("apriori", m, t, max_len, max_bytes)[0]


def _require(estimate: int, max_bytes: int, engine: str, what: str) -> None:
    if estimate > max_bytes:
        raise ResourceLimitExceeded(
            f"{engine} would need about {estimate / MIB:,.0f} MiB for {what}, over the limit of "
            f"{max_bytes // MIB:,} MiB; raise fbt.mining.min_support or fbt.mining.min_count, "
            "choose fbt.mining.engine 'sparse', or raise fbt.mining.max_memory_mb"
        )


MINERS: dict[str, Callable[[BasketMatrix, int, int, int], Itemsets]] = {
    "sparse": mine_sparse,
    "pyfim_fpgrowth": mine_pyfim_fpgrowth,
    "mlxtend_fpgrowth": mine_mlxtend_fpgrowth,
    "mlxtend_apriori": mine_mlxtend_apriori,
}


def choose_engine(engine: str) -> str:
    """`auto` is the sparse engine: exact, any max_len, bounded memory. It is not the
    fastest everywhere: ~2x pyfim on bench/fbt.py's generated baskets (200k to 2M, >100x
    mlxtend), but pyfim took half its time on a real retailer's 88k baskets at max_len 3;
    name `pyfim_fpgrowth` where mining time matters."""
    if engine == "auto":
        return "sparse"
    if engine not in MINERS:
        raise ValueError(f"unknown mining engine {engine!r}; choose one of {ENGINES}")
    return engine


def mine(
    m: BasketMatrix,
    *,
    min_support: float,
    min_count: int,
    max_len: int,
    engine: str = "auto",
    max_memory_mb: int = 4096,
) -> Itemsets:
    """Frequent itemsets of up to `max_len` items with the chosen engine."""
    name = choose_engine(engine)
    t = support_threshold(m.n_baskets, min_support, min_count)
    log.info(
        "mining %s baskets x %s items with %s, threshold %d baskets, max_len %d",
        f"{m.n_baskets:,}",
        f"{m.n_items:,}",
        name,
        t,
        max_len,
    )
    result = MINERS[name](m, t, max_len, max_memory_mb * MIB)
    log.info(
        "%s: %s itemsets by length %s in %.2f s",
        name,
        f"{result.n_itemsets:,}",
        {k: len(result.counts[k]) for k in result.lengths()},
        result.seconds,
    )
    return result
