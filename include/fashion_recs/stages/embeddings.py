"""Similar products from the seed's image/text encoders, and fused models.

For each configured encoder whose weights are available (the rest are skipped, each with its
reason in the summary), product vectors are built from the product's first image and/or its
combined text through the embedding cache, so only new or changed content is embedded:

- image + text in one space (CLIP, FashionCLIP, ALIGN): the image vector; the text vector
  when the product has no usable image (text-only fallback);
- image only (MobileNetV2): products without a usable image get no vector and no list here;
  the fused TF-IDF + MobileNet model still covers them through its text block;
- two spaces (RoBERTa + EfficientNet): the normalised text and image vectors concatenated,
  the image block zero when there is no usable image.

Unusable images are quarantined once per run (`09_quarantine/images_quarantine.parquet`)
with the reason. Each model's vectors are also written (`05_model_input/embeddings_<model>`)
for the personalisation models. Metrics per model: planted look-alikes, consistency, and
robustness (top-k overlap when the product's image is cropped, flipped or colour-jittered;
when its text is noised).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, write_artifact, write_table
from fashion_recs.config import EncoderConfig, RetailerConfig
from fashion_recs.contract import Artifact, quarantine, similar_metrics, similar_products
from fashion_recs.quality.quarantine import quarantine_frame, write_quarantine
from fashion_recs.similar.cache import EmbeddingCache, text_hash
from fashion_recs.similar.evaluate import (
    metric_rows,
    overlap_at_k,
    similar_lists,
)
from fashion_recs.similar.fusion import fuse
from fashion_recs.similar.images import decode_image, fetch_image
from fashion_recs.similar.perturb import PERTURBATIONS, perturb
from fashion_recs.similar.retrieval import Neighbors, exact_neighbors, recall_at_k
from fashion_recs.similar.text import combined_text, noised_text
from fashion_recs.stages.similar import (
    TEXT_MODEL,
    fit_configured_text_model,
    grouped_neighbors,
    list_quality,
    read_catalogue,
    retrieval_method,
    sample_rows,
)

log = logging.getLogger(__name__)

IMAGES_STAGE = "images"


def _joint(name: str) -> bool:
    """Image and text vectors in one space (CLIP-like): either can stand for the product."""
    from fashion_recs.similar.encoders import get_spec

    return get_spec(name).joint_space


def embeddings_artifact(model: str) -> Artifact:
    return Artifact(f"embeddings_{model}", "05_model_input", None)


def _first_images(products: Path) -> pd.Series:
    images = pq.read_table(products, columns=["product_id", "images"]).to_pandas()
    first = images["images"].map(lambda v: v[0] if v is not None and len(v) else None)
    return pd.Series(first.to_numpy(), index=images["product_id"].to_numpy())


def fetch_catalogue_images(
    config: RetailerConfig,
    paths: RunPaths,
    catalogue: pd.DataFrame,
    products: Path,
    base_dir: Path,
) -> tuple[dict[int, Path], dict[str, Any]]:
    """Row -> cached image path for every product with a usable first image; quarantine the
    rest (products without any image are not errors and are only counted)."""
    cfg = config.similar.images
    cache = config.data_path(cfg.cache_dir)
    uris = _first_images(products).reindex(catalogue["product_id"]).to_numpy()
    usable: dict[int, Path] = {}
    bad = []
    for row, uri in enumerate(uris):
        if uri is None or (isinstance(uri, float) and np.isnan(uri)):
            continue
        got = fetch_image(
            str(uri),
            base_dir,
            cache,
            timeout=cfg.timeout_s,
            retries=cfg.retries,
            max_bytes=cfg.max_bytes,
        )
        reason, detail = got.reason, got.detail
        if got.path is not None:
            try:
                decode_image(got.path)
            except ValueError as exc:
                reason, detail = str(exc).split(":", 1)[0], str(exc)
        if reason:
            bad.append(
                {
                    "product_id": catalogue["product_id"].iloc[row],
                    "uri": str(uri),
                    "reason": reason,
                    "detail": detail[:300],
                }
            )
        else:
            usable[row] = got.path
    frame = pd.DataFrame(bad, columns=["product_id", "uri", "reason", "detail"])
    tagged = quarantine_frame(frame.drop(columns=["reason"]), frame["reason"], "images")
    path = paths.path(quarantine(IMAGES_STAGE))
    n_bad, reasons = write_quarantine([tagged], path)
    no_image = int(sum(1 for u in uris if u is None or (isinstance(u, float) and np.isnan(u))))
    summary = {
        "with_image": len(usable),
        "quarantined": n_bad,
        "reasons": reasons,
        "no_image": no_image,
        "quarantine": str(path),
    }
    log.info("images: %s", summary)
    return usable, summary


def _image_hashes(images: dict[int, Path], rows: list[int]) -> list[str]:
    return [images[r].name for r in rows]  # the cache file is named by its SHA-256


def _embed_images(encoder: Any, paths: list[Path]) -> np.ndarray:
    return encoder.embed_images([decode_image(p) for p in paths])


def product_vectors(
    encoder: Any,
    name: str,
    texts: list[str],
    images: dict[int, Path],
    cache_root: Path,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(vectors, has_vector mask, cache stats) for every product (see module docstring)."""
    n = len(texts)
    modalities = set(encoder.modalities)
    image_rows = sorted(images) if "image" in modalities else []
    stats: dict[str, int] = {}
    image_vectors = text_vectors = None
    if image_rows:
        cache = EmbeddingCache(cache_root, name, encoder.revision, "image")
        files = [images[r] for r in image_rows]
        image_vectors = cache.get_or_compute(
            _image_hashes(images, image_rows),
            lambda pos: _embed_images(encoder, [files[p] for p in pos]),
        )
        cache.save()
        stats.update(image_hits=cache.stats.hits, image_embedded=cache.stats.computed)
    text_rows: list[int] = []
    if "text" in modalities:
        text_rows = [r for r in range(n) if r not in images] if _joint(name) else list(range(n))
        if "image" not in modalities:
            text_rows = list(range(n))
    if text_rows:
        cache = EmbeddingCache(cache_root, name, encoder.revision, "text")
        asked = [texts[r] for r in text_rows]
        text_vectors = cache.get_or_compute(
            [text_hash(t) for t in asked], lambda pos: encoder.embed_texts([asked[p] for p in pos])
        )
        cache.save()
        stats.update(text_hits=cache.stats.hits, text_embedded=cache.stats.computed)

    if _joint(name) or not ("image" in modalities and "text" in modalities):
        dim = (image_vectors if image_vectors is not None else text_vectors).shape[1]
        vectors = np.zeros((n, dim), dtype=np.float32)
        if image_vectors is not None:
            vectors[image_rows] = image_vectors
        if text_vectors is not None:
            vectors[text_rows] = text_vectors
    else:  # two spaces side by side; a missing image leaves its block zero
        d_text = text_vectors.shape[1]
        d_image = image_vectors.shape[1] if image_vectors is not None else 0
        vectors = np.zeros((n, d_text + d_image), dtype=np.float32)
        vectors[text_rows, :d_text] = text_vectors
        if image_vectors is not None:
            vectors[image_rows, d_text:] = image_vectors
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    has = np.zeros(n, dtype=bool)
    has[image_rows] = True
    has[text_rows] = True
    return vectors, has, stats


