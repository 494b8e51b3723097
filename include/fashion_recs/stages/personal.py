"""Personalisation stages: every model and baseline scored on one hold-out, a quality gate,
and the routing that materialises what each shopper is served.

Each model step fits its models on the train part of the run's temporal split (lists for the
hold-out users, scored beside the baselines) and, for the matrix models, again on all
interactions (lists for every known user, which routing may serve; the two-tower model is
refit on all interactions for the epoch count found on the hold-out). The learned ranker
lives in `stages/ranking.py`. Lists, metrics and the gate are Parquet artifacts; the steps
pass only their paths and headline numbers on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import RetailerConfig
from fashion_recs.contract import (
    ITEM_CANDIDATES,
    METRICS,
    PERSONAL_GATE,
    POPULAR,
    PRODUCTS,
    USER_RECOMMENDATIONS,
    USER_ROUTES,
    USERS,
    Artifact,
    personal_eval,
    personal_lists,
    personal_metrics,
)
from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import segment_popularity_predictions
from fashion_recs.personal.base import Recommender
from fashion_recs.personal.evaluation import HoldoutSplit, holdout_split, score_lists
from fashion_recs.personal.item_knn import ItemNeighbourSearch
from fashion_recs.personal.matrix import UserItemMatrix, user_item_matrix

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ["age_group", "region"]
ITEM_KNN_SIMILAR = Artifact("item_knn_similar", "06_models", None)


@dataclass
class PersonalInputs:
    """What every personalisation step reads: interactions, the catalogue and its split."""

    interactions: pd.DataFrame
    products: pd.DataFrame
    items: pd.Index
    split: HoldoutSplit
    full: UserItemMatrix

    @property
    def catalogue_size(self) -> int:
        return len(self.items)


def load_inputs(
    config: RetailerConfig, paths: RunPaths, interactions_path: Path, as_of: date
) -> PersonalInputs:
    started = time.perf_counter()
    interactions = pd.read_parquet(
        interactions_path, columns=["user_id", "product_id", "event_ts", "weight"]
    )
    products = pd.read_parquet(
        paths.path(PRODUCTS),
        columns=["product_id", "title", "department", "color", "target_audience"],
    )
    items = pd.Index(products["product_id"], name="product_id")
    half_life = config.interactions.half_life_days
    split = holdout_split(
        interactions,
        items,
        holdout_days=config.evaluation.holdout_days,
        half_life_days=half_life,
    )
    log.info(
        "personal inputs: hold-out truth and train matrix ready (%d users x %d products); "
        "building the matrix of all %d interactions",
        split.matrix.n_users,
        split.matrix.n_items,
        len(interactions),
    )
    full = user_item_matrix(
        interactions, items, as_of=as_of_timestamp(as_of), half_life_days=half_life
    )
    log.info(
        "personal inputs: matrix of all interactions ready (%d users), %.0f s in all",
        full.n_users,
        time.perf_counter() - started,
    )
    return PersonalInputs(interactions, products, items, split, full)


def _lists_table(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[["user_id", "product_id", "rank", "score"]].copy()
    out["source"] = frame.get("source", None)
    return out


def _metric(metrics: pd.DataFrame, model: str, metric: str) -> float:
    row = metrics[(metrics["model"] == model) & (metrics["metric"] == metric)]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def run_models(
    config: RetailerConfig,
    paths: RunPaths,
    step: str,
    inputs: PersonalInputs,
    factories: dict[str, Callable[[], Recommender]],
    *,
    full_lists: bool = True,
    fitted: dict[str, Recommender] | None = None,
) -> dict[str, Any]:
    """Fit, list and score each model on the split; refit on everything for the full lists.

    `fitted`, when given, receives each model fitted on everything, for a caller that needs
    more from it than its lists (a second fit costs as much as the first)."""
    cfg = config.personal
    k = cfg.top_k
    metrics, timings, unserved = [], {}, {}
    for name, make in factories.items():
        started = time.perf_counter()
        model = make().fit(inputs.split.matrix)
        lists = model.recommend(inputs.split.users, k, exclude_known=cfg.exclude_known)
        unserved[name] = _unserved(lists, inputs.split.users, k)
        write_artifact(paths, personal_eval(name), _lists_table(lists))
        metrics.append(
            score_lists(lists, inputs.split, k=k, catalogue_size=inputs.catalogue_size, model=name)
        )
        if full_lists:
            model = make().fit(inputs.full)
            lists = model.recommend(inputs.full.users, k, exclude_known=cfg.exclude_known)
            write_artifact(paths, personal_lists(name), _lists_table(lists))
            if fitted is not None:
                fitted[name] = model
        timings[name] = round(time.perf_counter() - started, 2)
        log.info(
            "%s: map@%d %.4f, recall@%d %.4f (%.1f s)",
            name,
            k,
            _metric(metrics[-1], name, "map"),
            k,
            _metric(metrics[-1], name, "recall"),
            timings[name],
        )
        if unserved[name]["users_without_list"]:
            log.info(
                "%s cannot serve %d of %d hold-out users (routing fills them from the run's "
                "best baseline, then segment popularity)",
                name,
                unserved[name]["users_without_list"],
                len(inputs.split.users),
            )
    return {**save_metrics(paths, step, metrics, timings), "unserved": unserved}


def _unserved(lists: pd.DataFrame, users: pd.Index, k: int) -> dict[str, int]:
    """How many of `users` a model left without a list, or with fewer than k items."""
    sizes = lists.groupby("user_id").size().reindex(users).fillna(0)
    return {
        "users_without_list": int((sizes == 0).sum()),
        "users_with_short_list": int(((sizes > 0) & (sizes < k)).sum()),
    }


def save_metrics(
    paths: RunPaths, step: str, metrics: list[pd.DataFrame], timings: dict[str, float]
) -> dict[str, Any]:
    table = pd.concat(metrics, ignore_index=True)
    path = write_artifact(paths, personal_metrics(step), table)
    values = {f"{r.model}/{r.metric}@{r.k}": round(float(r.value), 5) for r in table.itertuples()}
    return {
        "metrics": str(path),
        "models": list(dict.fromkeys(table["model"])),
        "values": values,
        "seconds": timings,
    }


# --- the steps -------------------------------------------------------------------------------


def baselines_stage(
    config: RetailerConfig,
    inputs: PersonalInputs,
    paths: RunPaths,
    item_search: ItemNeighbourSearch | None = None,
) -> dict:
    """Repurchase, item-kNN (and popularity without known items when models exclude them),
    and item-kNN's per-product lists for routing new users. `item_search`: where item-kNN's
    neighbours are found, local by default."""
    from fashion_recs.personal.item_knn import ItemKNN
    from fashion_recs.personal.popularity import Popularity
    from fashion_recs.personal.repurchase import Repurchase

    n = config.personal.item_knn_neighbours
    weighting = config.personal.user_cf.weighting
    factories: dict[str, Callable[[], Recommender]] = {
        "repurchase": Repurchase,
        "item_knn": lambda: ItemKNN(n, weighting, search=item_search),
    }
    if config.personal.exclude_known:
        factories["popularity_unseen"] = Popularity
    fitted: dict[str, Recommender] = {}
    summary = run_models(config, paths, "baselines", inputs, factories, fitted=fitted)
    knn = fitted["item_knn"]
    assert isinstance(knn, ItemKNN)
    similar = knn.similar_items(
        list(inputs.items), config.personal.routing.item_candidates_per_product
    ).rename(columns={"similar_product_id": "candidate_product_id"})
    similar["source"] = "item_knn"
    write_artifact(paths, ITEM_KNN_SIMILAR, similar.astype({"rank": np.int32}))
    return summary


def user_cf_stage(config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths) -> dict:
    from fashion_recs.personal.user_cf import UserCF

    cfg = config.personal.user_cf
    factories: dict[str, Callable[[], Recommender]] = {
        f"user_cf_{s}": (
            lambda s=s: UserCF(
                s, cfg.n_neighbours, cfg.weighting, max_item_users=cfg.max_item_users
            )
        )
        for s in cfg.similarities
    }
    return run_models(config, paths, "user_cf", inputs, factories)


def item_vectors(
    config: RetailerConfig, paths: RunPaths, model: str, products: pd.DataFrame
) -> np.ndarray | Any | None:
    """Vectors of a similar-products model aligned to the catalogue, or None when this run
    has none (an encoder whose weights were not available)."""
    if model == "text_tfidf":
        from fashion_recs.stages.similar import fit_configured_text_model

        full = pd.read_parquet(paths.path(PRODUCTS))
        return fit_configured_text_model(full, config.similar.text).transform(full)
    from fashion_recs.stages.embeddings import embeddings_artifact

    path = paths.path(embeddings_artifact(model))
    if not path.exists():
        return None
    table = pd.read_parquet(path, columns=["product_id", "vector"])
    vectors = np.stack(table["vector"].to_numpy()).astype(np.float32)
    aligned = np.zeros((len(products), vectors.shape[1]), dtype=np.float32)
    rows = pd.Index(table["product_id"]).get_indexer(products["product_id"])
    aligned[rows >= 0] = vectors[rows[rows >= 0]]
    return aligned


def profile_search(config: RetailerConfig) -> Any:
    """The configured ranking of items against embedding profiles."""
    from fashion_recs.personal.profiles import ProfileSearch

    cfg = config.personal.profiles
    return ProfileSearch(
        method=cfg.method,
        exact_max_items=cfg.exact_max_items,
        nlist=cfg.ivf_nlist,
        nprobe=cfg.ivf_nprobe,
        recall_sample=cfg.recall_sample,
        seed=config.seed,
    )


def profiles_stage(config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths) -> dict:
    """Embedding profiles for each configured vector model this run has vectors for; the
    summary says how each ranked items (`search`: method, index settings and, for an
    approximate search, its recall@k against exact ranking on the hold-out and full lists)."""
    from fashion_recs.personal.profiles import EmbeddingProfile

    search = profile_search(config)
    factories: dict[str, Callable[[], Recommender]] = {}
    searches: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}

    def factory(vectors: Any, model: str) -> Callable[[], Recommender]:
        def make() -> Recommender:
            profile = EmbeddingProfile(vectors, model, search=search)
            searches.setdefault(profile.name, []).append(profile.search_info)
            return profile

        return make

    for model in config.personal.profiles.vectors:
        vectors = item_vectors(config, paths, model, inputs.products)
        if vectors is None:
            skipped[model] = f"no {model} embeddings in this run (encoder weights unavailable)"
            log.warning("embedding profile %s skipped: %s", model, skipped[model])
            continue
        factories[f"embedding_profile_{model}"] = factory(vectors, model)
    if not factories:
        raise FashionRecsError("embedding profiles: no configured vector model has vectors")
    summary = run_models(config, paths, "profiles", inputs, factories)
    return {**summary, "skipped": skipped, "search": _search_summary(searches)}


def _search_summary(searches: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: the search of its last fit (the full lists), with the recall of the
    hold-out lists beside it when the search was approximate."""
    out = {}
    for name, fits in searches.items():
        info = dict(fits[-1])
        if "recall_at_k" in info and len(fits) > 1:
            info["recall_at_k_holdout"] = fits[0].get("recall_at_k")
        out[name] = info
    return out


