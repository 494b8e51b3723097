"""The learned ranker: LightGBM learning-to-rank over every source's candidates.

Candidate generation decides what can be shown; the ranker decides the order, which is where
most of what is left on fashion data lies (a perfect re-ranking of a shopper's own items and
their designs' colour variants roughly doubles MAP@12 on real purchases). It is trained the way
it is used: on rolling label windows before the moment it serves, each window's candidates and
features built from the interactions before the window only, and its labels the items the user
touched inside it. Scoring it on the run's hold-out uses windows before the hold-out; the
published lists use a model refit on the newest windows, up to the run's last day.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fashion_recs.evaluate import position_in_run
from fashion_recs.personal.candidates import (
    CandidateInputs,
    History,
    generate_candidates,
    history_before,
)
from fashion_recs.personal.features import build_features, feature_names
from fashion_recs.sort_keys import by_row_value_column, distinct, in_sorted

log = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class RankerParams:
    """LightGBM lambdarank settings and the training windows."""

    objective: str = "rank_xendcg"
    window_days: int = 7
    train_windows: int = 2
    max_train_users: int = 25_000
    # Users whose candidates and features are held in memory at once: a frame is ~90
    # candidates x ~45 features per user, so memory stays flat whatever the user count.
    chunk_users: int = 20_000
    n_estimators: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 20
    k: int = 12
    # One thread by default: LightGBM's OpenMP threads wait for each other at every split,
    # and on a 2-core machine shared with another job two threads fitted 6-10x slower than
    # one (and a model fitted with another thread count may differ in the last bits).
    n_jobs: int = 1
    seed: int = 42
    caps: dict[str, int] = field(default_factory=dict)
    # True: a user's own items are never served (they still shape the other features).
    exclude_known: bool = False


@dataclass(frozen=True)
class Window:
    """Labels in [start, end); features and candidates from the interactions before start."""

    start: pd.Timestamp
    end: pd.Timestamp


def label_windows(end: pd.Timestamp, window_days: int, n_windows: int) -> list[Window]:
    """`n_windows` back-to-back windows of `window_days` calendar days ending at `end`, the
    newest first."""
    width = window_days * DAY
    return [Window(end - (i + 1) * width, end - i * width) for i in range(n_windows)]


def window_labels(interactions: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The distinct (user_id, product_id) pairs touched inside the window."""
    ts = interactions["event_ts"]
    inside = ((ts >= window.start) & (ts < window.end)).to_numpy()
    return interactions.loc[inside, ["user_id", "product_id"]].drop_duplicates()


def _sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """A deterministic sample of at most `limit` of `rows` (seeded, order-independent)."""
    rows = distinct(rows)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


@dataclass
class ServingFrame:
    """Candidates and features of some users at a cutoff (codes into `history`)."""

    history: History
    candidates: pd.DataFrame
    features: pd.DataFrame


def serving_frame(
    interactions: pd.DataFrame,
    cutoff: pd.Timestamp,
    user_ids: Sequence[str] | pd.Index | None,
    inputs: CandidateInputs,
    params: RankerParams,
) -> ServingFrame:
    """Candidates and features, from the interactions before `cutoff`, of the users in
    `user_ids` that have history (every user with history when None)."""
    history = history_before(interactions, inputs.items, cutoff, inputs.half_life_days)
    if user_ids is None:
        rows = np.arange(history.n_users)
    else:
        rows = history.matrix.user_rows(pd.Index(user_ids))
        rows = rows[rows >= 0]
    return frame_for(history, rows, inputs, params)


def frame_for(
    history: History, rows: np.ndarray, inputs: CandidateInputs, params: RankerParams
) -> ServingFrame:
    """Candidates and features of the users at matrix rows `rows` of `history`."""
    candidates = generate_candidates(history, rows, inputs, params.caps)
    if params.exclude_known:
        owned = history.own.contains(candidates["user"].to_numpy(), candidates["item"].to_numpy())
        candidates = candidates[~owned].reset_index(drop=True)
    features = build_features(candidates, history, inputs, list(params.caps))
    return ServingFrame(history, candidates, features)


def chunked_frames(
    history: History, rows: np.ndarray, inputs: CandidateInputs, params: RankerParams, what: str
) -> Iterator[ServingFrame]:
    """`frame_for` the users at `rows`, `params.chunk_users` at a time (rows sorted), with
    progress in the log: what every chunk is used for is kept, its frame is not."""
    rows = distinct(np.asarray(rows, dtype=np.int64))
    step = max(1, params.chunk_users)
    started = last = time.perf_counter()
    for lo in range(0, len(rows), step):
        yield frame_for(history, rows[lo : lo + step], inputs, params)
        done = min(lo + step, len(rows))
        if done < len(rows) and time.perf_counter() - last >= PROGRESS_EVERY_S:
            last = time.perf_counter()
            rate = done / (last - started)
            log.info(
                "ranker %s: %d/%d users (%.0f users/s, ~%.0f s left)",
                what,
                done,
                len(rows),
                rate,
                (len(rows) - done) / rate,
            )


