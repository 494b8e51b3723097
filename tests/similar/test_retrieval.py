"""Retrieval: exact search is right, Annoy and faiss agree with it, K neighbours come back."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fashion_recs.similar.retrieval import (
    AnnoyParams,
    IvfParams,
    annoy_neighbors,
    build_annoy,
    exact_neighbors,
    ivf_neighbors,
    load_annoy,
    recall_at_k,
    save_annoy,
)


def clustered(n: int = 2000, d: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_matches_brute_force_and_never_returns_self() -> None:
    x = clustered(500)
    found = exact_neighbors(x, 7, block_rows=64)
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    brute = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    assert (found.indices == brute).all()
    assert np.allclose(found.scores, np.take_along_axis(scores, brute, axis=1), atol=1e-5)
    assert (found.indices != np.arange(500)[:, None]).all()
    sparse = exact_neighbors(sp.csr_matrix(x), 7)
    assert (sparse.indices == found.indices).all()


def test_ties_are_broken_by_index_whatever_the_block_size() -> None:
    x = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)  # groups of 5 identical rows
    a = exact_neighbors(x, 4, block_rows=3)
    b = exact_neighbors(x, 4, block_rows=100)
    assert (a.indices == b.indices).all()
    assert a.indices[0].tolist() == [1, 2, 3, 4]


def test_tiny_catalogues_pad_instead_of_failing() -> None:
    x = clustered(3, 8)
    for result in (
        exact_neighbors(x, 5),
        annoy_neighbors(x, 5, AnnoyParams(n_trees=5)),
        ivf_neighbors(x, 5, IvfParams()),
    ):
        assert (result.indices[:, :2] >= 0).all() and (result.indices[:, 2:] == -1).all()
    assert (exact_neighbors(clustered(1, 8), 3).indices == -1).all()


def test_annoy_returns_k_neighbours_with_cosine_scores_and_reloads(tmp_path) -> None:
    x = clustered(1500)
    params = AnnoyParams(n_trees=20)
    index = build_annoy(x, params)
    found = annoy_neighbors(x, 10, params, index)
    assert (found.indices >= 0).all(), "annoy must give every product K neighbours"
    assert found.info["short_rows"] == 0
    rows = np.arange(50)
    assert np.allclose(
        found.scores[rows, 0], np.sum(x[rows] * x[found.indices[rows, 0]], 1), atol=1e-4
    )
    exact = exact_neighbors(x, 10)
    assert recall_at_k(found, exact, 10) > 0.8
    path = save_annoy(index, tmp_path / "idx" / "m.ann", params, x.shape[1], len(x))
    loaded, meta = load_annoy(path)
    assert meta == {"dim": 32, "metric": "angular", "n_items": 1500, "n_trees": 20, "seed": 42}
    assert loaded.get_nns_by_item(0, 5) == index.get_nns_by_item(0, 5)


def test_annoy_short_rows_are_filled_exactly(monkeypatch) -> None:
    """The annoy#679 symptom (one neighbour back) is caught and repaired, not served."""
    x = clustered(300)
    params = AnnoyParams(n_trees=5)
    index = build_annoy(x, params)

    class OneNeighbour:
        def get_nns_by_item(self, i, n, search_k=-1, include_distances=False):
            ids, dist = index.get_nns_by_item(i, 2, include_distances=True)
            return ids, dist

    found = annoy_neighbors(x, 10, params, OneNeighbour())
    assert found.info["short_rows"] == 300
    assert (found.indices == exact_neighbors(x, 10).indices).all()


def test_faiss_ivf_reaches_exact_on_clustered_data() -> None:
    x = clustered(4000, clusters=50)
    exact = exact_neighbors(x, 10)
    ivf = ivf_neighbors(x, 10, IvfParams(nprobe=16))
    assert recall_at_k(ivf, exact, 10) >= 0.98
    assert ivf.info["nlist"] >= 1


def test_recall_is_one_for_identical_lists() -> None:
    x = clustered(100)
    e = exact_neighbors(x, 5)
    assert recall_at_k(e, e, 5) == pytest.approx(1.0)


def test_narrow_sparse_vectors_searched_densely_give_the_sparse_products_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Searching few-column sparse vectors as dense ones is a speed-up only: the same
    neighbours and (to float rounding) the same cosines as the sparse product."""
    from sklearn.preprocessing import normalize

    from fashion_recs.similar import retrieval

    rng = np.random.default_rng(3)
    values = rng.random((400, 60)) * (rng.random((400, 60)) < 0.15)
    vectors = sp.csr_matrix(normalize(values).astype(np.float32))
    dense = retrieval.exact_neighbors(vectors, 10, block_rows=64)
    monkeypatch.setattr(retrieval, "DENSE_MAX_DIM", 0)
    sparse = retrieval.exact_neighbors(vectors, 10, block_rows=64)
    np.testing.assert_array_equal(dense.indices, sparse.indices)
    np.testing.assert_allclose(dense.scores, sparse.scores, rtol=1e-5, atol=1e-6)