def _two_tower_params(config: RetailerConfig, loss: str, max_epochs: int | None = None) -> Any:
    from fashion_recs.personal.two_tower import TwoTowerParams

    tt = config.personal.two_tower
    return TwoTowerParams(
        dim=tt.dim,
        hidden=tt.hidden,
        history_len=tt.history_len,
        loss=loss,
        temperature=tt.temperature,
        batch_size=tt.batch_size,
        learning_rate=tt.learning_rate,
        max_epochs=max_epochs or tt.max_epochs,
        patience=tt.patience,
        val_fraction=tt.val_fraction,
        val_k=config.personal.top_k,
        seed=config.seed,
        num_threads=tt.num_threads,
        max_examples_per_epoch=tt.max_examples_per_epoch,
    )


def _content_features(config: RetailerConfig, paths: RunPaths, products: pd.DataFrame):
    """TF-IDF + one-hot vectors reduced to `content_dim` by a seeded truncated SVD."""
    dim = config.personal.two_tower.content_dim
    if dim == 0:
        return None
    from sklearn.decomposition import TruncatedSVD

    vectors = item_vectors(config, paths, "text_tfidf", products)
    dim = min(dim, vectors.shape[1] - 1, vectors.shape[0] - 1)
    svd = TruncatedSVD(n_components=dim, random_state=config.seed)
    return svd.fit_transform(vectors).astype(np.float32)


