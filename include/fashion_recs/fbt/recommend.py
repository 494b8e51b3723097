"""Per-product "frequently bought together" lists: one ranking over all the evidence.

A front-end asks for one product's complements and must always get a full list, so every
catalogue product gets `top_k` entries. Every candidate b of a product a is scored by one
number, its confidence shrunk toward popularity,

    score(a -> b) = (n_ab + shrinkage * p_b) / (n_a + shrinkage),   p_b = n_b / n_baskets,

the estimate of "a basket holding a also holds b" that trusts a pair as far as its baskets
allow. A product that never shared a basket with a scores its prior, so the popularity pad
sits on the same scale as the evidence: a pair seen twice with a rare product outranks a
staple only when the counts say so. Mining thresholds (`min_support`, `min_lift`) shape which
rules are mined and labelled, never what outranks stronger co-occurrence (real baskets showed
lift-first lists losing to plain popularity). Entries are labelled in `source`:

1. `rules`: the pair is a mined one-to-one rule with at least `min_pair_count` joint baskets;
2. `co_viewed`: the products shared at least `min_coview_count` baskets;
3. `audience_popularity`: a pad from the most popular products of the product's audience;
4. `popularity`: a pad from the most popular products overall.

With `exclude_same_department`, products of the same department go after every other
candidate (a second pair of jeans substitutes, it does not complement) but still fill a list
that would otherwise be short; a product without a department is in no department.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashion_recs.config import FbtListsConfig
from fashion_recs.contract import FBT_RECOMMENDATIONS_SCHEMA
from fashion_recs.evaluate import position_in_run
from fashion_recs.fbt.matrix import BasketMatrix
from fashion_recs.sort_keys import distinct, in_sorted, sort_order

log = logging.getLogger(__name__)

# A progress line at least this often, well inside the 30 s an operator waits for one (a
# block's work comes on top of the interval).
PROGRESS_EVERY_S = 10.0
SOURCES = ("rules", "co_viewed", "audience_popularity", "popularity")
NO_GROUP = "\x00"


def _rule_pairs(rules: pd.DataFrame, min_pair_count: int) -> pd.MultiIndex:
    pairs = rules[
        (rules["antecedent_len"] == 1)
        & (rules["consequent_len"] == 1)
        & (rules["n_both"] >= min_pair_count)
    ]
    return pd.MultiIndex.from_arrays(
        [pairs["antecedent"].astype(str), pairs["consequent"].astype(str)]
    )


def co_viewed(
    matrix: BasketMatrix,
    products: list[str] | np.ndarray,
    min_count: int,
    per_product: int,
    max_block_entries: int = 8_000_000,
    *,
    shrinkage: float = 0.0,
    department: np.ndarray | None = None,
) -> pd.DataFrame:
    """For each product in `products`, up to `per_product` products sharing its baskets (at
    least `min_count`), best shrunk confidence first. With `department` (a code per matrix
    item, "" for none), same-department candidates are marked `demoted` and kept only after
    the others.

    Rows are taken in blocks whose co-occurrence entries (bounded by the sum of the sizes of
    each product's baskets) stay under `max_block_entries`, and each block keeps only each
    row's best `per_product` of either kind: a popular product shares baskets with most of
    the catalogue, so a fixed number of rows per block held hundreds of millions of entries
    at 3M baskets and 50k products.

    Columns: product_id, recommended_product_id, score, n_both, n_antecedent, demoted.
    """
    position = {p: i for i, p in enumerate(matrix.item_ids.tolist())}
    wanted = np.asarray([position[p] for p in products if p in position], dtype=np.int64)
    (evidence,) = co_viewed_variants(
        matrix, wanted, min_count, per_product, [(shrinkage, department)], max_block_entries
    )
    return pd.DataFrame(
        {
            "product_id": matrix.item_ids[evidence.row],
            "recommended_product_id": matrix.item_ids[evidence.col],
            "score": evidence.score,
            "n_both": evidence.n_both,
            "n_antecedent": evidence.n_antecedent,
            "demoted": evidence.demoted,
        }
    )


@dataclass(frozen=True)
class Evidence:
    """`co_viewed`'s rows as matrix item positions: for each asked row (`row`), its
    best candidates (`col`), their shrunk confidence, joint and antecedent basket counts and
    whether they share the row's department."""

    row: np.ndarray
    col: np.ndarray
    score: np.ndarray
    n_both: np.ndarray
    n_antecedent: np.ndarray
    demoted: np.ndarray


def co_viewed_variants(
    matrix: BasketMatrix,
    wanted: np.ndarray,
    min_count: int,
    per_product: int,
    variants: Sequence[tuple[float, np.ndarray | None]],
    max_block_entries: int = 8_000_000,
) -> list[Evidence]:
    """`co_viewed` for several (shrinkage, department) settings at once, as arrays of matrix
    item positions for the items at `wanted`: the gate's
    variants share the co-occurrence counts, the costliest part, so each block of them is
    counted once and ranked once per variant."""
    empty = np.zeros(0, dtype=np.int64)
    if len(wanted) == 0 or matrix.n_baskets == 0:
        none = np.zeros(0, dtype=np.float64)
        return [Evidence(empty, empty, none, none, none, np.zeros(0, dtype=bool)) for _ in variants]
    counts = matrix.item_counts().astype(np.float64)
    prior = counts / matrix.n_baskets
    XT = matrix.X.T.tocsr()
    X = matrix.X.tocsr()
    # Upper bound of each row's entries: the summed sizes of the baskets holding the product.
    bound = np.asarray(XT[wanted] @ matrix.basket_sizes().astype(np.float64)).ravel()
    depts = [None if d is None else _department_codes(d) for _, d in variants]
    parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in variants]
    blocks = _blocks(wanted, bound, max_block_entries)
    started = last = time.perf_counter()
    for done, rows in enumerate(blocks, start=1):
        C = (XT[rows] @ X).tocoo()
        src = rows[C.row]
        keep = (C.col != src) & (C.data >= min_count)
        local, joint = C.row[keep], C.data[keep]
        r, c, n = src[keep], C.col[keep].astype(np.int64), joint.astype(np.float64)
        for (shrinkage, _), dept, out in zip(variants, depts, parts, strict=True):
            den = counts[rows] + shrinkage
            score = (n + shrinkage * prior[c]) / den[local]
            demoted = (
                (dept[r] == dept[c]) & (dept[r] >= 0)
                if dept is not None
                else np.zeros(len(r), dtype=bool)
            )
            # Most entries cannot make their row's list: sort only those that may.
            may = _contenders(local, den, joint, score, demoted, per_product)
            vr, vc, vn, vs, vd = r[may], c[may], n[may], score[may], demoted[may]
            # Within each row: the others first, then better score, then lower column.
            order = sort_order((vr, False), (vd, False), (vs, True), (vc, False))
            vr, vc, vn, vs, vd = vr[order], vc[order], vn[order], vs[order], vd[order]
            best = position_in_run(vr) <= per_product
            out.append((vr[best], vc[best], vn[best], vs[best], vd[best]))
        if time.perf_counter() - last >= PROGRESS_EVERY_S and done < len(blocks):
            last = time.perf_counter()
            rate = done / (last - started)
            log.info(
                "fbt lists: co-occurrence block %d/%d (%d variant(s), ~%.0f s left)",
                done,
                len(blocks),
                len(variants),
                (len(blocks) - done) / rate,
            )
    out = []
    for variant in parts:
        # Blocks in the order asked (cut from `wanted` in order), each block in item order.
        r, c, n, score, demoted = (np.concatenate(x) for x in zip(*variant, strict=True))
        out.append(Evidence(r, c, score, n, counts[r], demoted.astype(bool)))
    return out


