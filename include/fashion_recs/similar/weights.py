"""Learning the text model's block weights from what the run's shoppers did.

The text model's cosine is a weighted mix of text and per-attribute agreement; the weights
come from config. When the run has signals of which products belong together, a small,
deterministic coordinate ascent picks each block's weight from a grid to maximise pair
recall@k (the share of a query product's signal partners found in its top k) on one half of
the pairs, and the result is compared with the configured weights on the other half. The
learned weights serve only when they win there; otherwise config stands, and the stage says
which and why.

Signals:
- `similar_click`: the two products of one similar-items click (the interactions stage keeps
  the clicked-from and the clicked product as two rows with the same user and time);
- `co_view`: products one user viewed on one day (opt-in: a day's views mix alternatives with
  complements and favourites);
- `variant_group`: products sharing `group_key`, extra evidence beside the others. Variants
  differ in colour by construction, so variant pairs never judge the `variant_differs`
  blocks (colour): learning from them would drive the colour weight to zero, and the seed's
  look-alikes share colour. Nor are they enough alone: finding a product's variants is not
  what a similar list is for (the ranker has its own variant source), and a catalogue's
  group key may join products that look nothing alike. So clicks and co-views judge every
  block and make the held-out decision; without them the configured weights stand.

Scoring is exact and cheap: every block of a product row has norm 1 (or 0 for empty text),
so the cosine of rows i and j under weights (t, a) is (t^2 x_ij + sum_c a_c^2 [c_i == c_j])
/ (|i| |j|), with x the text cosine. For a sample of query products the text cosines and a
bit mask of agreeing blocks against the whole catalogue are computed once; each weight
setting is then a table look-up and a top-k.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.config import LearnWeightsConfig
from fashion_recs.sort_keys import distinct, isin

log = logging.getLogger(__name__)

TEXT_BLOCK = "text"
BEHAVIOUR = "behaviour"  # similar clicks and co-views, pooled
VARIANT = "variant"
MAX_BLOCKS = 16  # attribute agreement is packed into 16 bits
TIE_SEED = 20_240_601


def _unordered(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Unique (a, b) row pairs with a < b; pairs of a product with itself dropped."""
    pairs = np.stack([np.minimum(left, right), np.maximum(left, right)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)


def _pairs_within(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Every pair of distinct rows (`row` column) sharing the keys."""
    if frame.empty:
        return np.zeros((0, 2), dtype=np.int64)
    joined = frame.merge(frame, on=keys, suffixes=("_a", "_b"))
    joined = joined[joined["row_a"] < joined["row_b"]]
    return _unordered(joined["row_a"].to_numpy(), joined["row_b"].to_numpy())


def behaviour_pairs(
    interactions: pd.DataFrame, product_ids: np.ndarray, cfg: LearnWeightsConfig
) -> dict[str, np.ndarray]:
    """Catalogue row pairs per behaviour signal in `cfg.signals` (user_id, product_id,
    event_ts, category columns); products not in the catalogue are ignored."""
    rows = pd.Index(product_ids).get_indexer(interactions["product_id"])
    frame = interactions.assign(row=rows)[rows >= 0]
    out = {}
    if "similar_click" in cfg.signals:
        clicks = frame.loc[frame["category"] == cfg.click_category, ["user_id", "event_ts", "row"]]
        out["similar_click"] = _pairs_within(clicks, ["user_id", "event_ts"])
    if "co_view" in cfg.signals:
        views = frame.loc[frame["category"] == cfg.view_category, ["user_id", "event_ts", "row"]]
        views = views.assign(day=views["event_ts"].dt.floor("D")).drop(columns="event_ts")
        views = views.drop_duplicates()
        size = views.groupby(["user_id", "day"])["row"].transform("size")
        out["co_view"] = _pairs_within(views[size <= cfg.max_views_per_day], ["user_id", "day"])
    return out


def variant_pairs(group_keys: np.ndarray, max_group: int = 10) -> np.ndarray:
    """Pairs of catalogue rows sharing a variant group (the first `max_group` members of a
    larger group, so one huge group cannot outweigh the others)."""
    frame = pd.DataFrame({"group": group_keys, "row": np.arange(len(group_keys))})
    frame = frame[frame["group"].notna()]
    frame = frame[frame.groupby("group").cumcount() < max_group]
    return _pairs_within(frame, ["group"])


def split_pairs(pairs: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded half of the pairs to learn on and the other half to check on."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    half = len(pairs) // 2
    return pairs[np.sort(order[half:])], pairs[np.sort(order[:half])]


@dataclass
class QuerySet:
    """A sample of query products, their text cosines and block agreement with the products
    that can reach their top k, and their signal partners."""

    rows: np.ndarray  # (q,) catalogue rows
    text: np.ndarray  # (q, m) float32 text cosine with `columns`
    agree: np.ndarray  # (q, m) uint16, bit c set when block c agrees
    partners: np.ndarray  # sorted codes q_position * n + partner_row
    n_partners: np.ndarray  # (q,)
    # (q, m) catalogue rows in the catalogue's tie order (-1 pads), or None for all rows.
    columns: np.ndarray | None = None


@dataclass
class Blocks:
    """What the scorer needs of the catalogue: the normalised text block, each attribute
    block's codes, and (same_audience) the group a product's neighbours must share."""

    text: sp.csr_matrix
    codes: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    text_present: np.ndarray = field(init=False)
    # Rows in the order that breaks score ties: a fixed shuffle, so that a weight setting
    # leaving many products tied (no text weight: only attributes score) is judged by an
    # arbitrary pick among them, as the served lists make it, not by where the catalogue
    # happens to place a query's partners.
    tie_order: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.text_present = np.asarray(self.text.multiply(self.text).sum(axis=1)).ravel() > 0.5
        self.tie_order = np.random.default_rng(TIE_SEED).permutation(self.n)

    @property
    def n(self) -> int:
        return self.text.shape[0]


def query_set(
    blocks: Blocks, pairs: np.ndarray, max_queries: int, seed: int, k: int | None = None
) -> QuerySet:
    """The queries of `pairs` (a sample of at most `max_queries`) scored against the catalogue.

    With `k`, each query keeps only the products that can reach its top k under some
    weights: a product's score is (t^2 x + lut[agree]) / norm, increasing in its text cosine
    x among products with the same agreement bits and text presence, so within each such
    class only the k + 1 of largest cosine (ties in the tie order) can make a top k (one may
    be the query itself), or with a zero text weight the k + 1 first in the tie order. A few hundred
    candidates instead of the catalogue make each weight setting of the ascent cheap at any
    catalogue size; `top_k` returns the same lists either way.
    """
    both = np.concatenate([pairs, pairs[:, ::-1]])
    queries = distinct(both[:, 0])
    if len(queries) > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(queries, max_queries, replace=False))
    position = np.full(blocks.n, -1, dtype=np.int64)
    position[queries] = np.arange(len(queries))
    kept = both[position[both[:, 0]] >= 0]
    partners = distinct(position[kept[:, 0]] * blocks.n + kept[:, 1])
    text = (blocks.text[queries] @ blocks.text.T).toarray().astype(np.float32)
    agree = np.zeros((len(queries), blocks.n), dtype=np.uint16)
    for bit, codes in enumerate(blocks.codes.values()):
        agree |= (codes[queries][:, None] == codes[None, :]).astype(np.uint16) << bit
    n_partners = np.bincount(partners // blocks.n, minlength=len(queries))
    qs = QuerySet(queries, text, agree, partners, n_partners)
    return _candidates(blocks, qs, k) if k is not None else qs


def _candidates(blocks: Blocks, qs: QuerySet, k: int) -> QuerySet:
    """`qs` restricted to each class's k + 1 products of largest text cosine (see query_set)."""
    n_classes = 2 << len(blocks.codes)
    if n_classes * (k + 1) * 4 >= blocks.n:
        return qs  # too many classes for the restriction to pay
    classes = qs.agree.astype(np.int64) * 2 + blocks.text_present
    if blocks.groups is not None:
        # Products outside the query's group never reach its list.
        other = blocks.groups[qs.rows][:, None] != blocks.groups[None, :]
        classes[other] = n_classes
    # Per class, the k + 1 first by cosine (descending, then tie order) and, for a zero text
    # weight where only the tie order separates them, the k + 1 first in tie order. Columns
    # are taken in tie order so that stable sorts break ties by it. Cosines lie in [0, 1], so
    # one float key orders by class, then cosine.
    tie_order = blocks.tie_order
    classes = classes[:, tie_order]
    by_text = np.argsort(classes * 4.0 + (2.0 - qs.text[:, tie_order]), axis=1, kind="stable")
    by_tie = np.argsort(classes, axis=1, kind="stable")
    keep = np.zeros(classes.shape, dtype=bool)
    for order in (by_text, by_tie):
        ranked = np.take_along_axis(classes, order, axis=1)
        starts = np.ones(ranked.shape, dtype=bool)
        starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
        position = np.arange(ranked.shape[1])
        within = position - np.maximum.accumulate(np.where(starts, position, 0), axis=1)
        chosen = (within <= k) & (ranked < n_classes)
        np.put_along_axis(keep, order, chosen | np.take_along_axis(keep, order, axis=1), axis=1)
    width = int(keep.sum(axis=1).max()) if len(qs.rows) else 0
    columns = np.full((len(qs.rows), width), -1, dtype=np.int64)
    for i in range(len(qs.rows)):
        chosen = tie_order[np.flatnonzero(keep[i])]
        columns[i, : len(chosen)] = chosen
    safe = np.maximum(columns, 0)
    return QuerySet(
        qs.rows,
        np.take_along_axis(qs.text, safe, axis=1),
        np.take_along_axis(qs.agree, safe, axis=1),
        qs.partners,
        qs.n_partners,
        columns,
    )


def _first_k(score: np.ndarray, kk: int) -> np.ndarray:
    """Column indices of each row's kk largest scores, ties to the lower column."""
    threshold = -np.partition(-score, kk - 1, axis=1)[:, kk - 1 : kk]
    above = score > threshold
    tied = score == threshold
    room = kk - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.sort(np.argsort(~chosen, axis=1, kind="stable")[:, :kk], axis=1)


def top_k(blocks: Blocks, qs: QuerySet, weights: dict[str, float], k: int) -> np.ndarray:
    """Each query's top-k catalogue rows under the block weights (exact cosine; ties broken
    by the catalogue's tie order), in ascending row order with -1 first where fewer than k
    products can be listed."""
    t = weights[TEXT_BLOCK]
    a2 = np.asarray([weights[c] ** 2 for c in blocks.codes], dtype=np.float64)
    bits = np.arange(1 << len(a2))
    lut = (((bits[:, None] >> np.arange(len(a2))) & 1) @ a2).astype(np.float32)
    norms = np.sqrt(t * t * blocks.text_present + a2.sum()).astype(np.float32)
    norms = np.where(norms > 0, norms, 1)
    if qs.columns is None:
        columns = np.broadcast_to(blocks.tie_order, qs.text.shape)
        text, agree = qs.text[:, blocks.tie_order], qs.agree[:, blocks.tie_order]
        valid = np.ones(qs.text.shape, dtype=bool)
    else:
        columns, valid, text, agree = qs.columns, qs.columns >= 0, qs.text, qs.agree
    score = (np.float32(t * t) * text + lut[agree]) / norms[np.maximum(columns, 0)]
    score[~valid | (columns == qs.rows[:, None])] = -np.inf
    if blocks.groups is not None:
        other = blocks.groups[qs.rows][:, None] != blocks.groups[np.maximum(columns, 0)]
        score[other] = -np.inf
    kk = min(k, blocks.n - 1, score.shape[1])
    if kk <= 0:
        return np.full((len(qs.rows), 0), -1, dtype=np.int64)
    picked = _first_k(score, kk)
    top = np.take_along_axis(columns, picked, axis=1)
    return np.sort(np.where(np.isfinite(np.take_along_axis(score, picked, axis=1)), top, -1))


def pair_recall(blocks: Blocks, qs: QuerySet, top: np.ndarray, k: int) -> float:
    """Mean share of a query's partners (at most k) found in its top k."""
    codes = np.arange(len(qs.rows))[:, None] * blocks.n + top
    hits = (isin(codes, qs.partners) & (top >= 0)).sum(axis=1)
    return float(np.mean(hits / np.minimum(qs.n_partners, k)))


def consistency(blocks: Blocks, qs: QuerySet, top: np.ndarray, column: str) -> float:
    codes = blocks.codes[column]
    valid = top >= 0
    same = (codes[np.where(valid, top, 0)] == codes[qs.rows][:, None]) & valid
    return float(same.sum() / max(valid.sum(), 1))


@dataclass
class WeightChoice:
    """Which block weights serve the lists, and the evidence."""

    used: str  # "learned" | "configured"
    reason: str
    configured: dict[str, float]
    learned: dict[str, float] | None = None
    pairs: dict[str, int] = field(default_factory=dict)
    scores: dict[str, tuple[float, int | None, int]] = field(default_factory=dict)

    @property
    def weights(self) -> dict[str, float]:
        return self.learned if self.used == "learned" and self.learned else self.configured

    def summary(self) -> dict:
        out: dict = {"used": self.used, "reason": self.reason, "pairs": self.pairs}
        out["configured"] = {b: round(w, 4) for b, w in self.configured.items()}
        if self.learned is not None:
            out["learned"] = {b: round(w, 4) for b, w in self.learned.items()}
            out["learned_config"] = as_config(self.learned)
        out["heldout"] = {m: round(v[0], 5) for m, v in self.scores.items()}
        return out

    def metric_rows(self) -> dict[str, tuple[float, int | None, int]]:
        """Rows for the similar metrics artifact (`weights_*`)."""
        n = max([v[2] for v in self.scores.values()] or [0])
        rows = {"weights_learned_used": (float(self.used == "learned"), None, n)}
        rows.update({f"weights_pairs_{s}": (float(c), None, c) for s, c in self.pairs.items()})
        rows.update(self.scores)
        rows.update({f"weight_{b}": (w, None, 0) for b, w in self.weights.items()})
        return rows


def as_config(weights: dict[str, float]) -> dict:
    """Block weights as TextModelConfig settings (text_weight, attribute_weight and the
    relative attribute_weights), to paste into the YAML."""
    attributes = {b: w for b, w in weights.items() if b != TEXT_BLOCK}
    norm = float(np.sqrt(sum(w * w for w in attributes.values())))
    return {
        "text_weight": round(weights[TEXT_BLOCK], 4),
        "attribute_weight": round(norm, 4),
        "attribute_weights": {
            b: round(w / norm if norm else 1.0, 4) for b, w in attributes.items()
        },
    }


def _log_query_set(part: str, source: str, qs: QuerySet, started: float) -> None:
    log.info(
        "similar weights: %s queries of %s pairs ranked against the catalogue: %d queries, "
        "%d candidates each at most (%.1f s)",
        part,
        source,
        len(qs.rows),
        qs.text.shape[1] if len(qs.rows) else 0,
        time.monotonic() - started,
    )


def coordinate_ascent(
    blocks: Blocks,
    train: dict[str, QuerySet],
    start: dict[str, float],
    judges: dict[str, list[str]],
    cfg: LearnWeightsConfig,
    k: int,
) -> dict[str, float]:
    """Block by block, the grid value that most raises the mean pair recall of the sources
    judging that block; a change must raise it strictly, and the first grid value wins ties,
    so the result is deterministic. Stops after `cfg.rounds` rounds or a round without
    change."""
    started = time.perf_counter()
    cache: dict[tuple, float] = {}

    def score(weights: dict[str, float], source: str) -> float:
        key = (source, *(round(weights[b], 6) for b in start))
        if key not in cache:
            qs = train[source]
            cache[key] = pair_recall(blocks, qs, top_k(blocks, qs, weights, k), k)
        return cache[key]

    def objective(weights: dict[str, float], block: str) -> float:
        return float(np.mean([score(weights, s) for s in judges[block]]))

    current = dict(start)
    for round_ in range(cfg.rounds):
        changed = False
        for block in start:
            if not judges[block]:
                continue
            best = objective(current, block)
            for value in cfg.grid:
                trial = {**current, block: value}
                if not any(trial.values()):
                    continue
                gain = objective(trial, block)
                if gain > best + 1e-9:
                    best, current, changed = gain, trial, True
        log.info(
            "similar weights round %d: %s (%d settings scored, %.1f s)",
            round_ + 1,
            {b: round(w, 3) for b, w in current.items()},
            len(cache),
            time.perf_counter() - started,
        )
        if not changed:
            break
    return current


def learn_weights(
    blocks: Blocks,
    configured: dict[str, float],
    signals: dict[str, np.ndarray],
    cfg: LearnWeightsConfig,
    k: int,
    seed: int,
) -> WeightChoice:
    """Coordinate ascent over each block's weight on half of the signal pairs; the learned
    weights are chosen only when they beat `configured` on the other half.

    `signals` maps a signal name to its row pairs; clicks and co-views are pooled as
    behaviour, variant groups kept apart (they never judge `cfg.variant_differs` blocks).
    Without enough behaviour pairs nothing is learned; the held-out decision is made on
    them. Deterministic for a given seed.
    """
    counts = {name: len(p) for name, p in signals.items()}
    choice = WeightChoice("configured", "", dict(configured), pairs=counts)
    behaviour = [p for s, p in signals.items() if s != "variant_group" and len(p)]
    sources = {
        BEHAVIOUR: np.unique(np.concatenate(behaviour), axis=0) if behaviour else None,
        VARIANT: signals.get("variant_group"),
    }
    sources = {s: p for s, p in sources.items() if p is not None and len(p) >= cfg.min_pairs}
    if BEHAVIOUR not in sources:
        found = counts or "no signals"
        choice.reason = (
            f"too few similar-click/co-view pairs ({found}; min_pairs {cfg.min_pairs}); "
            "variant groups alone only teach finding variants"
        )
        return choice
    if len(blocks.codes) > MAX_BLOCKS:
        choice.reason = f"{len(blocks.codes)} attribute blocks; learning handles {MAX_BLOCKS}"
        return choice
    guarded = [c for c in cfg.variant_differs if c in blocks.codes]
    judges = {b: [s for s in sources if s == BEHAVIOUR or b not in guarded] for b in configured}
    halves = {s: split_pairs(p, seed) for s, p in sources.items()}
    # Each query set ranks the catalogue once per query: seconds at 50,000 products, so
    # each says when it is ready.
    started = time.monotonic()
    train = {}
    for source, (train_pairs, _) in halves.items():
        train[source] = query_set(blocks, train_pairs, cfg.max_queries, seed, k)
        _log_query_set("training", source, train[source], started)
    current = coordinate_ascent(blocks, train, configured, judges, cfg, k)
    train.clear()
    choice.learned = current
    results = {}
    for source, (_, held_pairs) in halves.items():
        held = query_set(blocks, held_pairs, cfg.max_queries, seed + 1, k)
        _log_query_set("held-out", source, held, started)
        for name, weights in (("configured", configured), ("learned", current)):
            top = top_k(blocks, held, weights, k)
            results[(source, name)] = pair_recall(blocks, held, top, k)
            choice.scores[f"weights_heldout_{source}_recall_{name}"] = (
                results[(source, name)],
                k,
                len(held.rows),
            )
            for column in guarded:
                value = consistency(blocks, held, top, column)
                results[(source, name, column)] = value
                choice.scores[f"weights_heldout_{source}_same_{column}_{name}"] = (
                    value,
                    k,
                    len(held.rows),
                )
    learned, config = results[(BEHAVIOUR, "learned")], results[(BEHAVIOUR, "configured")]
    if current == configured:
        choice.reason = "the search kept the configured weights"
    elif learned <= config + cfg.min_gain:
        choice.reason = (
            f"learned weights do not beat the configured on held-out similar clicks/co-views "
            f"(recall@{k} {learned:.4f} vs {config:.4f})"
        )
    else:
        choice.used = "learned"
        choice.reason = (
            f"learned weights beat the configured on held-out similar clicks/co-views "
            f"(recall@{k} {learned:.4f} vs {config:.4f})"
        )
    log.info("similar weights: %s %s", choice.used, choice.reason)
    return choice