def two_tower_stage(config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths) -> dict:
    """The two-tower model with the configured loss, plus the comparison losses (scored only).

    Each model trains on the interactions before the hold-out cutoff (with its own temporal
    validation split for early stopping) and is scored on the hold-out. For the published
    lists and the saved model, the configured one is then trained on with all interactions
    (`TwoTowerModel.refit`, no validation split, no early stopping, seeded like the first), so
    the last days' interactions, and the users and products new in them, are trained on: for
    `personal.two_tower.refit_epochs` epochs from the split's weights, or, when that is null,
    afresh for the split's best epoch count. Its `training` entry holds the split training's
    history (best epoch, validation recall, seconds) and, under `refit`, the refit's epochs,
    losses and seconds. Comparison losses train for at most `compare_max_epochs`.
    """
    from fashion_recs.personal.two_tower import TwoTowerModel

    cfg = config.personal
    tt = cfg.two_tower
    k = cfg.top_k
    users = pd.read_parquet(paths.path(USERS), columns=["user_id", *SEGMENT_COLUMNS])
    items = inputs.products[["product_id", "department", "color", "target_audience"]]
    content = _content_features(config, paths, inputs.products)
    losses = [tt.loss] + [x for x in tt.compare_losses if x != tt.loss]
    metrics, timings, histories = [], {}, {}
    # Every loss trains on the same split: prepared once (half a minute at 10x the demo).
    data, default = None, None
    for loss in losses:
        name = "two_tower" if loss == tt.loss else f"two_tower_{loss}"
        started = time.perf_counter()
        params = _two_tower_params(
            config, loss, None if name == "two_tower" else tt.compare_max_epochs
        )
        if data is None:
            data = TwoTowerModel.prepare(inputs.split.train, users, items, params, content)
        model = TwoTowerModel.fit_prepared(data, params)
        lists = model.recommend(list(inputs.split.users), k, exclude_known=cfg.exclude_known)
        write_artifact(paths, personal_eval(name), _lists_table(lists))
        metrics.append(
            score_lists(lists, inputs.split, k=k, catalogue_size=inputs.catalogue_size, model=name)
        )
        histories[name] = _history(model)
        timings[name] = round(time.perf_counter() - started, 2)
        log.info(
            "%s: map@%d %.4f (%.1f s)", name, k, _metric(metrics[-1], name, "map"), timings[name]
        )
        if name == "two_tower":
            default = model
    # The split's preparation goes before the refit prepares every interaction.
    del data
    started = time.perf_counter()
    final = default.refit(
        inputs.interactions, users, items, item_content=content, epochs=tt.refit_epochs
    )
    refit = _history(final)
    histories["two_tower"]["refit"] = {
        "from_split_model": tt.refit_epochs is not None,
        "epochs": len(final.history.train_loss),
        "train_loss": refit["train_loss"],
        "examples_per_s": refit["examples_per_s"],
        "seconds": refit["seconds"],
    }
    # The refit model holds every user's demographics, history and known items.
    lists = final.recommend(list(inputs.full.users), k, exclude_known=cfg.exclude_known)
    write_artifact(paths, personal_lists("two_tower"), _lists_table(lists))
    final.save(paths.file("06_models", "two_tower"))
    timings["two_tower"] = round(timings["two_tower"] + time.perf_counter() - started, 2)
    log.info(
        "two_tower: published lists of %d users (%.1f s in all)",
        len(inputs.full.users),
        timings["two_tower"],
    )
    return {**save_metrics(paths, "two_tower", metrics, timings), "training": histories}