def _subset_neighbors(
    config: RetailerConfig, vectors: np.ndarray, has: np.ndarray, k: int
) -> Neighbors:
    """Neighbours among the products that have a vector, mapped to catalogue rows."""
    rows = np.flatnonzero(has)
    n = len(has)
    subset = vectors[rows]
    part = grouped_neighbors(config, subset, None, retrieval_method(config, subset), k)
    indices = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    indices[rows] = np.where(part.indices >= 0, rows[np.maximum(part.indices, 0)], -1)
    scores[rows] = part.scores
    info = dict(part.info)
    if part.method != "exact" and len(rows) > 1:  # how far the served lists are from exact
        sample = sample_rows(len(rows), config.similar.retrieval.recall_sample, config.seed)
        truth = exact_neighbors(subset, k, rows=sample)
        info["recall_vs_exact"] = recall_at_k(part, truth, k, sample)
        info["recall_sample"] = len(sample)
    return Neighbors(indices, scores, part.method, part.seconds, info)


def _evaluate(
    config: RetailerConfig, catalogue: pd.DataFrame, neighbors: Neighbors, k: int
) -> dict[str, tuple[float, int | None, int]]:
    """The shared list quality, plus the served method's recall against exact search."""
    values = list_quality(config, catalogue, neighbors, k)
    if "recall_vs_exact" in neighbors.info:
        values[f"recall_vs_exact_{neighbors.method}"] = (
            neighbors.info["recall_vs_exact"],
            k,
            neighbors.info["recall_sample"],
        )
    return values