def _department_codes(department: np.ndarray) -> np.ndarray:
    """A code per department name ("" none: -1); codes compare faster than strings."""
    values = np.asarray(department, dtype=object)
    codes = pd.factorize(values)[0]
    codes[values == ""] = -1
    return codes


# Joint basket counts from this many up are counted together by `_contenders`.
_COUNT_CAP = 64


def _contenders(
    local: np.ndarray,
    den: np.ndarray,
    n: np.ndarray,
    score: np.ndarray,
    demoted: np.ndarray,
    per_product: int,
) -> np.ndarray:
    """Which co-occurrence entries of a block may be among their row's best `per_product`.

    `local` is each entry's row in the block, `den` each row's score denominator, `n` its
    joint basket count and `score` its shrunk confidence, `(n + shrinkage * prior) / den`. If a
    row has `per_product` entries of the others (not demoted) with a count of at least `t`,
    each of them scores at least `t / den`, so an entry scoring less is beaten by all of them
    and a demoted one by all of them too: only the rest are sorted. A row without that many
    keeps every entry. The largest such `t` (up to `_COUNT_CAP`) comes from a per-row
    histogram of the counts. Rounding keeps the bound: every step is monotone in `n`.
    """
    n_rows = len(den)
    width = _COUNT_CAP + 1
    others = ~demoted
    capped = np.minimum(n[others], _COUNT_CAP).astype(np.int64)
    hist = np.bincount(local[others] * width + capped, minlength=n_rows * width)
    at_least = np.cumsum(hist.reshape(n_rows, width)[:, ::-1], axis=1)[:, ::-1]
    threshold = (at_least[:, 1:] >= per_product).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a product in no basket: 0 / 0
        floor = threshold / den
    unsure = threshold[local] == 0
    return unsure | (others & (score >= floor[local]))