def _history(model: Any) -> dict[str, Any]:
    h = model.history
    keep = (
        "best_epoch",
        "stopped_early",
        "examples_per_s",
        "seconds",
        "n_pairs",
        "examples_per_epoch",
    )
    out = {key: getattr(h, key) for key in keep if hasattr(h, key)}
    for key in ("train_loss", "val_recall"):
        if hasattr(h, key):
            out[key] = [round(float(v), 5) for v in getattr(h, key)]
    return out


def personal_metric_artifacts(paths: RunPaths) -> list[Artifact]:
    """The personal_metrics_* artifacts the run's model steps wrote."""
    folder = paths.path(personal_metrics("x")).parent
    prefix = "personal_metrics_"
    names = sorted(p.stem.removeprefix(prefix) for p in folder.glob(f"{prefix}*.parquet"))
    return [personal_metrics(n) for n in names]


def _read_metrics(paths: RunPaths) -> pd.DataFrame:
    """Every personal_metrics_* artifact of the run, plus the popularity baselines."""
    artifacts = [METRICS, *personal_metric_artifacts(paths)]
    return pd.concat([pd.read_parquet(paths.path(a)) for a in artifacts], ignore_index=True)


def _best_model(config: RetailerConfig, metrics: pd.DataFrame, exclude: set[str]) -> str | None:
    gate = config.personal.gate
    rows = metrics[
        (metrics["metric"] == gate.metric)
        & metrics["model"].isin([m for m in gate.candidates if m not in exclude])
    ]
    if rows.empty:
        return None
    return str(rows.sort_values(["value", "model"], ascending=[False, True])["model"].iloc[0])