def _robustness(
    config: RetailerConfig,
    encoder: Any,
    name: str,
    vectors: np.ndarray,
    has: np.ndarray,
    neighbors: Neighbors,
    images: dict[int, Path],
    texts: list[str],
    k: int,
) -> dict[str, tuple[float, int | None, int]]:
    """Overlap of clean and perturbed top-k, asked against the clean catalogue vectors."""
    rng = np.random.default_rng(config.seed)
    values: dict[str, tuple[float, int | None, int]] = {}
    base_rows = np.flatnonzero(has)
    base = vectors[base_rows]
    position = {r: i for i, r in enumerate(base_rows.tolist())}
    size = config.similar.image_robustness_sample

    def overlap(sample: list[int], queries: np.ndarray) -> float:
        local = np.asarray([position[r] for r in sample])
        found = exact_neighbors(base, k, rows=local, queries=queries)
        mapped = np.full((len(has), k), -1, dtype=np.int64)
        mapped[sample] = np.where(
            found.indices[local] >= 0, base_rows[np.maximum(found.indices[local], 0)], -1
        )
        return overlap_at_k(neighbors, Neighbors(mapped, neighbors.scores), np.asarray(sample), k)

    modalities = set(encoder.modalities)
    with_image = [r for r in sorted(images) if has[r]]
    if "image" in modalities and with_image and name != "roberta_efficientnet":
        sample = sorted(rng.choice(with_image, min(size, len(with_image)), replace=False).tolist())
        for kind in PERTURBATIONS:
            changed = [perturb(decode_image(images[r]), kind, config.seed + r) for r in sample]
            queries = encoder.embed_images(changed)
            values[f"robustness_image_{kind}_overlap"] = (overlap(sample, queries), k, len(sample))
    if "text" in modalities and (not _joint(name) or not with_image):
        sample = sorted(rng.choice(base_rows, min(size, len(base_rows)), replace=False).tolist())
        noisy = noised_text(
            pd.Series([texts[r] for r in sample]), config.similar.text_noise_rate, config.seed
        ).tolist()
        queries = encoder.embed_texts(noisy)
        if name == "roberta_efficientnet":  # noised text beside the product's own image
            d_text = queries.shape[1]
            text_norm = np.linalg.norm(vectors[sample, :d_text], axis=1, keepdims=True)
            queries = np.hstack([queries * text_norm, vectors[sample, d_text:]])
        values["robustness_text_noise_overlap"] = (overlap(sample, queries), k, len(sample))
    return values


def _write_model(
    config: RetailerConfig,
    paths: RunPaths,
    name: str,
    catalogue: pd.DataFrame,
    neighbors: Neighbors,
    values: dict[str, tuple[float, int | None, int]],
) -> dict[str, Any]:
    ids = catalogue["product_id"].to_numpy(dtype=object)
    lists = similar_lists(neighbors, ids, name, config.similar.default_model)
    write_artifact(paths, similar_products(name), lists)
    write_artifact(paths, similar_metrics(name), metric_rows(name, values))
    rounded = {m + (f"@{v[1]}" if v[1] else ""): round(v[0], 5) for m, v in values.items()}
    log.info("similar %s metrics: %s", name, rounded)
    return rounded


def _write_vectors(
    paths: RunPaths,
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    has: np.ndarray,
    source: str,
    revision: str,
) -> None:
    """Product vectors with the model, its source and revision they came from."""
    rows = np.flatnonzero(has)
    table = pa.table(
        {
            "product_id": pa.array(ids[rows].tolist(), pa.string()),
            "model": pa.array([name] * len(rows), pa.string()),
            "source": pa.array([source] * len(rows), pa.string()),
            "revision": pa.array([revision] * len(rows), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors[rows].ravel().astype(np.float32)), vectors.shape[1]
            ),
        }
    )
    write_table(table, paths.path(embeddings_artifact(name)))