def _blocks(rows: np.ndarray, bound: np.ndarray, budget: int) -> list[np.ndarray]:
    """`rows` cut, in order, into runs whose summed `bound` stays under `budget` (at least
    one row each)."""
    blocks, start, total = [], 0, 0.0
    for i, b in enumerate(bound.tolist()):
        if i > start and total + b > budget:
            blocks.append(rows[start:i])
            start, total = i, 0.0
        total += b
    blocks.append(rows[start:])
    return blocks


@dataclass(frozen=True)
class PadRows:
    """Popularity pads as catalogue row positions: `product` gets `recommended` (whose basket
    count is `count`) from the audience's pad (`audience`) or the overall one."""

    product: np.ndarray
    recommended: np.ndarray
    count: np.ndarray
    audience: np.ndarray


def _name_rank(ids: np.ndarray) -> np.ndarray:
    """Each id's position in id order: sorting on it sorts on the ids."""
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return rank


def _pad_rows(
    catalogue: pd.DataFrame, count: np.ndarray, name_rank: np.ndarray, depth: int, exclude: bool
) -> PadRows:
    """Each product's popularity pad: its audience's and the overall most popular products,
    `depth` of them outside its own department and (when `exclude`) `depth` inside it, to
    fill a list only when nothing else can. `catalogue` (cleaned, positional index), `count`
    (baskets holding each of its products) and `name_rank` (`_name_rank` of its ids) are
    aligned; a pad is built once per group of products and repeated for its members."""
    department = catalogue["department"].to_numpy(dtype=object)
    # Most popular first, ties by product id.
    pop = np.flatnonzero(count > 0)
    pop = pop[np.lexsort((name_rank[pop], -count[pop]))]
    parts: list[tuple[np.ndarray, np.ndarray, bool]] = []
    for audience, key in ((True, "target_audience"), (False, None)):
        keys = [key] if key else []
        if exclude:
            keys.append("department")
        if keys:
            groups = catalogue.groupby(keys, sort=True).indices
            items = sorted(groups.items())
        else:
            items = [((), np.arange(len(catalogue)))]
        for values, members in items:
            value = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
            cand = pop
            if key:
                if value[key] == NO_GROUP:
                    continue
                cand = cand[catalogue[key].to_numpy(dtype=object)[cand] == value[key]]
            own = value.get("department", NO_GROUP)
            if own != NO_GROUP:
                same = department[cand] == own
                cand = np.concatenate([cand[~same][:depth], cand[same][:depth]])
            parts.append((np.sort(members), cand[: 2 * depth], audience))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return PadRows(empty, empty, np.zeros(0), np.zeros(0, dtype=bool))
    return PadRows(
        np.concatenate([np.repeat(m, len(t)) for m, t, _ in parts]),
        np.concatenate([np.tile(t, len(m)) for m, t, _ in parts]),
        np.concatenate([np.tile(count[t], len(m)) for m, t, _ in parts]),
        np.concatenate([np.full(len(m) * len(t), a) for m, t, a in parts]),
    )