def _segments(paths: RunPaths, user_ids: pd.Index, unknown: str) -> pd.DataFrame:
    users = pd.read_parquet(paths.path(USERS), columns=["user_id", *SEGMENT_COLUMNS])
    frame = pd.DataFrame({"user_id": user_ids}).merge(users, on="user_id", how="left")
    return frame.replace({unknown: np.nan})


def _default_similar(config: RetailerConfig, paths: RunPaths) -> pd.DataFrame:
    from fashion_recs.contract import similar_products

    table = pd.read_parquet(paths.path(similar_products(config.similar.default_model)))
    return table[["product_id", "rank", "similar_product_id", "score"]]


def blend_stage(config: RetailerConfig, inputs: PersonalInputs, paths: RunPaths) -> dict:
    """The blend on the split and for every user; its `model` source is the best candidate."""
    from fashion_recs.personal.blend import blend, learn_caps, similar_of_recent
    from fashion_recs.personal.repurchase import Repurchase
    from fashion_recs.personal.routing import segment_popular_lists

    cfg = config.personal
    bc = cfg.blend
    k = cfg.top_k
    unknown = config.demographics.unknown_label
    started = time.perf_counter()
    metrics = _read_metrics(paths)
    model = _best_model(config, metrics, exclude={"blend"})
    if model is None:
        raise FashionRecsError("blend: no candidate model has metrics in this run")
    similar = _default_similar(config, paths)
    caps = {**bc.caps, "model": k, "segment_popularity": k}

    def candidates(matrix: UserItemMatrix, users: pd.Index, model_lists: pd.DataFrame, popular):
        recent = Repurchase().fit(matrix).recommend(users, bc.recent_items)
        near = similar_of_recent(recent, similar, bc.recent_items, bc.similar_per_item)
        return {
            "recent": recent,
            "similar": near,
            "model": model_lists,
            "segment_popularity": popular,
        }

    split = inputs.split
    segments = _segments(paths, split.users, unknown)
    pop_eval = segment_popularity_predictions(split.train, segments, SEGMENT_COLUMNS, k)
    eval_model = pd.read_parquet(paths.path(personal_eval(model)))
    eval_candidates = candidates(split.matrix, split.users, eval_model, pop_eval)
    learned = None
    if bc.learn_caps:
        learned = learn_caps(
            split.users, eval_candidates, bc.priority, bc.learn_caps, split.truth, k
        )
        caps = {**caps, **learned.caps}
        lists = learned.lists
    else:
        lists = blend(split.users, eval_candidates, bc.priority, caps, k)
    write_artifact(paths, personal_eval("blend"), lists)
    scored = score_lists(lists, split, k=k, catalogue_size=inputs.catalogue_size, model="blend")
    users = inputs.full.users
    log.info(
        "blend: hold-out lists scored, map@%d %.4f (%.0f s); gathering the candidates of all "
        "%d users",
        k,
        _metric(scored, "blend", "map"),
        time.perf_counter() - started,
        len(users),
    )
    popular = pd.read_parquet(paths.path(POPULAR))
    user_frame = pd.read_parquet(paths.path(USERS), columns=["user_id", *SEGMENT_COLUMNS])
    user_frame = pd.DataFrame({"user_id": users}).merge(user_frame, on="user_id", how="left")
    pop_full = segment_popular_lists(user_frame, popular, k, unknown)
    full_model = pd.read_parquet(paths.path(personal_lists(model)))
    full_candidates = candidates(inputs.full, users, full_model, pop_full)
    log.info(
        "blend: candidates of %d users gathered (%.0f s); blending with caps %s",
        len(users),
        time.perf_counter() - started,
        caps,
    )
    full = blend(users, full_candidates, bc.priority, caps, k)
    write_artifact(paths, personal_lists("blend"), full)
    timings = {"blend": round(time.perf_counter() - started, 2)}
    shares = {
        str(s): round(float(v), 4) for s, v in lists["source"].value_counts(normalize=True).items()
    }
    log.info(
        "blend (model source %s): map@%d %.4f; sources %s",
        model,
        k,
        _metric(scored, "blend", "map"),
        shares,
    )
    return {
        **save_metrics(paths, "blend", [scored], timings),
        "model_source": model,
        "source_shares": shares,
        # The caps the published lists use; when learned, every grid point's mean score.
        "caps": {str(name): int(cap) for name, cap in caps.items()},
        "caps_learned": learned is not None,
        "grid_scores": learned.grid_scores if learned is not None else {},
    }