def _fusion_revision(built: dict[str, dict[str, Any]], blocks: dict[str, float]) -> str:
    """The fused vectors' provenance: each block's revision and weight."""
    return "; ".join(
        f"{b}={built.get(b, {}).get('revision', 'fitted')}*{w:g}" for b, w in blocks.items()
    )


def encoders_stage(
    config: RetailerConfig, paths: RunPaths, products: Path, base_dir: Path
) -> dict[str, Any]:
    """Build every available encoder's and fused model's lists (see module docstring)."""
    from fashion_recs.similar.encoders import encoder_available, get_spec, load_encoder

    cfg = config.similar
    k = cfg.top_k
    catalogue = read_catalogue(products)
    ids = catalogue["product_id"].to_numpy(dtype=object)
    texts = combined_text(catalogue).tolist()
    cache_root = config.data_path(cfg.embedding_cache_dir)
    built: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    blocks: dict[str, np.ndarray] = {}
    ready = []
    for spec in cfg.encoders:
        reason = "disabled in config" if not spec.enabled else None
        reason = reason or _unavailable(spec, cfg.allow_downloads, encoder_available)
        if reason:
            skipped[spec.name] = reason
            log.warning("similar %s skipped: %s", spec.name, reason)
        else:
            ready.append(spec)
    # Images are fetched only when an available encoder will look at them.
    images: dict[int, Path] = {}
    image_summary: dict[str, Any] = {"fetched": False}
    if any("image" in get_spec(spec.name).modalities for spec in ready):
        images, image_summary = fetch_catalogue_images(config, paths, catalogue, products, base_dir)
    else:
        write_quarantine([], paths.path(quarantine(IMAGES_STAGE)))
    for spec in ready:
        encoder = load_encoder(
            spec.name,
            spec.source,
            batch_size=cfg.batch_size,
            local_files_only=not cfg.allow_downloads,
        )
        vectors, has, stats = product_vectors(encoder, spec.name, texts, images, cache_root)
        neighbors = _subset_neighbors(config, vectors, has, k)
        values = _evaluate(config, catalogue, neighbors, k)
        values.update(
            _robustness(config, encoder, spec.name, vectors, has, neighbors, images, texts, k)
        )
        _write_vectors(paths, spec.name, ids, vectors, has, str(encoder.model_id), encoder.revision)
        built[spec.name] = {
            "model_id": str(encoder.model_id),
            "revision": encoder.revision,
            "dim": int(vectors.shape[1]),
            "products": int(has.sum()),
            "cache": stats,
            "values": _write_model(config, paths, spec.name, catalogue, neighbors, values),
        }
        blocks[spec.name] = np.where(has[:, None], vectors, 0.0)
    for fusion in cfg.fusions:
        missing = [b for b in fusion.blocks if b not in blocks and b != TEXT_MODEL]
        if missing:
            skipped[fusion.name] = f"needs {', '.join(missing)}, not built in this run"
            continue
        if TEXT_MODEL in fusion.blocks and TEXT_MODEL not in blocks:
            model = fit_configured_text_model(catalogue, cfg.text)
            blocks[TEXT_MODEL] = model.transform(catalogue).toarray()
        fused = fuse([(blocks[b], w) for b, w in fusion.blocks.items()])
        has = np.linalg.norm(fused, axis=1) > 0
        neighbors = _subset_neighbors(config, fused, has, k)
        values = _evaluate(config, catalogue, neighbors, k)
        _write_vectors(
            paths, fusion.name, ids, fused, has, "fusion", _fusion_revision(built, fusion.blocks)
        )
        built[fusion.name] = {
            "blocks": dict(fusion.blocks),
            "dim": int(fused.shape[1]),
            "products": int(has.sum()),
            "values": _write_model(config, paths, fusion.name, catalogue, neighbors, values),
        }
    if skipped:
        log.warning("similar: skipped %s", skipped)
    return {"models": sorted(built), "built": built, "skipped": skipped, "images": image_summary}


def _unavailable(spec: EncoderConfig, allow_downloads: bool, available: Any) -> str | None:
    if allow_downloads:
        return None
    ok, why = available(spec.name, spec.source)
    return None if ok else why
