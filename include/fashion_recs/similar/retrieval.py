"""Top-k nearest products by cosine: exact, Annoy (the seed's), and faiss IVF.

Every method takes L2-normalised row vectors and returns the same `Neighbors`: for each row,
up to k other rows (itself excluded) with their cosine, best first, padded with -1 / NaN when
fewer exist. Ties are broken by row index so the exact method is deterministic.

- `exact`: blocked matrix products with `torch.topk` selection (selection, not the product,
  is what dominates with `argpartition`); dense or sparse input. The ground truth.
- `annoy`: the seed's angular Annoy index. annoy 1.17.3 can return a single neighbour on some
  builds (spotify/annoy#679): every row's count is checked, short rows are asked again with a
  larger search_k and, if still short, filled from the exact method (and counted).
- `faiss_ivf`: an inverted-file index over k-means cells (inner product); `nprobe` cells are
  scanned per query. On clustered catalogues it reaches the exact lists at a fraction of the
  cost (bench/similar.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

METHODS = ("exact", "annoy", "faiss_ivf")
# Sparse vectors with at most this many columns are searched as dense ones.
DENSE_MAX_DIM = 1024
PROGRESS_EVERY_S = 10.0


@dataclass
class Neighbors:
    """`indices[i]` are row i's neighbours (best first, -1 = none), `scores[i]` their cosine."""

    indices: np.ndarray
    scores: np.ndarray
    method: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.nan, dtype=np.float32)


def exact_neighbors(
    vectors: np.ndarray | sp.spmatrix,
    k: int,
    block_rows: int = 2048,
    rows: np.ndarray | None = None,
    queries: np.ndarray | sp.spmatrix | None = None,
) -> Neighbors:
    """Exact top-k by cosine of normalised rows, in blocks of query rows (memory: block x n).

    `rows` limits the queries to those rows (all by default); the result still has one row
    per vector, the others left empty. `queries`, one vector per row of `rows` (or per
    vector), replaces the rows' own vectors as queries (row i still never finds itself):
    how the robustness checks ask with perturbed products against the clean catalogue.
    """
    import torch

    started = time.perf_counter()
    n = vectors.shape[0]
    kk = min(k, max(n - 1, 0))
    indices, scores = _empty(n, k)
    wanted = n if rows is None else len(rows)
    if kk == 0 or wanted == 0:
        return Neighbors(indices, scores, "exact", time.perf_counter() - started)
    # Few columns (TF-IDF over short titles plus one-hots): a dense BLAS product beats the
    # sparse one, whose output is dense anyway once attributes are shared (same scores).
    if sp.issparse(vectors) and vectors.shape[1] <= DENSE_MAX_DIM:
        vectors = vectors.toarray()
        if queries is not None and sp.issparse(queries):
            queries = queries.toarray()
    sparse = sp.issparse(vectors)
    if sparse:
        matrix = sp.csr_matrix(vectors, dtype=np.float32)
        right = matrix.T.tocsc()
    else:
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        right = torch.from_numpy(matrix).T
    if queries is None:
        asked = matrix
        position = queries_rows = np.arange(n) if rows is None else np.asarray(rows)
    else:
        asked = (
            sp.csr_matrix(queries, dtype=np.float32)
            if sparse
            else np.asarray(queries, dtype=np.float32)
        )
        queries_rows = np.arange(n) if rows is None else np.asarray(rows)
        position = np.arange(len(queries_rows))
    last_report = time.perf_counter()
    for lo in range(0, len(queries_rows), block_rows):
        if time.perf_counter() - last_report > PROGRESS_EVERY_S:
            last_report = time.perf_counter()
            rate = lo / (last_report - started)
            log.info(
                "exact neighbours: %d/%d products (%.0f/s, ~%.0f s left)",
                lo,
                len(queries_rows),
                rate,
                (len(queries_rows) - lo) / rate,
            )
        q = queries_rows[lo : lo + block_rows]
        take = position[lo : lo + block_rows]
        if sparse:
            block = torch.from_numpy(np.asarray((asked[take] @ right).todense(), np.float32))
        else:
            block = torch.from_numpy(np.ascontiguousarray(asked[take])) @ right
        block[torch.arange(len(q)), torch.from_numpy(q)] = -math.inf  # never yourself
        indices[q, :kk], scores[q, :kk] = select_top_k(block, kk)
    return Neighbors(indices, scores, "exact", time.perf_counter() - started)