# Baselines that show a user's own items, and what stands in for them when models may not.
KNOWN_ITEM_BASELINES = {"repurchase", "source_own", "popularity", "segment_popularity"}


def gate_baselines(config: RetailerConfig) -> list[str]:
    """The baselines the bar is drawn from: every configured one when models may show known
    items, else only those that leave them out too (and popularity without known items)."""
    baselines = list(config.personal.gate.baselines)
    if config.personal.exclude_known:
        baselines = [b for b in baselines if b not in KNOWN_ITEM_BASELINES]
        if "popularity_unseen" not in baselines:
            baselines.append("popularity_unseen")
    return baselines


def gate_stage(config: RetailerConfig, paths: RunPaths) -> dict:
    """Which candidates beat the run's best baseline by the margin, and which list serves
    existing users: the best candidate that passed, else that best baseline itself."""
    gate = config.personal.gate
    k = config.personal.top_k
    metrics = _read_metrics(paths)
    at_k = metrics[(metrics["metric"] == gate.metric) & (metrics["k"] == k)]
    names = gate_baselines(config)
    baselines = at_k[at_k["model"].isin(names)]
    if baselines.empty:
        raise FashionRecsError(
            f"quality gate: no baseline {gate.metric}@{k} in this run's metrics (looked for "
            f"{names}); the evaluate and personal_baselines steps must run before the gate"
        )
    # Ties go to the baseline listed first in config (the simpler list).
    order = {m: i for i, m in enumerate(names)}
    best = baselines.assign(_order=baselines["model"].map(order)).sort_values(
        ["value", "_order"], ascending=[False, True]
    )
    best_baseline = str(best["model"].iloc[0])
    reference = float(best["value"].iloc[0])
    required = reference * (1 + gate.margin)
    candidates = at_k[at_k["model"].isin(gate.candidates)].assign(role="candidate")
    rows = pd.concat([candidates, baselines.assign(role="baseline")], ignore_index=True)
    rows["baseline"] = best_baseline
    rows["baseline_value"] = reference
    rows["required_value"] = required
    rows["passed"] = (rows["role"] == "candidate") & (rows["value"] > required)
    # Ties go to the candidate listed first (the blend, listed last, only wins by adding value).
    rows["_order"] = [
        gate.candidates.index(m) if m in gate.candidates else len(gate.candidates)
        for m in rows["model"]
    ]
    passed = rows[rows["passed"]].sort_values(["value", "_order"], ascending=[False, True])
    chosen = str(passed["model"].iloc[0]) if len(passed) else None
    served = chosen or best_baseline
    rows["chosen"] = (rows["model"] == served) & (
        rows["role"] == ("candidate" if chosen else "baseline")
    )
    table = rows[
        [
            "model",
            "role",
            "metric",
            "k",
            "value",
            "baseline",
            "baseline_value",
            "required_value",
            "passed",
            "chosen",
        ]
    ].sort_values(["role", "model"], ascending=[False, True])
    path = write_artifact(paths, PERSONAL_GATE, table.reset_index(drop=True))
    if chosen is None:
        log.warning(
            "quality gate: no candidate beats the best baseline %s (%s@%d %.4f) by %.0f%%; "
            "existing users get %s this run",
            best_baseline,
            gate.metric,
            k,
            reference,
            100 * gate.margin,
            best_baseline,
        )
    else:
        log.info(
            "quality gate: %s serves existing users (%s@%d %.4f vs best baseline %s %.4f)",
            chosen,
            gate.metric,
            k,
            float(passed["value"].iloc[0]),
            best_baseline,
            reference,
        )
    return {
        "gate": str(path),
        "baseline": best_baseline,
        "baseline_value": reference,
        "chosen": chosen,
        "served": served,
        "fallback": chosen is None,
        "required": required,
        "passed": sorted(passed["model"]),
        "failed": sorted(rows.loc[(rows["role"] == "candidate") & ~rows["passed"], "model"]),
    }


