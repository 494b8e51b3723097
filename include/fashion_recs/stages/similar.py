"""Similar products: each model's neighbour lists, recall against exact search, evaluation.

`text_model_stage` is the seed's TF-IDF + one-hot model. Its block weights are learned on
the run's similar clicks and variant groups when those beat the configured weights on
held-out pairs (`similar.weights`). The retrieval method comes from config; whatever serves
the lists, recall@k against exact search is measured on a sample and stored with the run's
metrics, together with the planted look-alike precision, department/colour consistency and
robustness to noised text.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.config import RetailerConfig, TextModelConfig
from fashion_recs.contract import similar_metrics, similar_products
from fashion_recs.similar.evaluate import (
    CONSISTENCY_COLUMNS,
    consistency_scores,
    lookalike_scores,
    metric_rows,
    overlap_at_k,
    similar_lists,
)
from fashion_recs.similar.retrieval import (
    AnnoyParams,
    IvfParams,
    Neighbors,
    annoy_neighbors,
    build_annoy,
    exact_neighbors,
    ivf_neighbors,
    recall_at_k,
    save_annoy,
)
from fashion_recs.similar.text import (
    PRODUCT_TYPE,
    TextModel,
    combined_text,
    fit_text_model,
    noised_text,
    product_type,
)
from fashion_recs.similar.weights import (
    TEXT_BLOCK,
    Blocks,
    WeightChoice,
    behaviour_pairs,
    learn_weights,
    variant_pairs,
)

log = logging.getLogger(__name__)

TEXT_MODEL = "text_tfidf"
PRODUCT_COLUMNS = [
    "product_id",
    "title",
    "target_audience",
    "color",
    "department",
    "original_description",
    "group_key",
]
# Annoy needs dense vectors; above this many bytes the audit is skipped, not the run.
ANNOY_AUDIT_MAX_BYTES = 1 << 30
# Sparse vectors are made dense for an IVF index only up to this size.
DENSE_MAX_BYTES = 1 << 30


def retrieval_method(config: RetailerConfig, vectors: np.ndarray | sp.spmatrix) -> str:
    """The configured method; `auto` is exact up to `exact_max_items` products, else a faiss
    IVF index (its recall against exact is measured on a sample and kept in the metrics).

    Exact search over n products costs n^2: at 50,000 products the sparse text vectors took
    7 s exact against 1.5 s through IVF (recall@12 0.99). Sparse vectors are made dense for
    the index, so a catalogue whose dense vectors would pass `DENSE_MAX_BYTES` stays exact.
    """
    method = config.similar.retrieval.method
    if method != "auto":
        return method
    n, dim = vectors.shape
    if n <= config.similar.retrieval.exact_max_items:
        return "exact"
    if sp.issparse(vectors) and n * dim * 4 > DENSE_MAX_BYTES:
        log.info(
            "similar: exact search over %d sparse vectors; dense ones (%d dims) would pass "
            "%d bytes",
            n,
            dim,
            DENSE_MAX_BYTES,
        )
        return "exact"
    return "faiss_ivf"


def _dense(vectors: np.ndarray | sp.spmatrix) -> np.ndarray:
    return vectors.toarray() if sp.issparse(vectors) else np.asarray(vectors, dtype=np.float32)


def neighbors_for(
    config: RetailerConfig, vectors: np.ndarray | sp.spmatrix, method: str, k: int, seed: int
) -> Neighbors:
    """Top-k neighbours of every row with the given method."""
    r = config.similar.retrieval
    if method == "exact":
        return exact_neighbors(vectors, k)
    if method == "annoy":
        return annoy_neighbors(
            _dense(vectors), k, AnnoyParams(r.annoy_trees, r.annoy_search_k, seed)
        )
    return ivf_neighbors(_dense(vectors), k, IvfParams(r.ivf_nlist, r.ivf_nprobe, seed))


def grouped_neighbors(
    config: RetailerConfig,
    vectors: np.ndarray | sp.spmatrix,
    groups: np.ndarray | None,
    method: str,
    k: int,
) -> Neighbors:
    """Neighbours within each group (same audience), mapped back to catalogue rows."""
    if groups is None:
        return neighbors_for(config, vectors, method, k, config.seed)
    n = vectors.shape[0]
    indices = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    seconds, info = 0.0, {}
    for value in np.unique(groups):
        rows = np.flatnonzero(groups == value)
        part = neighbors_for(config, vectors[rows], method, k, config.seed)
        mapped = np.where(part.indices >= 0, rows[np.maximum(part.indices, 0)], -1)
        indices[rows], scores[rows] = mapped, part.scores
        seconds += part.seconds
        info = part.info
    return Neighbors(indices, scores, method, seconds, info)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def list_quality(
    config: RetailerConfig, catalogue: pd.DataFrame, neighbors: Neighbors, k: int
) -> dict[str, tuple[float, int | None, int]]:
    """Consistency on every attribute the catalogue has (department, colour, audience,
    variant group, the derived product type and extra attributes), and planted look-alikes
    when the truth is known."""
    text = config.similar.text
    frame = catalogue.copy()
    columns = [c for c in CONSISTENCY_COLUMNS if c in frame]
    if text.product_type != "none":
        frame[PRODUCT_TYPE] = product_type(frame["title"], text.product_type)
        columns.append(PRODUCT_TYPE)
    columns += [c for c in text.extra_attributes if c in frame and c not in columns]
    values = consistency_scores(neighbors, frame, k, columns)
    truth_dir = config.evaluation.truth_dir
    lookalikes = config.resolve(truth_dir) / "lookalikes.parquet" if truth_dir else None
    if lookalikes is not None and lookalikes.exists():
        ids = catalogue["product_id"].to_numpy(dtype=object)
        values.update(lookalike_scores(neighbors, ids, pd.read_parquet(lookalikes), k))
    return values


def read_catalogue(products: Path, extra: list[str] | None = None) -> pd.DataFrame:
    names = set(pq.read_schema(products).names)
    wanted = [c for c in PRODUCT_COLUMNS if c in names]
    missing = [c for c in extra or [] if c not in names]
    if missing:
        raise ValueError(
            f"similar.text.extra_attributes names {missing}, not columns of {products} "
            f"(it has {sorted(names)})"
        )
    wanted += [c for c in extra or [] if c not in wanted]
    frame = pq.read_table(products, columns=wanted).to_pandas()
    return frame.sort_values("product_id", kind="stable").reset_index(drop=True)


def fit_configured_text_model(catalogue: pd.DataFrame, text: TextModelConfig) -> TextModel:
    """The seed's TF-IDF + one-hot model fitted with the configured settings: the same model
    for the similar-products lists, the fused encoders and the users' text profiles."""
    return fit_text_model(
        catalogue,
        max_features=text.max_features,
        text_weight=text.text_weight,
        attribute_weight=text.attribute_weight,
        ngram_max=text.ngram_max,
        attribute_weights=text.attribute_weights,
        product_type=text.product_type,
        extra_attributes=text.extra_attributes,
    )