def _pads(
    catalogue: pd.DataFrame, popularity: pd.Series, depth: int, exclude: bool
) -> pd.DataFrame:
    """`_pad_rows` as a frame of ids: product_id, recommended_product_id, count, source."""
    catalogue = catalogue.reset_index(drop=True)
    count = catalogue["product_id"].map(popularity).fillna(0.0).to_numpy(dtype=np.float64)
    ids = catalogue["product_id"].to_numpy(dtype=object)
    rows = _pad_rows(catalogue, count, _name_rank(ids), depth, exclude)
    return pd.DataFrame(
        {
            "product_id": ids[rows.product],
            "recommended_product_id": ids[rows.recommended],
            "count": rows.count,
            "source": np.where(rows.audience, "audience_popularity", "popularity"),
        }
    )


def recommend(
    rules: pd.DataFrame,
    catalogue: pd.DataFrame,
    matrix: BasketMatrix,
    config: FbtListsConfig,
) -> pd.DataFrame:
    """`top_k` complementary products for every catalogue product (FBT_RECOMMENDATIONS_SCHEMA).

    `catalogue` needs product_id, department and target_audience; `matrix` gives the
    co-occurrence counts and popularity (baskets holding each product). Candidates are
    ranked as catalogue row positions (ordered like their ids) and turned into ids once,
    for the `top_k` kept: at 50k products the candidates are millions of rows.
    """
    return recommend_variants(rules, catalogue, matrix, [config])[0]