def select_top_k(block: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of a score block (a torch tensor), best first.

    Equal scores come back in column order, so the result does not depend on how
    `torch.topk` happened to select them: exact retrieval and every recommender that ranks a
    dense block of scores share this one tie rule. Columns scored -inf (excluded) can still
    be returned when a row has fewer than k others; callers drop them.
    """
    import torch

    top_v, top_i = torch.topk(block, k, dim=1)
    values, cols = top_v.numpy(), top_i.numpy()
    order = np.lexsort((cols, -values), axis=1)
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(values, order, axis=1)


@dataclass
class AnnoyParams:
    n_trees: int = 20
    search_k: int = -1
    seed: int = 42


def build_annoy(vectors: np.ndarray, params: AnnoyParams) -> Any:
    """An angular Annoy index over the rows (item ids are the row numbers, contiguous)."""
    from annoy import AnnoyIndex

    index = AnnoyIndex(vectors.shape[1], "angular")
    index.set_seed(params.seed)
    for i, row in enumerate(np.asarray(vectors, dtype=np.float32)):
        index.add_item(i, row)
    index.build(params.n_trees, n_jobs=1)
    return index


def save_annoy(index: Any, path: Path, params: AnnoyParams, dim: int, n_items: int) -> Path:
    """Save the index beside a JSON of what it needs to be loaded and trusted again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    index.save(str(tmp))
    tmp.replace(path)
    meta = {
        "dim": dim,
        "metric": "angular",
        "n_trees": params.n_trees,
        "n_items": n_items,
        "seed": params.seed,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_annoy(path: Path) -> tuple[Any, dict[str, Any]]:
    from annoy import AnnoyIndex

    meta = json.loads(path.with_suffix(".json").read_text())
    index = AnnoyIndex(meta["dim"], meta["metric"])
    index.load(str(path))
    if index.get_n_items() != meta["n_items"]:
        raise ValueError(
            f"{path} holds {index.get_n_items()} items, its metadata says {meta['n_items']}"
        )
    return index, meta


def _annoy_row(index: Any, i: int, kk: int, search_k: int) -> list[tuple[int, float]]:
    ids, dist = index.get_nns_by_item(i, kk + 1, search_k=search_k, include_distances=True)
    return [(j, d) for j, d in zip(ids, dist, strict=True) if j != i][:kk]


def annoy_neighbors(
    vectors: np.ndarray,
    k: int,
    params: AnnoyParams,
    index: Any | None = None,
    rows: np.ndarray | None = None,
) -> Neighbors:
    """Top-k by Annoy, with every row checked to have k neighbours (see module docstring).

    `rows` limits the queries to those rows (an audit needs a sample, not the catalogue);
    the others are left empty."""
    started = time.perf_counter()
    n = vectors.shape[0]
    index = index if index is not None else build_annoy(vectors, params)
    built = time.perf_counter() - started
    indices, scores = _empty(n, k)
    kk = min(k, n - 1)
    short = []
    for i in range(n) if rows is None else np.asarray(rows).tolist():
        pairs = _annoy_row(index, i, kk, params.search_k)
        if len(pairs) < kk:  # ask again, searching every tree node
            pairs = _annoy_row(index, i, kk, n * params.n_trees)
        if len(pairs) < kk:
            short.append(i)
        if pairs:
            js, ds = zip(*pairs, strict=True)
            indices[i, : len(js)] = js
            scores[i, : len(ds)] = 1.0 - np.square(np.asarray(ds, dtype=np.float32)) / 2.0
    if short:
        log.warning(
            "annoy returned fewer than %d neighbours for %d rows; those rows were filled exactly",
            kk,
            len(short),
        )
        fill = exact_neighbors(vectors, k, rows=np.asarray(short))
        indices[short], scores[short] = fill.indices[short], fill.scores[short]
    return Neighbors(
        indices,
        scores,
        "annoy",
        time.perf_counter() - started,
        {
            "build_seconds": built,
            "short_rows": len(short),
            "n_trees": params.n_trees,
            "search_k": params.search_k,
        },
    )


@dataclass
class IvfParams:
    nlist: int | None = None  # None: 1.6 * sqrt(n), at least 1
    nprobe: int = 3
    seed: int = 42
    # k-means trains on this many points per cell at most (a sample of the catalogue).
    train_points_per_list: int = 64


def ivf_index(
    x: np.ndarray,
    nlist: int,
    nprobe: int,
    seed: int,
    train_points_per_list: int,
    train_iterations: int | None = None,
):
    """A faiss IVF-Flat inner-product index over the rows of `x` (float32, L2-normalised, so
    the inner product is their cosine): `nlist` k-means cells (at most one per ~39 rows, as
    faiss wants to train them), `nprobe` scanned per query. Shared by the similar-products
    retrieval and the personal embedding profiles."""
    import faiss

    n, d = x.shape
    nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.max_points_per_centroid = train_points_per_list
    if train_iterations is not None:
        index.cp.niter = train_iterations
    index.train(x)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return index


def ivf_neighbors(vectors: np.ndarray, k: int, params: IvfParams) -> Neighbors:
    """Top-k by a faiss IVF-Flat inner-product index built over the rows."""
    started = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = x.shape[0]
    nlist = params.nlist or max(1, int(1.6 * math.sqrt(n)))
    index = ivf_index(x, nlist, params.nprobe, params.seed, params.train_points_per_list)
    nlist = index.nlist
    built = time.perf_counter() - started
    kk = min(k, n - 1)
    dist, ids = index.search(x, kk + 1)
    # Drop each row's own id (wherever it ranks) and any -1 padding, keeping the order.
    keep = (ids != np.arange(n)[:, None]) & (ids >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :kk]
    valid = np.take_along_axis(keep, order, axis=1)
    indices, scores = _empty(n, k)
    indices[:, :kk] = np.where(valid, np.take_along_axis(ids, order, axis=1), -1)
    scores[:, :kk] = np.where(valid, np.take_along_axis(dist, order, axis=1), np.nan)
    return Neighbors(
        indices,
        scores,
        "faiss_ivf",
        time.perf_counter() - started,
        {"build_seconds": built, "nlist": nlist, "nprobe": index.nprobe},
    )


def recall_at_k(
    approx: Neighbors, exact: Neighbors, k: int, rows: np.ndarray | None = None
) -> float:
    """Mean share of each row's exact top-k found in the approximate top-k."""
    rows = np.arange(exact.indices.shape[0]) if rows is None else rows
    if len(rows) == 0:
        return 1.0
    a, e = approx.indices[rows, :k], exact.indices[rows, :k]
    hits = [
        len(set(x[x >= 0].tolist()) & set(y[y >= 0].tolist())) / max(int((y >= 0).sum()), 1)
        for x, y in zip(a, e, strict=True)
    ]
    return float(np.mean(hits))
