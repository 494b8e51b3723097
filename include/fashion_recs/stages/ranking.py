"""The ranker step: candidates from every source, features, LightGBM learning-to-rank, scored on the
run's hold-out beside every single source and the fixed-order merge, then refit on the newest
windows for the published lists.

Windows are `evaluation.holdout_days` long. With the hold-out starting at `c` and W training
windows, the scored model learns from windows ending at c (labels in [c - w, c)), and the
published model from windows ending at the run's last day, whose newest window is the hold-out
itself: its candidates and features are exactly the scored ones, labelled with the hold-out's
truth, so the run builds W + 2 histories, not 2W + 2.
"""

from __future__ import annotations

import logging
import time

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
from fashion_recs.personal.candidates import CandidateInputs, in_sorted
from fashion_recs.personal.evaluation import score_lists
from fashion_recs.personal.ranker import (
    CandidateRanker,
    RankerParams,
    fixed_order,
    label_windows,
    serving_frame,
    source_lists,
    window_frame,
    with_labels,
)
from fashion_recs.stages.personal import PersonalInputs, save_metrics

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


def candidate_inputs(config: RetailerConfig, paths: RunPaths) -> CandidateInputs:
    """The catalogue (designs, departments, prices), look-alikes and segments of the run."""
    products = pd.read_parquet(
        paths.path(PRODUCTS), columns=["product_id", "group_key", "department", "price"]
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
        user_cf_neighbours=rc.neighbours,
        user_cf_max_item_users=config.personal.user_cf.max_item_users,
        weighting=config.personal.user_cf.weighting,
    )


def _lists(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    out = frame[["user_id", "product_id", "rank", "score"]].copy()
    out["source"] = frame.get("source", source)
    return out


def ranker_stage(config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths) -> dict:
    """Score the ranker, every source and the fixed-order merge on the hold-out; publish the
    lists of a ranker refit on the newest windows for every user with history."""
    rc = config.personal.ranker
    k = config.personal.top_k
    params = ranker_params(config)
    split = inputs.split
    cutoff = split.cutoff
    end = cutoff + pd.Timedelta(days=params.window_days)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    candidates_in = candidate_inputs(config, paths)
    interactions = inputs.interactions

    # Scored model: windows before the hold-out.
    windows = label_windows(cutoff, params.window_days, params.train_windows)
    frames = [
        window_frame(interactions, w, i + 1, candidates_in, params) for i, w in enumerate(windows)
    ]
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
    mark = time.perf_counter()
    holdout = serving_frame(interactions, cutoff, split.users, candidates_in, params)
    eval_lists = scored_model.rank(holdout, k)
    timings["holdout"] = round(time.perf_counter() - mark, 2)

    compared = {
        "ranker": _lists(eval_lists),
        FIXED_ORDER: _lists(fixed_order(holdout, rc.fixed_order, params.caps, k), "fixed_order"),
    }
    for name, lists in compared.items():
        write_artifact(paths, personal_eval(name), lists)
    n = inputs.catalogue_size
    metrics = [
        score_lists(lists, split, k=k, catalogue_size=n, model=m) for m, lists in compared.items()
    ]
    for source, lists in source_lists(holdout, k).items():
        metrics.append(score_lists(lists, split, k=k, catalogue_size=n, model=f"source_{source}"))
    recall = _candidate_recall(holdout, split.truth)

    # Published model: the newest windows, the hold-out's own window first.
    mark = time.perf_counter()
    newest = [with_labels(holdout, split.truth, 0), *frames[: params.train_windows - 1]]
    published_model = CandidateRanker(params).fit(pd.concat(newest, ignore_index=True))
    everyone = serving_frame(interactions, end, None, candidates_in, params)
    full = published_model.rank(everyone, k)
    write_artifact(paths, personal_lists("ranker"), _lists(full))
    fixed_full = fixed_order(everyone, rc.fixed_order, params.caps, k)
    write_artifact(paths, personal_lists(FIXED_ORDER), _lists(fixed_full, "fixed_order"))
    own = source_lists(everyone, k).get("own")
    if own is not None:
        # The customer's own items, newest day first: a baseline the gate may have to serve.
        write_artifact(paths, personal_lists(OWN_ITEMS), _lists(own, "own"))
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
            {"start": str(w.start), "end": str(w.end), "rows": len(f)}
            for w, f in zip(windows, frames, strict=True)
        ],
        "holdout_candidate_recall": round(recall, 4),
        "holdout_rows": len(holdout.features),
        "published_rows": len(everyone.features),
        "published_users": int(full["user_id"].nunique()),
        "importance": {
            r.feature: round(float(r.gain_share), 4) for r in importance.head(15).itertuples()
        },
        "importance_path": str(paths.path(RANKER_IMPORTANCE)),
        "timings": timings,
    }


def _candidate_recall(frame, truth: pd.DataFrame) -> float:
    """Share of the hold-out's (user, item) pairs that some source proposed."""
    history = frame.history
    n = history.n_items
    proposed = np.unique(
        frame.candidates["user"].to_numpy() * n + frame.candidates["item"].to_numpy()
    )
    keys = history.pair_keys(truth["user_id"], truth["product_id"])
    return float(in_sorted(proposed, keys).mean()) if len(keys) else 0.0
