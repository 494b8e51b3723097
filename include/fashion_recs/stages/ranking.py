"""The ranker step: candidates from every source, features, LightGBM learning-to-rank, scored on the
run's hold-out beside every single source and the fixed-order merge, then refit on the newest
windows for the published lists.

Windows are `evaluation.holdout_days` long. With the hold-out starting at `c` and W training
windows, the scored model learns from windows ending at c (labels in [c - w, c)), and the
published model from windows ending at the run's last day, whose newest window is the hold-out
itself: its candidates and features are exactly the scored ones, labelled with the hold-out's
truth, so the run builds W + 2 histories, not 2W + 2.

Cost stays linear in users and memory flat: each training window (and the hold-out's, for the
published model) trains on a seeded sample of at most `personal.ranker.max_train_users` users,
and users are served `personal.ranker.chunk_users` at a time, the whole-history parts (fitted
neighbour models, popularity, per-user aggregates) computed once per history and shared by the
chunks; only each chunk's top-k lists are kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.config import RetailerConfig
from fashion_recs.contract import (
    PRODUCTS,
    RANKER_IMPORTANCE,
    USERS,
    personal_eval,
    personal_lists,
    similar_products,
)
from fashion_recs.personal.candidates import CandidateInputs, History, history_before
from fashion_recs.personal.evaluation import score_lists
from fashion_recs.personal.item_knn import ItemNeighbourSearch
from fashion_recs.personal.ranker import (
    CandidateRanker,
    RankerParams,
    ServingFrame,
    chunked_frames,
    fixed_order,
    label_windows,
    labelled,
    positive_keys,
    sample_rows,
    source_lists,
    window_frame,
)
from fashion_recs.sort_keys import distinct, in_sorted
from fashion_recs.stages.personal import PersonalInputs, _two_tower_params, save_metrics

log = logging.getLogger(__name__)

FIXED_ORDER = "candidates_fixed_order"
OWN_ITEMS = "source_own"


def ranker_params(config: RetailerConfig) -> RankerParams:
    rc = config.personal.ranker
    return RankerParams(
        objective=rc.objective,
        window_days=config.evaluation.holdout_days,
        train_windows=rc.train_windows,
        max_train_users=rc.max_train_users,
        chunk_users=rc.chunk_users,
        n_estimators=rc.n_estimators,
        learning_rate=rc.learning_rate,
        num_leaves=rc.num_leaves,
        min_child_samples=rc.min_child_samples,
        n_jobs=rc.n_jobs,
        k=config.personal.top_k,
        seed=config.seed,
        caps={name: cap for name, cap in rc.sources.items() if cap > 0},
        exclude_known=config.personal.exclude_known,
    )


def candidate_inputs(
    config: RetailerConfig, paths: RunPaths, item_search: ItemNeighbourSearch | None = None
) -> CandidateInputs:
    """The catalogue (designs, departments, prices, the towers' item features), look-alikes
    and segments of the run; `item_search` finds item-kNN's neighbours (default local)."""
    products = pd.read_parquet(
        paths.path(PRODUCTS),
        columns=["product_id", "group_key", "department", "price", "color", "target_audience"],
    )
    similar = pd.read_parquet(
        paths.path(similar_products(config.similar.default_model)),
        columns=["product_id", "rank", "similar_product_id", "score"],
    )
    segments = pd.read_parquet(paths.path(USERS), columns=["user_id", "age_group", "region"])
    segments = segments.replace({config.demographics.unknown_label: np.nan})
    rc = config.personal.ranker
    return CandidateInputs.build(
        products,
        similar,
        segments,
        config.interactions.half_life_days,
        n_recent=rc.n_recent,
        trend_days=rc.trend_days,
        item_knn_neighbours=rc.neighbours,
        item_search=item_search,
        user_cf_neighbours=rc.neighbours,
        user_cf_max_item_users=config.personal.user_cf.max_item_users,
        weighting=config.personal.user_cf.weighting,
        catalogue=products[["product_id", "department", "color", "target_audience"]],
        two_tower_params=_two_tower_params(config, config.personal.two_tower.loss).for_refit(
            rc.two_tower_epochs
        ),
        two_tower_days=rc.two_tower_days,
    )


def _lists(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    out = frame[["user_id", "product_id", "rank", "score"]].copy()
    out["source"] = frame.get("source", source)
    return out


def ranker_stage(
    config: RetailerConfig,
    inputs: PersonalInputs,
    paths: RunPaths,
    item_search: ItemNeighbourSearch | None = None,
) -> dict:
    """Score the ranker, every source and the fixed-order merge on the hold-out; publish the
    lists of a ranker refit on the newest windows for every user with history. `item_search`:
    where the item-kNN source's neighbours are found (`ItemKNN`), local by default."""
    rc = config.personal.ranker
    k = config.personal.top_k
    params = ranker_params(config)
    split = inputs.split
    cutoff = split.cutoff
    end = cutoff + pd.Timedelta(days=params.window_days)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    candidates_in = candidate_inputs(config, paths, item_search)
    # Ids as categories: every window maps them to codes again, and a categorical column
    # maps through its few categories instead of hashing every row's string.
    interactions = inputs.interactions.astype({"user_id": "category", "product_id": "category"})

    # Scored model: windows before the hold-out.
    windows = label_windows(cutoff, params.window_days, params.train_windows)
    log.info(
        "ranker: candidate inputs read, ids coded (%.0f s); building %d training windows",
        time.perf_counter() - started,
        len(windows),
    )
    frames = []
    for i, w in enumerate(windows):
        frames.append(window_frame(interactions, w, i + 1, candidates_in, params))
        log.info(
            "ranker: training window %d of %d built, %d rows (%.0f s)",
            i + 1,
            len(windows),
            len(frames[-1]),
            time.perf_counter() - started,
        )
    timings["training_windows"] = round(time.perf_counter() - started, 2)
    training = pd.concat(frames, ignore_index=True)
    if training.empty:
        reason = (
            f"no training window before {cutoff.date()} has users with earlier history and a "
            "labelled candidate; the ranker needs at least "
            f"{params.window_days * (params.train_windows + 1)} days of interactions before "
            "the hold-out ends (fewer personal.ranker.train_windows or a shorter "
            "evaluation.holdout_days need less)"
        )
        log.warning("ranker skipped: %s", reason)
        return {"skipped": reason}
    mark = time.perf_counter()
    scored_model = CandidateRanker(params).fit(training)
    timings["fit"] = round(time.perf_counter() - mark, 2)
    # Only the newest windows train the published model: the rest (and their concatenation,
    # gigabytes at 10x the demo) go before the hold-out is scored.
    window_rows = [len(f) for f in frames]
    del training
    frames = frames[: params.train_windows - 1]
    mark = time.perf_counter()
    half_life = candidates_in.half_life_days
    history = history_before(interactions, candidates_in.items, cutoff, half_life)
    truth = positive_keys(history, split.truth)
    scored = _score_holdout(history, split, truth, candidates_in, params, scored_model, rc)
    holdout_rows = scored.rows
    timings["holdout"] = round(time.perf_counter() - mark, 2)
    n = inputs.catalogue_size
    log.info("ranker: scoring %d lists on the hold-out", len(scored.lists))
    metrics = []
    for name, lists in scored.lists.items():
        if name in ("ranker", FIXED_ORDER):
            write_artifact(paths, personal_eval(name), lists)
        metrics.append(score_lists(lists, split, k=k, catalogue_size=n, model=name))
    keys = history.pair_keys(split.truth["user_id"], split.truth["product_id"])
    recall = scored.proposed / len(keys) if len(keys) else 0.0

    # Published model: the newest windows, the hold-out's own window first.
    mark = time.perf_counter()
    newest = pd.concat([scored.training, *frames], ignore_index=True)
    del scored, history, frames
    published_model = CandidateRanker(params).fit(newest)
    del newest
    everyone = history_before(interactions, candidates_in.items, end, half_life)
    published = _publish(everyone, candidates_in, params, published_model, rc)
    for name, lists in published.lists.items():
        write_artifact(paths, personal_lists(name), lists)
    timings["publish"] = round(time.perf_counter() - mark, 2)

    importance = published_model.importances()
    write_artifact(paths, RANKER_IMPORTANCE, importance)
    timings["ranker"] = round(time.perf_counter() - started, 2)
    # CPU seconds of this process: what the step costs, whatever else shares the machine.
    timings["cpu"] = round(time.process_time() - cpu_started, 2)
    summary = save_metrics(paths, "ranker", metrics, {"ranker": timings["ranker"]})
    values = summary["values"]
    log.info(
        "ranker: map@%d %.4f (fixed order %.4f); candidates hold %.1f%% of the hold-out's "
        "items; %.1f s (%s)",
        k,
        values.get(f"ranker/map@{k}", float("nan")),
        values.get(f"{FIXED_ORDER}/map@{k}", float("nan")),
        100 * recall,
        timings["ranker"],
        timings,
    )
    return {
        **summary,
        "sources": params.caps,
        "windows": [
            {"start": str(w.start), "end": str(w.end), "rows": rows}
            for w, rows in zip(windows, window_rows, strict=True)
        ],
        "holdout_candidate_recall": round(recall, 4),
        "holdout_rows": holdout_rows,
        "published_rows": published.rows,
        "published_users": int(published.lists["ranker"]["user_id"].nunique()),
        "importance": {
            r.feature: round(float(r.gain_share), 4) for r in importance.head(15).itertuples()
        },
        "importance_path": str(paths.path(RANKER_IMPORTANCE)),
        "timings": timings,
    }


@dataclass
class ChunkedLists:
    """What serving users chunk by chunk keeps: each list's rows, the count of candidate
    rows, the candidates' hits among the truth and (hold-out only) the labelled training rows
    of a sample of its users."""

    lists: dict[str, pd.DataFrame]
    rows: int = 0
    proposed: int = 0
    training: pd.DataFrame | None = None


def _score_holdout(
    history: History,
    split,
    truth: np.ndarray,
    inputs: CandidateInputs,
    params: RankerParams,
    model: CandidateRanker,
    rc,
) -> ChunkedLists:
    """The hold-out users' lists from the scored model, the fixed-order merge and every single
    source; how many hold-out pairs the candidates hold; and the hold-out window labelled, for
    a sample of its users, to train the published model on."""
    k = params.k
    rows = history.matrix.user_rows(pd.Index(split.users))
    rows = rows[rows >= 0]
    train_users = np.zeros(history.n_users, dtype=bool)
    train_users[sample_rows(distinct(truth // history.n_items), params, 0)] = True
    parts: dict[str, list[pd.DataFrame]] = {}
    training, count, proposed = [], 0, 0
    for frame in chunked_frames(history, rows, inputs, params, "hold-out"):
        found = {
            "ranker": _lists(model.rank(frame, k)),
            FIXED_ORDER: _lists(fixed_order(frame, rc.fixed_order, params.caps, k), "fixed_order"),
        }
        for source, lists in source_lists(frame, k).items():
            found[f"source_{source}"] = _lists(lists, source)
        for name, lists in found.items():
            parts.setdefault(name, []).append(lists)
        count += len(frame.features)
        proposed += _proposed_hits(frame, truth)
        rows_labelled = labelled(frame, truth, 0)
        training.append(rows_labelled[train_users[rows_labelled["user"].to_numpy()]])
    return ChunkedLists(
        {name: pd.concat(p, ignore_index=True) for name, p in parts.items()},
        count,
        proposed,
        pd.concat(training, ignore_index=True) if training else pd.DataFrame(),
    )


def _publish(
    history: History,
    inputs: CandidateInputs,
    params: RankerParams,
    model: CandidateRanker,
    rc,
) -> ChunkedLists:
    """Every user's lists at the run's last day: the published ranker's, the fixed-order
    merge's and the user's own items (a baseline the gate may have to serve)."""
    k = params.k
    parts: dict[str, list[pd.DataFrame]] = {"ranker": [], FIXED_ORDER: []}
    count = 0
    rows = np.arange(history.n_users)
    for frame in chunked_frames(history, rows, inputs, params, "published lists"):
        parts["ranker"].append(_lists(model.rank(frame, k)))
        fixed = fixed_order(frame, rc.fixed_order, params.caps, k)
        parts[FIXED_ORDER].append(_lists(fixed, "fixed_order"))
        own = source_lists(frame, k, only=["own"]).get("own")
        if own is not None:
            # The customer's own items, newest day first.
            parts.setdefault(OWN_ITEMS, []).append(_lists(own, "own"))
        count += len(frame.features)
    return ChunkedLists({name: pd.concat(p, ignore_index=True) for name, p in parts.items()}, count)


def _proposed_hits(frame: ServingFrame, truth: np.ndarray) -> int:
    """How many of the truth's (user, item) code keys the frame's candidates hold."""
    n = frame.history.n_items
    proposed = distinct(
        frame.candidates["user"].to_numpy() * n + frame.candidates["item"].to_numpy()
    )
    return int(in_sorted(proposed, truth).sum())
