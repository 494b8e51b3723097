"""Candidate sources for the ranker: every way the run can propose an item to a shopper.

Real fashion purchase data says where the next items come from: a customer's own items, most
recent first, are the strongest single source; colour variants of the same design (the
product's `group_key`) come next; co-interaction neighbours (item-kNN, user-CF, items touched
on the same day: the pair rules of frequently-bought-together, mined per window so a window
never sees its own baskets) add a little, a two-tower model trained on the last days adds
little (off unless given a cap); look-alikes, segment popularity and what is trending fill the
rest. Each source is one function with the same surface, `(history, rows, inputs, cap) ->
candidates`, that sees only the interactions before the history's cutoff, so the same code
proposes candidates for a past label window (training the ranker), for the run's hold-out
(scoring it) and for the run's as-of (the published lists).

Everything runs on integer codes (a user is a row of the history's matrix, an item a column
of the catalogue), never on id strings: candidate generation is repeated for every window and
must stay linear and cheap. A candidate frame has `user, item, source, source_rank,
source_score`; a source proposes at most `cap` items per user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_recs.evaluate import position_in_run, segment_popularity_predictions
from fashion_recs.personal.matrix import UserItemMatrix, user_item_matrix
from fashion_recs.sort_keys import distinct, in_sorted, sort_order

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["user", "item", "source", "source_rank", "source_score"]
SEGMENT_COLUMNS = ["age_group", "region"]
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class OwnItems:
    """Each (user, item) the history holds, grouped by user in own-item order: the newest
    interaction day first, then more events, then more decayed weight, then item code."""

    user: np.ndarray
    item: np.ndarray
    rank: np.ndarray  # 1.. within the user
    days_since_last: np.ndarray
    n_events: np.ndarray
    max_weight: np.ndarray
    decayed: np.ndarray
    keys: np.ndarray  # sorted user * n_items + item, for membership tests
    n_items: int

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is one of the users' own items."""
        return in_sorted(self.keys, user.astype(np.int64) * self.n_items + item)

    def position(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Index of each (user, item) in the own-item arrays, -1 when not owned."""
        key = user.astype(np.int64) * self.n_items + item
        if len(self.keys) == 0:
            return np.full(len(key), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return np.where(self.keys[pos] == key, self._order_of_key[pos], -1)

    @cached_property
    def _order_of_key(self) -> np.ndarray:
        key = self.user.astype(np.int64) * self.n_items + self.item
        return np.argsort(key, kind="stable")


@dataclass(frozen=True)
class History:
    """What was known at `cutoff`: the interactions before it, as codes, and their matrix.

    `user` is a row of `matrix.users`, `item` a column of `matrix.items` (events on products
    off the catalogue are left out, as in the matrix), `days` the age of the event in days.

    Whatever is derived from the whole history (fitted neighbour models, popularity, per-user
    and per-item aggregates) is computed once and kept (`memo`): the users of a history are
    served in chunks to bound memory, and each chunk must cost its own users, not the history.
    """

    cutoff: pd.Timestamp
    matrix: UserItemMatrix
    user: np.ndarray
    item: np.ndarray
    days: np.ndarray
    weight: np.ndarray
    half_life_days: float
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def memo(self, key: Hashable, make: Callable[[], object]):
        """`make()`, computed the first time `key` is asked for this history only."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def n_users(self) -> int:
        return self.matrix.n_users

    @property
    def n_items(self) -> int:
        return self.matrix.n_items

    @cached_property
    def own(self) -> OwnItems:
        n = self.n_items
        key = self.user.astype(np.int64) * n + self.item
        order = np.argsort(key, kind="stable")
        key_sorted = key[order]
        starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
        if len(key_sorted) == 0:
            starts = np.zeros(0, dtype=np.int64)
        days = self.days[order]
        weight = self.weight[order]
        decayed = weight * np.power(0.5, days / self.half_life_days)
        unique = key_sorted[starts]
        since = np.minimum.reduceat(days, starts) if len(starts) else days[:0]
        n_events = np.diff(np.r_[starts, len(key_sorted)]).astype(np.float64)
        max_weight = np.maximum.reduceat(weight, starts) if len(starts) else weight[:0]
        total = np.add.reduceat(decayed, starts) if len(starts) else decayed[:0]
        user, item = unique // n, unique % n
        # Own-item order in one multi-threaded sort (a five-key lexsort took 3 s at 6M
        # pairs); `unique` is in (user, item) order, so the stable sort breaks the last ties
        # by item.
        ordered = sort_order(
            (user, False), (np.floor(since), False), (n_events, True), (total, True)
        )
        rank = position_in_run(user[ordered])
        return OwnItems(
            user=user[ordered],
            item=item[ordered],
            rank=rank,
            days_since_last=since[ordered],
            n_events=n_events[ordered],
            max_weight=max_weight[ordered],
            decayed=total[ordered],
            keys=unique,
            n_items=n,
        )

    def pair_keys(self, user_ids, product_ids) -> np.ndarray:
        """The code key (user row * n_items + item column) of each (user id, product id);
        -1 where the history does not know the user or the catalogue the product."""
        users = self.matrix.user_rows(user_ids).astype(np.int64)
        items = self.matrix.items.get_indexer(product_ids)
        return np.where((users >= 0) & (items >= 0), users * self.n_items + items, -1)

    def popularity(self, days: float) -> np.ndarray:
        """Summed interaction weight per item over the last `days` before the cutoff."""

        def make() -> np.ndarray:
            recent = self.days <= days
            return np.bincount(self.item[recent], self.weight[recent], minlength=self.n_items)

        return self.memo(("popularity", float(days)), make)


def history_before(
    interactions: pd.DataFrame, items: pd.Index, cutoff: pd.Timestamp, half_life_days: float
) -> History:
    """The interactions strictly before `cutoff` as codes, and their matrix decayed to it."""
    started = time.perf_counter()
    before = interactions[(interactions["event_ts"] < cutoff).to_numpy()]
    matrix = user_item_matrix(before, items, as_of=cutoff, half_life_days=half_life_days)
    log.info(
        "history before %s: %d events, %d users (%.0f s); coding them",
        cutoff,
        len(before),
        matrix.n_users,
        time.perf_counter() - started,
    )
    user = matrix.users.get_indexer(before["user_id"])
    item = matrix.items.get_indexer(before["product_id"])
    keep = (user >= 0) & (item >= 0)
    age = (cutoff - before["event_ts"]).dt.total_seconds().to_numpy() / SECONDS_PER_DAY
    return History(
        cutoff=cutoff,
        matrix=matrix,
        user=user[keep].astype(np.int64),
        item=item[keep].astype(np.int64),
        days=age[keep],
        weight=before["weight"].to_numpy(dtype=np.float64)[keep],
        half_life_days=half_life_days,
    )


@dataclass(frozen=True)
class CandidateInputs:
    """What sources read besides the history: the catalogue's groups, prices and departments,
    content look-alikes and user segments, aligned to the catalogue's item codes."""

    items: pd.Index
    group: np.ndarray  # group code per item
    department: np.ndarray  # department code per item (-1 unknown)
    price: np.ndarray  # float per item (NaN unknown)
    similar_item: np.ndarray  # look-alike pairs (item -> neighbour), best first per item
    similar_neighbour: np.ndarray
    similar_score: np.ndarray
    similar_rank: np.ndarray
    segments: pd.DataFrame  # user_id, age_group, region (unknowns as NaN)
    half_life_days: float
    n_recent: int = 6
    item_knn_neighbours: int = 200
    # Where item-kNN's neighbours are found (`personal.item_knn.ItemNeighbourSearch`; None:
    # the local one).
    item_search: Callable | None = None
    user_cf_neighbours: int = 200
    # Each item compares at most this many of its users (its heaviest), so user-CF's neighbour
    # search grows with users, not users squared (personal.user_cf.max_item_users).
    user_cf_max_item_users: int | None = None
    weighting: str = "log1p"
    trend_days: int = 3
    # The two-tower source: the catalogue's tower features (product_id, department, color,
    # target_audience, in item order), the towers' settings (TwoTowerParams) and the days of
    # history they train on.
    catalogue: pd.DataFrame | None = None
    two_tower_params: object | None = None
    two_tower_days: int = 14

    @classmethod
    def build(
        cls,
        products: pd.DataFrame,
        similar: pd.DataFrame,
        segments: pd.DataFrame,
        half_life_days: float,
        **options,
    ) -> CandidateInputs:
        """From the products table (product_id, group_key, department, price), a similar-
        products table (product_id, rank, similar_product_id, score) and user segments."""
        items = pd.Index(products["product_id"], name="product_id")
        group = pd.factorize(products["group_key"].fillna(products["product_id"]))[0]
        department = pd.factorize(products["department"])[0]
        src = items.get_indexer(similar["product_id"])
        dst = items.get_indexer(similar["similar_product_id"])
        ok = (src >= 0) & (dst >= 0)
        order = np.lexsort((similar["rank"].to_numpy()[ok], src[ok]))
        return cls(
            items=items,
            group=group.astype(np.int64),
            department=department.astype(np.int64),
            price=pd.to_numeric(products["price"], errors="coerce").to_numpy(dtype=np.float64),
            similar_item=src[ok][order].astype(np.int64),
            similar_neighbour=dst[ok][order].astype(np.int64),
            similar_score=similar["score"].to_numpy(dtype=np.float64)[ok][order],
            similar_rank=similar["rank"].to_numpy(dtype=np.int64)[ok][order],
            segments=segments,
            half_life_days=half_life_days,
            **options,
        )


def _frame(user, item, rank, score) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": np.asarray(user, dtype=np.int64),
            "item": np.asarray(item, dtype=np.int64),
            "source_rank": np.asarray(rank, dtype=np.int32),
            "source_score": np.asarray(score, dtype=np.float64),
        }
    )