INTERACTION_COLUMNS = ["user_id", "product_id", "event_ts", "category"]


def choose_weights(
    config: RetailerConfig,
    catalogue: pd.DataFrame,
    model: TextModel,
    groups: np.ndarray | None,
    interactions: Path | None,
) -> WeightChoice:
    """The block weights the lists use: learned on the run's signals when they beat the
    configured ones on held-out pairs, else the configured (with the reason)."""
    cfg = config.similar.text.learn_weights
    configured = {TEXT_BLOCK: model.text_weight, **model.column_weights}
    if not cfg.enabled:
        return WeightChoice("configured", "similar.text.learn_weights.enabled is false", configured)
    signals: dict[str, np.ndarray] = {}
    ids = catalogue["product_id"].to_numpy(dtype=object)
    if {"similar_click", "co_view"} & set(cfg.signals):
        if interactions is not None and interactions.exists():
            # Only the signals' events: at 20M interactions reading them all took seconds.
            categories = [
                c
                for signal, c in (
                    ("similar_click", cfg.click_category),
                    ("co_view", cfg.view_category),
                )
                if signal in cfg.signals
            ]
            frame = pd.read_parquet(
                interactions, columns=INTERACTION_COLUMNS, filters=[("category", "in", categories)]
            )
            signals.update(behaviour_pairs(frame, ids, cfg))
            log.info(
                "similar weights: %d %s events read; pairs %s",
                len(frame),
                "/".join(categories),
                {s: len(p) for s, p in signals.items()},
            )
        else:
            log.info("similar weights: no interactions artifact given; no clicks to learn from")
            empty = np.zeros((0, 2), dtype=np.int64)
            signals.update({s: empty for s in cfg.signals if s != "variant_group"})
    if "variant_group" in cfg.signals and "group_key" in catalogue:
        signals["variant_group"] = variant_pairs(catalogue["group_key"].to_numpy(dtype=object))
    blocks = Blocks(
        model.text_block(catalogue),
        model.attribute_codes(catalogue),
        None if groups is None else pd.factorize(groups)[0],
    )
    return learn_weights(blocks, configured, signals, cfg, config.similar.top_k, config.seed)