def recommend_variants(
    rules: pd.DataFrame,
    catalogue: pd.DataFrame,
    matrix: BasketMatrix,
    configs: Sequence[FbtListsConfig],
) -> list[pd.DataFrame]:
    """`recommend` for each of `configs`, one co-occurrence pass for all the configs that
    share `top_k` and `min_coview_count` (the gate's variants differ only in shrinkage and
    the department exclusion): the same lists as one call per config, in a fraction of the
    time."""
    side = _Catalogue.of(catalogue, matrix)
    out: list[pd.DataFrame | None] = [None] * len(configs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault((config.top_k, config.min_coview_count), []).append(i)
    for (k, min_count), members in groups.items():
        settings = [
            (
                configs[i].shrinkage,
                side.item_department if configs[i].exclude_same_department else None,
            )
            for i in members
        ]
        evidences = co_viewed_variants(matrix, side.wanted, min_count, 3 * k, settings)
        for i, evidence in zip(members, evidences, strict=True):
            out[i] = _ranked_lists(rules, side, evidence, configs[i])
    return [lists for lists in out if lists is not None]


@dataclass(frozen=True)
class _Catalogue:
    """The cleaned catalogue against a basket matrix: its ids, departments and basket counts
    by catalogue row, each row's rank in id order, and the positions linking rows and matrix
    items (-1: absent on the other side)."""

    frame: pd.DataFrame
    ids: np.ndarray
    index: pd.Index
    department: np.ndarray
    name_rank: np.ndarray
    row_of_item: np.ndarray
    count: np.ndarray
    wanted: np.ndarray
    item_department: np.ndarray
    n_baskets: int

    @classmethod
    def of(cls, catalogue: pd.DataFrame, matrix: BasketMatrix) -> _Catalogue:
        frame = _clean(catalogue).reset_index(drop=True)
        ids = frame["product_id"].to_numpy(dtype=object)
        department = frame["department"].to_numpy(dtype=object)
        index = pd.Index(ids)
        item_ids = matrix.item_ids.astype(str)
        row_of_item = index.get_indexer(item_ids)
        item_of_row = pd.Index(item_ids).get_indexer(ids)
        item_counts = matrix.item_counts().astype(np.float64)
        known = row_of_item >= 0
        item_department = np.full(len(item_ids), "", dtype=object)
        item_department[known] = department[row_of_item[known]]
        item_department[item_department == NO_GROUP] = ""
        return cls(
            frame=frame,
            ids=ids,
            index=index,
            department=department,
            # Catalogue rows in id order: what sorting on product ids sorted by.
            name_rank=_name_rank(ids),
            row_of_item=row_of_item,
            count=np.where(item_of_row >= 0, item_counts[np.maximum(item_of_row, 0)], 0.0)
            if len(item_counts)
            else np.zeros(len(ids)),
            wanted=item_of_row[item_of_row >= 0],
            item_department=item_department,
            n_baskets=max(matrix.n_baskets, 1),
        )


def _ranked_lists(
    rules: pd.DataFrame, side: _Catalogue, evidence: Evidence, config: FbtListsConfig
) -> pd.DataFrame:
    """One config's lists from its evidence: the evidence and the popularity pads ranked on
    one scale, the best `top_k` of each product kept and labelled."""
    k = config.top_k
    ids, department, name_rank, count = side.ids, side.department, side.name_rank, side.count
    n_cat = len(ids)
    n = side.n_baskets
    m = config.shrinkage
    exclude = config.exclude_same_department
    row_of_item = side.row_of_item
    pads = _pad_rows(side.frame, count, name_rank, k + 1, exclude)
    pad_n_a = count[pads.product]
    prior = pads.count / n
    # With no shrinkage the pad still needs an order: popularity, below any evidence.
    pad_score = m * prior / (pad_n_a + m) if m > 0 else prior * 1e-9
    # Candidates in the order evidence, audience pads, overall pads: equal keys keep it.
    a = np.concatenate([row_of_item[evidence.row], pads.product])
    b = np.concatenate([row_of_item[evidence.col], pads.recommended])
    score = np.concatenate([evidence.score, pad_score])
    n_both = np.concatenate([evidence.n_both, np.zeros(len(pads.product))])
    n_antecedent = np.concatenate([evidence.n_antecedent, pad_n_a])
    source = np.concatenate(
        [
            np.zeros(len(evidence.row), dtype=np.int8),
            np.where(pads.audience, 1, 2).astype(np.int8),
        ]
    )
    ok = (b >= 0) & (a != b)
    a, b, score, n_both, n_antecedent, source = (
        x[ok] for x in (a, b, score, n_both, n_antecedent, source)
    )
    same = (department[a] == department[b]) & (department[a] != NO_GROUP)
    demoted = same & exclude
    order = sort_order(
        (name_rank[a], False), (demoted, False), (score, True), (name_rank[b], False)
    )
    pair = name_rank[a][order] * n_cat + name_rank[b][order]
    _, first = np.unique(pair, return_index=True)
    order = order[np.sort(first)]
    order = order[position_in_run(a[order]) <= k]
    a, b, score, n_both, n_antecedent, source, demoted = (
        x[order] for x in (a, b, score, n_both, n_antecedent, source, demoted)
    )
    labels = np.array(["co_viewed", "audience_popularity", "popularity"], dtype=object)[source]
    rule_pairs = _rule_pairs(rules, config.min_pair_count)
    rule_a = side.index.get_indexer(rule_pairs.get_level_values(0))
    rule_b = side.index.get_indexer(rule_pairs.get_level_values(1))
    known_rules = (rule_a >= 0) & (rule_b >= 0)
    rule_keys = distinct(rule_a[known_rules].astype(np.int64) * n_cat + rule_b[known_rules])
    keys = a.astype(np.int64) * n_cat + b
    is_rule = in_sorted(rule_keys, keys) & (n_both > 0)
    labels[is_rule] = "rules"
    top = pd.DataFrame(
        {
            "product_id": ids[a],
            "recommended_product_id": ids[b],
            "score": score,
            "source": labels,
            "demoted": demoted,
        }
    )
    _warn_demoted(top, side.frame, exclude)
    top["rank"] = position_in_run(a).astype("int32")
    evidence_rows = n_both > 0
    n_a = np.maximum(n_antecedent, 1.0)
    n_b = count[b]
    with np.errstate(divide="ignore", invalid="ignore"):
        top["support"] = np.where(evidence_rows, n_both / n, np.nan)
        top["confidence"] = np.where(evidence_rows, n_both / n_a, np.nan)
        top["lift"] = np.where(evidence_rows, n_both * n / (n_a * n_b), np.nan)
    return top[FBT_RECOMMENDATIONS_SCHEMA.names]


def _clean(catalogue: pd.DataFrame) -> pd.DataFrame:
    """product_id, department, target_audience with an empty department or audience as none."""
    catalogue = catalogue[["product_id", "department", "target_audience"]].copy()
    for col in ("department", "target_audience"):
        values = catalogue[col].astype("string").str.strip()
        catalogue[col] = values.mask(values == "").fillna(NO_GROUP).astype(object)
    return catalogue


def _warn_demoted(top: pd.DataFrame, catalogue: pd.DataFrame, exclude: bool) -> None:
    if not exclude or not top["demoted"].any():
        return
    short = int(top.loc[top["demoted"], "product_id"].nunique())
    departments = catalogue.loc[catalogue["department"] != NO_GROUP, "department"]
    largest = departments.value_counts()
    detail = ""
    if len(largest) and largest.iloc[0] / max(len(catalogue), 1) > 0.5:
        detail = (
            f"; department {largest.index[0]!r} holds {largest.iloc[0]:,} of "
            f"{len(catalogue):,} products, too coarse to tell substitutes from complements"
        )
    log.warning(
        "fbt lists: %d products needed same-department products to fill their lists "
        "(fbt.lists.exclude_same_department)%s",
        short,
        detail,
    )


def popularity_lists(
    catalogue: pd.DataFrame, counts: pd.Series, n_baskets: int, k: int
) -> pd.DataFrame:
    """Every product's list as plain popularity: the k most popular other products overall
    (what the popularity baseline serves), scored by their share of baskets;
    FBT_RECOMMENDATIONS_SCHEMA."""
    ids = catalogue["product_id"].astype(str)
    pop = counts[counts.index.isin(set(ids)) & (counts > 0)]
    top = pop.sort_values(ascending=False, kind="stable").head(k + 1)
    pairs = pd.DataFrame({"product_id": ids.to_numpy()}).merge(
        pd.DataFrame({"recommended_product_id": top.index.astype(str), "count": top.to_numpy()}),
        how="cross",
    )
    pairs = pairs[pairs["product_id"] != pairs["recommended_product_id"]]
    pairs = pairs.groupby("product_id", sort=True).head(k).copy()
    pairs["score"] = pairs["count"].astype(np.float64) / max(n_baskets, 1)
    pairs["source"] = "popularity"
    pairs["rank"] = (pairs.groupby("product_id", sort=False).cumcount() + 1).astype("int32")
    for col in ("support", "confidence", "lift"):
        pairs[col] = np.nan
    return pairs.reset_index(drop=True)[FBT_RECOMMENDATIONS_SCHEMA.names]


def coverage_by_source(lists: pd.DataFrame) -> dict[str, int]:
    """How many list entries each source supplied."""
    return {s: int((lists["source"] == s).sum()) for s in SOURCES}


__all__ = [
    "FBT_RECOMMENDATIONS_SCHEMA",
    "SOURCES",
    "co_viewed",
    "coverage_by_source",
    "popularity_lists",
    "recommend",
]