def _ranked(
    user: np.ndarray, item: np.ndarray, score: np.ndarray, keys: list[np.ndarray], cap: int
) -> pd.DataFrame:
    """Rank rows within each user by `keys` (lexsort keys, last = primary after the user),
    keep each item's first row and the first `cap` items of each user."""
    order = np.lexsort((*keys, user))
    user, item, score = user[order], item[order], score[order]
    pair = user * (int(item.max()) + 1 if len(item) else 1) + item
    first = ~pd.Series(pair).duplicated().to_numpy()
    user, item, score = user[first], item[first], score[first]
    rank = position_in_run(user)
    keep = rank <= cap
    return _frame(user[keep], item[keep], rank[keep], score[keep])


def _targets(history: History, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(history.n_users, dtype=bool)
    mask[rows] = True
    return mask


def own_items(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """The user's own items: last interaction day first, then count, then decayed weight."""
    own = history.own
    keep = _targets(history, rows)[own.user] & (own.rank <= cap)
    return _frame(own.user[keep], own.item[keep], own.rank[keep], own.decayed[keep])


def _recent_own(history: History, rows: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    own = history.own
    keep = _targets(history, rows)[own.user] & (own.rank <= n)
    return own.user[keep], own.item[keep], own.rank[keep]


def _expand(
    user: np.ndarray, item: np.ndarray, src: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each (user, item) row, the positions in `src` (sorted) whose value is the item:
    returns (row index, position) pairs, the join of the rows with a sorted neighbour table."""
    start = np.searchsorted(src, item, side="left")
    stop = np.searchsorted(src, item, side="right")
    count = stop - start
    row = np.repeat(np.arange(len(user)), count)
    offset = np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)
    return row, np.repeat(start, count) + offset


def variant_siblings(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """Other colours of the designs a user touched: the newest own item's design first, then
    the sibling's popularity over the last week."""
    user, item, rank = _recent_own(history, rows, inputs.n_recent * 2)
    by_group = np.argsort(inputs.group, kind="stable")
    groups_sorted = inputs.group[by_group]
    row, pos = _expand(user, inputs.group[item], groups_sorted, history.n_items)
    sibling = by_group[pos]
    u, own_item, r = user[row], item[row], rank[row]
    other = (sibling != own_item) & ~history.own.contains(u, sibling)
    u, sibling, r = u[other], sibling[other], r[other]
    pop = history.popularity(7.0)[sibling]
    return _ranked(u, sibling, 1.0 / r, [sibling, -pop, r], cap)


def _of_recent(
    history: History,
    rows: np.ndarray,
    inputs: CandidateInputs,
    src: np.ndarray,
    dst: np.ndarray,
    score: np.ndarray,
    cap: int,
) -> pd.DataFrame:
    """Neighbours (src -> dst, sorted by src) of the user's newest own items, each scored by
    the neighbour score over the own item's recency rank and summed over own items; own items
    left out."""
    user, item, rank = _recent_own(history, rows, inputs.n_recent)
    row, pos = _expand(user, item, src, history.n_items)
    u, nb = user[row], dst[pos]
    contribution = score[pos] / rank[row]
    keep = ~history.own.contains(u, nb)
    u, nb, contribution = u[keep], nb[keep], contribution[keep]
    key = u * history.n_items + nb
    unique, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, contribution, minlength=len(unique))
    u, nb = unique // history.n_items, unique % history.n_items
    return _ranked(u, nb, total, [nb, -total], cap)


def lookalikes(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """Content look-alikes (the similar-products model) of the user's newest own items."""
    near = inputs.similar_rank <= cap
    return _of_recent(
        history,
        rows,
        inputs,
        inputs.similar_item[near],
        inputs.similar_neighbour[near],
        inputs.similar_score[near],
        cap,
    )


def _day_baskets(history: History) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The history's (user, day) baskets as a 0/1 basket x item matrix `b`, and `left`, its
    transpose scaled by each item's basket count: `left[i] @ b` is the confidence i -> j."""
    day = np.floor(history.days).astype(np.int64)
    basket = np.unique(history.user * (int(day.max()) + 1) + day, return_inverse=True)[1]
    b = sp.csr_matrix(
        (np.ones(len(basket), dtype=np.float32), (basket, history.item)),
        shape=(int(basket.max()) + 1, history.n_items),
    )
    b.sum_duplicates()
    b.data[:] = 1.0
    counts = np.asarray(b.sum(axis=0)).ravel()
    scale = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    left = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ sp.csr_matrix(b.T))
    return left, b


def basket_complements(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """Items touched on the same day as the user's newest own items, by the confidence of
    day-basket co-occurrence in the history."""
    from sparse_dot_topn import sp_matmul_topn

    if len(history.user) == 0:
        return _frame([], [], [], [])
    left, b = history.memo("day_baskets", lambda: _day_baskets(history))
    _, item, _ = _recent_own(history, rows, inputs.n_recent)
    wanted = distinct(item)
    if len(wanted) == 0:
        return _frame([], [], [], [])
    conf = sp_matmul_topn(left[wanted], b, top_n=cap + 1, threshold=0.0).tocoo()
    src, dst = wanted[conf.row], conf.col.astype(np.int64)
    keep = src != dst
    order = np.lexsort((dst[keep], src[keep]))
    return _of_recent(
        history,
        rows,
        inputs,
        src[keep][order],
        dst[keep][order],
        conf.data[keep][order].astype(np.float64),
        cap,
    )


def _from_recommender(model, rows: np.ndarray, cap: int) -> pd.DataFrame:
    position, cols, scores = model.recommend_rows(rows, cap, True)
    rank = position_in_run(position)
    return _frame(rows[position], cols, rank, scores)


def item_knn(history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int) -> pd.DataFrame:
    """Items co-touched with the user's items (item-item cosine), own items left out."""
    from fashion_recs.personal.item_knn import ItemKNN

    def fit() -> ItemKNN:
        return ItemKNN(inputs.item_knn_neighbours, inputs.weighting, search=inputs.item_search).fit(
            history.matrix
        )

    key = ("item_knn", inputs.item_knn_neighbours, inputs.weighting)
    return _from_recommender(history.memo(key, fit), rows, cap)


def user_cf(history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int) -> pd.DataFrame:
    """What the user's cosine neighbours touched, own items left out."""
    from fashion_recs.personal.user_cf import UserCF

    def fit() -> UserCF:
        return UserCF(
            "cosine",
            inputs.user_cf_neighbours,
            inputs.weighting,
            max_item_users=inputs.user_cf_max_item_users,
        ).fit(history.matrix)

    key = ("user_cf", inputs.user_cf_neighbours, inputs.weighting, inputs.user_cf_max_item_users)
    return _from_recommender(history.memo(key, fit), rows, cap)


def two_tower(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """The two-tower model's nearest items, the towers trained on the history's last
    `two_tower_days` days only (a neural model trained on a few days: real fashion data says
    it adds little, so the source is off unless given a cap)."""
    model = history.memo(
        ("two_tower", inputs.two_tower_days), lambda: _fit_two_tower(history, inputs)
    )
    if model is None or len(rows) == 0:
        return _frame([], [], [], [])
    lists = model.recommend(history.matrix.users.to_numpy()[rows], cap, exclude_known=True)
    user = history.matrix.user_rows(pd.Index(lists["user_id"]))
    item = inputs.items.get_indexer(lists["product_id"])
    return _frame(user, item, lists["rank"], lists["score"])


def _fit_two_tower(history: History, inputs: CandidateInputs):
    """Towers fitted on the history's last days, or None when those days hold no events."""
    from fashion_recs.errors import FashionRecsError
    from fashion_recs.personal.two_tower import TwoTowerModel

    if inputs.two_tower_params is None or inputs.catalogue is None:
        raise ValueError(
            "the two_tower candidate source needs CandidateInputs.two_tower_params and "
            "CandidateInputs.catalogue (product_id, department, color, target_audience)"
        )
    recent = history.days < inputs.two_tower_days
    events = pd.DataFrame(
        {
            "user_id": history.matrix.users.to_numpy()[history.user[recent]],
            "product_id": inputs.items.to_numpy()[history.item[recent]],
            "event_ts": history.cutoff - pd.to_timedelta(history.days[recent], unit="D"),
            "weight": history.weight[recent],
        }
    )
    users = inputs.segments[["user_id", *SEGMENT_COLUMNS]]
    try:
        return TwoTowerModel.fit(events, users, inputs.catalogue, inputs.two_tower_params)
    except FashionRecsError as exc:
        log.warning("candidates from two_tower: none (%s)", exc)
        return None


def _same_for_everyone(rows: np.ndarray, scores: np.ndarray, cap: int) -> pd.DataFrame:
    """The `cap` best items by `scores` (positive scores only), for every user in `rows`."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    top = order[scores[order] > 0][:cap]
    n = len(top)
    return _frame(
        np.repeat(rows, n),
        np.tile(top, len(rows)),
        np.tile(np.arange(1, n + 1), len(rows)),
        np.tile(scores[top], len(rows)),
    )


def trending(history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int) -> pd.DataFrame:
    """Items whose last `trend_days` days run above their previous two weeks' daily rate."""
    days = inputs.trend_days
    recent = history.popularity(days)
    before = history.popularity(days + 14) - recent
    return _same_for_everyone(rows, recent / days - before / 14.0, cap)


def popular_recent(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """The best sellers of the last week, the same for every user."""
    return _same_for_everyone(rows, history.popularity(7.0), cap)


def segment_popularity(
    history: History, rows: np.ndarray, inputs: CandidateInputs, cap: int
) -> pd.DataFrame:
    """Popularity in the user's segment (age group x region, then coarser), from the history:
    the run's segment-popularity baseline, computed on codes."""

    def every_users_lists() -> pd.DataFrame:
        # Every user of the history shapes the segments' popularity, not only those asked for.
        segments = inputs.segments.set_index("user_id")[SEGMENT_COLUMNS]
        frame = segments.reindex(history.matrix.users).reset_index(drop=True)
        frame.insert(0, "user_id", np.arange(history.n_users))
        train = pd.DataFrame(
            {"user_id": history.user, "product_id": history.item, "weight": history.weight}
        )
        return segment_popularity_predictions(train, frame, SEGMENT_COLUMNS, cap)

    lists = history.memo(("segment_popularity", cap), every_users_lists)
    lists = lists[_targets(history, rows)[lists["user_id"].to_numpy()]]
    return _frame(lists["user_id"], lists["product_id"], lists["rank"], lists["score"])


Source = Callable[[History, np.ndarray, CandidateInputs, int], pd.DataFrame]
SOURCES: dict[str, Source] = {
    "own": own_items,
    "siblings": variant_siblings,
    "item_knn": item_knn,
    "user_cf": user_cf,
    "two_tower": two_tower,
    "basket": basket_complements,
    "lookalike": lookalikes,
    "segment_popularity": segment_popularity,
    "trending": trending,
    "popular": popular_recent,
}


def generate_candidates(
    history: History, rows: np.ndarray, inputs: CandidateInputs, caps: Mapping[str, int]
) -> pd.DataFrame:
    """Every configured source's proposals for the users at matrix rows `rows`
    (CANDIDATE_COLUMNS; an item proposed by two sources appears once for each)."""
    unknown = sorted(set(caps) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown candidate sources {unknown}; known: {sorted(SOURCES)}")
    rows = distinct(np.asarray(rows, dtype=np.int64))
    parts = []
    for name, cap in caps.items():
        if cap <= 0:
            continue
        proposed = SOURCES[name](history, rows, inputs, cap)
        log.info("candidates from %s: %d rows for %d users", name, len(proposed), len(rows))
        parts.append(proposed.assign(source=name))
    if not parts:
        return pd.DataFrame({c: [] for c in CANDIDATE_COLUMNS})
    return pd.concat(parts, ignore_index=True)[CANDIDATE_COLUMNS]