def routing_stage(
    config: RetailerConfig,
    paths: RunPaths,
    interactions_path: Path,
    gate_summary: dict[str, Any],
    fbt_path: Path | None,
) -> dict:
    """Materialise the seed's process_user for every user the run knows."""
    from fashion_recs.personal.routing import (
        item_candidates,
        new_user_lists,
        own_item_lists,
        segment_popular_lists,
        top_up,
    )

    cfg = config.personal
    k = cfg.top_k
    unknown = config.demographics.unknown_label
    started = time.perf_counter()
    interactions = pl.read_parquet(interactions_path, columns=["user_id", "product_id", "event_ts"])
    users = pd.read_parquet(paths.path(USERS), columns=["user_id", *SEGMENT_COLUMNS])
    popular = pd.read_parquet(paths.path(POPULAR))

    sources = {"item_knn": pd.read_parquet(paths.path(ITEM_KNN_SIMILAR))}
    if fbt_path is not None and fbt_path.exists():
        fbt = pd.read_parquet(fbt_path, columns=["product_id", "rank", "recommended_product_id"])
        sources["fbt"] = fbt.rename(columns={"recommended_product_id": "candidate_product_id"})
    similar = _default_similar(config, paths)
    sources["similar"] = similar.rename(columns={"similar_product_id": "candidate_product_id"})
    candidates = item_candidates(
        sources, ["item_knn", "fbt", "similar"], cfg.routing.item_candidates_per_product
    )

    log.info(
        "routing: %d interactions and the item candidates read (%.1f s); counting each "
        "user's products",
        interactions.height,
        time.perf_counter() - started,
    )
    # Each user's distinct products and when each was last touched (polars on every core:
    # pandas' groupby over string keys took 20 s at 10x the demo, 68 s at 30x).
    last = interactions.group_by("user_id", "product_id").agg(pl.col("event_ts").max())
    del interactions
    n_items = last.group_by("user_id").len("n").to_pandas().set_index("user_id")["n"]
    all_users = pd.Index(sorted(set(users["user_id"]) | set(n_items.index)), name="user_id")
    frame = pd.DataFrame({"user_id": all_users}).merge(users, on="user_id", how="left")
    frame["n_items"] = n_items.reindex(all_users).fillna(0).astype(np.int64).to_numpy()
    enough = frame["n_items"] >= cfg.routing.min_items_for_model
    frame["route"] = np.where(
        enough, "existing", np.where(frame["n_items"] > 0, "new_with_events", "new_without_events")
    )
    fallback = segment_popular_lists(frame, popular, k, unknown)

    served = gate_summary.get("served") or gate_summary.get("chosen") or "segment_popularity"
    existing = frame.loc[frame["route"] == "existing", "user_id"]
    log.info(
        "routing: %d users routed (%.1f s); reading %s's lists for %d existing users",
        len(frame),
        time.perf_counter() - started,
        served,
        len(existing),
    )
    model_lists = _served_lists(config, paths, served, frame, popular)
    model_lists = model_lists[model_lists["user_id"].isin(existing)]
    # A model that cannot serve some users (no neighbours, too few items) leaves their lists
    # short: the run's best baseline fills them, then segment popularity.
    baseline = gate_summary.get("baseline")
    if baseline and baseline != served:
        filler = _served_lists(config, paths, baseline, frame, popular)
        model_lists = top_up(model_lists, filler[filler["user_id"].isin(existing)], k)
    log.info(
        "routing: %d existing users' lists from %s assembled; %d new users with events next",
        len(existing),
        served,
        int((frame["route"] == "new_with_events").sum()),
    )
    new_users = frame.loc[frame["route"] == "new_with_events", "user_id"]
    touched = recency_order(last.filter(pl.col("user_id").is_in(new_users.tolist())))
    item_based = new_user_lists(touched, candidates, k)
    if not cfg.exclude_known:
        # Known items allowed: what the shopper touched comes first, most recent first.
        item_based = top_up(own_item_lists(touched, k), item_based, k)
    lists = top_up(pd.concat([model_lists[fallback.columns], item_based]), fallback, k)

    main = lists[lists["rank"] == 1].set_index("user_id")["strategy"]
    frame["strategy"] = main.reindex(frame["user_id"]).fillna("none").to_numpy()
    routes = frame[["user_id", "route", "strategy", "n_items", *SEGMENT_COLUMNS]]
    write_artifact(
        paths, USER_RECOMMENDATIONS, lists[["user_id", "rank", "product_id", "score", "strategy"]]
    )
    write_artifact(paths, USER_ROUTES, routes)
    write_artifact(paths, ITEM_CANDIDATES, candidates)
    by_route = {str(r): int(n) for r, n in frame["route"].value_counts().sort_index().items()}
    # Counted per strategy, then per its model: splitting every row's string took seconds.
    per_strategy = lists["strategy"].value_counts()
    by_model = per_strategy.groupby(per_strategy.index.str.split(":").str[0]).sum()
    strategies = {str(s): int(n) for s, n in by_model.sort_values(ascending=False).items()}
    log.info("routing: users by route %s; rows by strategy %s", by_route, strategies)
    return {
        "user_recommendations": str(paths.path(USER_RECOMMENDATIONS)),
        "user_routes": str(paths.path(USER_ROUTES)),
        "item_candidates": str(paths.path(ITEM_CANDIDATES)),
        "existing_users_served_by": served
        if gate_summary.get("chosen")
        else f"{served} (the best baseline: no candidate passed the gate)",
        "routes": by_route,
        "strategies": strategies,
        "rows": len(lists),
    }