def positive_keys(history: History, labels: pd.DataFrame) -> np.ndarray:
    """Sorted code keys of the (user_id, product_id) pairs of `labels` the history knows."""
    keys = distinct(history.pair_keys(labels["user_id"], labels["product_id"]))
    return keys[keys >= 0]


def with_labels(frame: ServingFrame, labels: pd.DataFrame, window: int) -> pd.DataFrame:
    """The frame's features with `label` (1 when the user touched the item in `labels`:
    user_id, product_id), keeping only users with at least one labelled candidate (a group
    without a positive teaches lambdarank nothing)."""
    return labelled(frame, positive_keys(frame.history, labels), window)


def labelled(frame: ServingFrame, positive: np.ndarray, window: int) -> pd.DataFrame:
    """`with_labels` from the sorted code keys of the positive pairs."""
    history = frame.history
    features = frame.features
    key = features["user"].to_numpy() * history.n_items + features["item"].to_numpy()
    label = in_sorted(positive, key)
    has_positive = np.zeros(history.n_users, dtype=bool)
    has_positive[features["user"].to_numpy()[label]] = True
    keep = has_positive[features["user"].to_numpy()]
    out = features[keep].copy()
    out["label"] = label[keep].astype(np.int32)
    out["window"] = window
    return out


def window_frame(
    interactions: pd.DataFrame,
    window: Window,
    index: int,
    inputs: CandidateInputs,
    params: RankerParams,
) -> pd.DataFrame:
    """A training window: candidates and features from before `window.start` for (a sample
    of) the users who touched something inside it, labelled by what they touched."""
    labels = window_labels(interactions, window)
    history = history_before(interactions, inputs.items, window.start, inputs.half_life_days)
    positive = positive_keys(history, labels)
    # A sample of the users with history before the window who touched something inside it.
    rows = sample_rows(distinct(positive // history.n_items), params, index)
    parts = [
        labelled(frame, positive, index)
        for frame in chunked_frames(history, rows, inputs, params, f"window {index}")
    ]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    log.info(
        "ranker window %s..%s: %d users, %d candidate rows, %.1f%% positive",
        window.start.date(),
        window.end.date(),
        out["user"].nunique() if len(out) else 0,
        len(out),
        100 * float(out["label"].mean()) if len(out) else 0.0,
    )
    return out


def sample_rows(rows: np.ndarray, params: RankerParams, window: int) -> np.ndarray:
    """The training users of a window: at most `params.max_train_users` of `rows`, a
    seeded sample of its own per window, so the fit costs the same whatever the user count."""
    return _sample_rows(rows, params.max_train_users, params.seed + window)


def _progress(started: float):
    """A LightGBM callback that logs the trees built so far at most every PROGRESS_EVERY_S."""
    last = [started]

    def callback(env) -> None:
        now = time.perf_counter()
        if now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        done, total = env.iteration + 1, env.end_iteration - env.begin_iteration
        rate = done / (now - started)
        log.info(
            "ranker fit: %d/%d trees (%.1f trees/s, ~%.0f s left)",
            done,
            total,
            rate,
            (total - done) / rate,
        )

    return callback


class CandidateRanker:
    """LightGBM `LGBMRanker` over the candidate features; deterministic.

    The default objective, `rank_xendcg` (cross-entropy NDCG), costs time linear in a user's
    candidates where lambdarank's pairs grow with their square; on the planted retailer it
    fits several times faster at the same MAP@12. `lambdarank` stays available."""

    def __init__(self, params: RankerParams) -> None:
        self.params = params
        self.features = feature_names(list(params.caps))
        self.model = None

    def fit(self, frame: pd.DataFrame) -> CandidateRanker:
        import lightgbm as lgb

        p = self.params
        frame = frame.sort_values(["window", "user"], kind="mergesort")
        groups = frame.groupby(["window", "user"], sort=False).size().to_numpy()
        self.model = lgb.LGBMRanker(
            objective=p.objective,
            n_estimators=p.n_estimators,
            learning_rate=p.learning_rate,
            num_leaves=p.num_leaves,
            min_child_samples=p.min_child_samples,
            lambdarank_truncation_level=p.k * 2,
            random_state=p.seed,
            n_jobs=p.n_jobs,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        started = time.perf_counter()
        log.info("ranker fitting on %d rows of %d groups", len(frame), len(groups))
        self.model.fit(
            frame[self.features], frame["label"], group=groups, callbacks=[_progress(started)]
        )
        log.info(
            "ranker fitted on %d rows of %d groups in %.1f s",
            len(frame),
            len(groups),
            time.perf_counter() - started,
        )
        return self

    def importances(self) -> pd.DataFrame:
        """Gain and split importance per feature, largest gain first."""
        booster = self.model.booster_
        gain = booster.feature_importance("gain")
        split = booster.feature_importance("split")
        total = gain.sum() or 1.0
        table = pd.DataFrame(
            {
                "feature": self.features,
                "gain": gain.astype(np.float64),
                "gain_share": gain / total,
                "splits": split.astype(np.int64),
            }
        )
        return table.sort_values(["gain", "feature"], ascending=[False, True]).reset_index(
            drop=True
        )

    def rank(self, frame: ServingFrame, k: int) -> pd.DataFrame:
        """Top-k per user as user_id, product_id, rank, score (ties: product code)."""
        features = frame.features
        if features.empty:
            return pd.DataFrame(columns=["user_id", "product_id", "rank", "score"])
        # Every row is scored on its own, so scoring on every core gives the same scores as
        # one thread (fitting is where threads wait for each other): 2.3 s to 1.2 s a chunk.
        scores = self.model.predict(features[self.features], num_threads=scoring_threads())
        lists = lists_from_codes(frame.history, features["user"], features["item"], scores, k)
        return lists.assign(source=proposed_by(frame, lists, list(self.params.caps)))


def scoring_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def proposed_by(frame: ServingFrame, lists: pd.DataFrame, priority: Sequence[str]) -> np.ndarray:
    """For each listed (user, item), the first source in `priority` that proposed it: what a
    published row says it came from."""
    history = frame.history
    candidates = frame.candidates
    level = pd.Series({s: i for i, s in enumerate(priority)})
    n = history.n_items
    key = candidates["user"].to_numpy() * n + candidates["item"].to_numpy()
    lvl = level.reindex(candidates["source"]).to_numpy(dtype=np.float64)
    order = np.lexsort((lvl, key))
    key, first = key[order], np.r_[True, key[order][1:] != key[order][:-1]]
    best_source = candidates["source"].to_numpy()[order][first]
    keys = key[first]
    wanted = history.pair_keys(lists["user_id"], lists["product_id"])
    pos = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    return (
        np.where(keys[pos] == wanted, best_source[pos], None)
        if len(keys)
        else np.full(len(lists), None)
    )


def lists_from_codes(
    history: History, user: pd.Series, item: pd.Series, scores: np.ndarray, k: int
) -> pd.DataFrame:
    """Top-k per user of scored (user, item) codes, as user_id, product_id, rank, score."""
    user, item = np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64)
    order = by_row_value_column(user, scores, item)
    user, item, scores = user[order], item[order], scores[order]
    rank = position_in_run(user)
    keep = rank <= k
    return pd.DataFrame(
        {
            "user_id": history.matrix.users.to_numpy()[user[keep]],
            "product_id": history.matrix.items.to_numpy()[item[keep]],
            "rank": rank[keep].astype(np.int32),
            "score": scores[keep].astype(np.float64),
        }
    )


def fixed_order(
    frame: ServingFrame, priority: Sequence[str], caps: Mapping[str, int], k: int
) -> pd.DataFrame:
    """The candidates merged in a fixed source order (own -> siblings -> ... as configured):
    the strongest hand-made list, which the ranker has to beat by ordering alone."""
    candidates = frame.candidates
    level = pd.Series({s: i for i, s in enumerate(priority)})
    rows = candidates[candidates["source"].isin(priority)]
    rows = rows[rows["source_rank"].to_numpy() <= rows["source"].map(caps).fillna(k).to_numpy()]
    lvl = level.reindex(rows["source"]).to_numpy()
    order = np.lexsort(
        (rows["item"].to_numpy(), rows["source_rank"].to_numpy(), lvl, rows["user"].to_numpy())
    )
    rows = rows.iloc[order].drop_duplicates(["user", "item"])
    score = -np.arange(len(rows), dtype=np.float64)  # earlier is better
    lists = lists_from_codes(frame.history, rows["user"], rows["item"], score, k)
    lists["score"] = (k + 1 - lists["rank"]).astype(np.float64)
    return lists


def source_lists(
    frame: ServingFrame, k: int, only: Sequence[str] | None = None
) -> dict[str, pd.DataFrame]:
    """Each source's own top-k (of the sources in `only`, when given), to score every single
    source beside the ranker."""
    out = {}
    candidates = frame.candidates
    if only is not None:
        candidates = candidates[candidates["source"].isin(list(only))]
    for source, rows in candidates.groupby("source", sort=True):
        rows = rows[rows["source_rank"] <= k]
        out[str(source)] = lists_from_codes(
            frame.history,
            rows["user"],
            rows["item"],
            -rows["source_rank"].to_numpy(np.float64),
            k,
        ).assign(score=lambda f: f["rank"].rsub(k + 1).astype(np.float64))
    return out