def text_model_stage(
    config: RetailerConfig, paths: RunPaths, products: Path, interactions: Path | None = None
) -> dict[str, Any]:
    """Neighbour lists and metrics of the TF-IDF + one-hot model. `interactions` (the run's
    weighted events) supplies similar clicks and co-views for learning the block weights;
    without it only variant groups can."""
    cfg = config.similar
    k = cfg.top_k
    started = time.perf_counter()
    catalogue = read_catalogue(products, cfg.text.extra_attributes)
    ids = catalogue["product_id"].to_numpy(dtype=object)
    model = fit_configured_text_model(catalogue, cfg.text)
    log.info(
        "similar %s: %d products read, text model fitted (%.1f s); choosing the block weights",
        TEXT_MODEL,
        len(ids),
        time.perf_counter() - started,
    )
    groups = (
        catalogue["target_audience"].astype("string").fillna("").to_numpy(dtype=object)
        if cfg.same_audience
        else None
    )
    choice = choose_weights(config, catalogue, model, groups, interactions)
    if choice.used == "learned":
        weights = choice.weights
        model = model.with_weights(
            weights[TEXT_BLOCK], {c: w for c, w in weights.items() if c != TEXT_BLOCK}
        )
    vectors = model.transform(catalogue)
    method = retrieval_method(config, vectors)
    neighbors = grouped_neighbors(config, vectors, groups, method, k)
    log.info(
        "similar %s: %d products, %d dims, %s in %.2f s",
        TEXT_MODEL,
        len(ids),
        model.dim,
        method,
        neighbors.seconds,
    )

    values: dict[str, tuple[float, int | None, int]] = {}
    sample = sample_rows(len(ids), cfg.retrieval.recall_sample, config.seed)
    truth = None
    if method != "exact" and groups is None:
        truth = exact_neighbors(vectors, k, rows=sample)
        values[f"recall_vs_exact_{method}"] = (
            recall_at_k(neighbors, truth, k, sample),
            k,
            len(sample),
        )
    if cfg.retrieval.audit_annoy and method != "annoy" and groups is None and len(ids) > 1:
        if vectors.shape[0] * vectors.shape[1] * 4 <= ANNOY_AUDIT_MAX_BYTES:
            r = cfg.retrieval
            params = AnnoyParams(r.annoy_trees, r.annoy_search_k, config.seed)
            dense = _dense(vectors)
            index = build_annoy(dense, params)
            # Recall is a mean over queries: the sample says it, the catalogue costs minutes.
            annoy = annoy_neighbors(dense, k, params, index, rows=sample)
            truth = truth if truth is not None else exact_neighbors(vectors, k, rows=sample)
            values["recall_vs_exact_annoy"] = (recall_at_k(annoy, truth, k, sample), k, len(sample))
            save_annoy(
                index,
                paths.file("06_models", "indexes", f"{TEXT_MODEL}.ann"),
                params,
                dense.shape[1],
                len(ids),
            )
        else:
            log.info(
                "annoy audit skipped: dense vectors would pass %d bytes", ANNOY_AUDIT_MAX_BYTES
            )

    values.update(list_quality(config, catalogue, neighbors, k))
    values.update(choice.metric_rows())
    noisy = model.transform(
        catalogue.iloc[sample],
        noised_text(combined_text(catalogue.iloc[sample]), cfg.text_noise_rate, config.seed),
    )
    perturbed = exact_neighbors(vectors, k, rows=sample, queries=noisy)
    clean = (
        neighbors
        if method == "exact" and groups is None
        else exact_neighbors(vectors, k, rows=sample)
    )
    values["robustness_text_noise_overlap"] = (
        overlap_at_k(clean, perturbed, sample, k),
        k,
        len(sample),
    )

    lists = similar_lists(neighbors, ids, TEXT_MODEL, cfg.default_model)
    path = write_artifact(paths, similar_products(TEXT_MODEL), lists)
    metrics = metric_rows(TEXT_MODEL, values)
    metrics_path = write_artifact(paths, similar_metrics(TEXT_MODEL), metrics)
    rounded = {f"{m}" + (f"@{v[1]}" if v[1] else ""): round(v[0], 5) for m, v in values.items()}
    log.info("similar %s metrics: %s", TEXT_MODEL, rounded)
    return {
        "model": TEXT_MODEL,
        "similar_products": str(path),
        "metrics": str(metrics_path),
        "method": method,
        "dim": model.dim,
        "products": len(ids),
        "weights": choice.summary(),
        "values": rounded,
    }