def recency_order(last: pl.DataFrame) -> pd.DataFrame:
    """Users' distinct products (user_id, product_id, event_ts of the last touch), most
    recent first, numbered from 1 per user in `recency` (ties by product id)."""
    ordered = last.sort(["user_id", "event_ts", "product_id"], descending=[False, True, False])
    return ordered.with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user_id").alias("recency")
    ).to_pandas()


def _served_lists(
    config: RetailerConfig,
    paths: RunPaths,
    model: str,
    users: pd.DataFrame,
    popular: pd.DataFrame,
) -> pd.DataFrame:
    """One model's or baseline's published lists for `users` (LIST_COLUMNS), strategy
    `<model>` or `<model>:<source>`; the popularity baselines come from popular_products."""
    from fashion_recs.personal.routing import LIST_COLUMNS, segment_popular_lists

    k = config.personal.top_k
    unknown = config.demographics.unknown_label
    if model == "segment_popularity":
        return segment_popular_lists(users, popular, k, unknown)
    if model == "popularity":
        overall = popular[popular["segment_type"] == "overall"].nsmallest(k, "rank")
        lists = users[["user_id"]].merge(
            overall[["rank", "product_id", "score"]].astype({"rank": np.int32}), how="cross"
        )
        return lists.assign(strategy="popular_overall")[LIST_COLUMNS]
    lists = pd.read_parquet(paths.path(personal_lists(model)))
    source = lists["source"]
    strategy = np.where(source.notna(), model + ":" + source.fillna("").astype(str), model)
    return lists.assign(strategy=strategy)[LIST_COLUMNS]
