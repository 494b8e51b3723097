"""Embedding profiles ranked through a faiss IVF index against the exact ranking.

Item vectors are drawn around cluster centres and users touch items of one or two clusters,
the structure an inverted-file index relies on. The index's lists must find nearly all of the
exact lists' items (all of them when every cell is scanned), with the same contract: known
items never listed, k items per user whenever the catalogue has them, no list for a user
without a profile, scores equal to the exact cosine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from fashion_recs.errors import FashionRecsError
from fashion_recs.personal.evaluation import holdout_split
from fashion_recs.personal.matrix import UserItemMatrix, user_item_matrix
from fashion_recs.personal.profiles import EmbeddingProfile, ProfileSearch, _padded
from fashion_recs.similar.retrieval import recall_at_k
from tests.helpers import make_config, run_paths

K = 12


def matrix_from(dense: np.ndarray) -> UserItemMatrix:
    users = pd.Index([f"u{i}" for i in range(dense.shape[0])])
    items = pd.Index([f"p{j}" for j in range(dense.shape[1])])
    return UserItemMatrix(sp.csr_matrix(dense.astype(np.float32)), users, items)


def clustered(
    seed: int, n_users: int = 300, n_items: int = 2000, dim: int = 16, n_clusters: int = 40
) -> tuple[UserItemMatrix, np.ndarray, np.ndarray]:
    """Users who touched 1 to 14 items of one or two clusters; the last 10 touched nothing."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    cluster = rng.integers(n_clusters, size=n_items)
    vectors = (centres[cluster] + 0.3 * rng.normal(size=(n_items, dim))).astype(np.float32)
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    for user in range(n_users - 10):
        liked = rng.choice(n_clusters, size=rng.integers(1, 3), replace=False)
        pool = np.flatnonzero(np.isin(cluster, liked))
        touched = rng.choice(pool, size=min(len(pool), int(rng.integers(1, 15))), replace=False)
        dense[user, touched] = rng.random(len(touched)) + 0.1
    return matrix_from(dense), vectors, cluster


def ivf(vectors: np.ndarray, **search) -> EmbeddingProfile:
    return EmbeddingProfile(vectors, search=ProfileSearch(method="faiss_ivf", **search))


def exact(vectors: np.ndarray | sp.spmatrix) -> EmbeddingProfile:
    return EmbeddingProfile(vectors, search=ProfileSearch(method="exact"))


def recall(got, want, n: int) -> float:
    """recall@k of `got` against `want` over the users `want` lists (those with a profile)."""
    listed = np.unique(want[0])
    approx, truth = _padded(got[0], got[1], n, K), _padded(want[0], want[1], n, K)
    return recall_at_k(approx, truth, K, listed)


@pytest.mark.parametrize("exclude_known", [True, False])
def test_ivf_lists_find_the_exact_lists_items(exclude_known: bool) -> None:
    matrix, vectors, _ = clustered(0)
    rows = np.arange(matrix.n_users)[::-1]
    model = ivf(vectors, nlist=32, nprobe=2)
    model.block_rows = 64
    got = model.fit(matrix).recommend_rows(rows, K, exclude_known)
    want = exact(vectors).fit(matrix).recommend_rows(rows, K, exclude_known)
    assert model.search_info["method"] == "faiss_ivf"
    assert model.search_info["nlist"] == 32 and model.search_info["nprobe"] == 2
    assert recall(got, want, len(rows)) >= 0.95
    # The sampled recall the summary reports is that of the lists served.
    assert model.search_info["recall_at_k"] >= 0.95
    assert model.search_info["recall_users"] == len(rows) - 10
    # Not every cell is scanned: the index does not merely repeat the exact lists.
    assert not np.array_equal(got[1], want[1])
    # Each listed item's score is its exact cosine to the profile, best first per user.
    position, cols, scores = got
    cosine = model.score_block(rows).numpy()
    np.testing.assert_allclose(scores, cosine[position, cols], rtol=1e-5, atol=1e-6)
    same_user = position[1:] == position[:-1]
    assert (scores[1:][same_user] <= scores[:-1][same_user]).all()
    assert (np.diff(position) >= 0).all()


@pytest.mark.parametrize("exclude_known", [True, False])
def test_scanning_every_cell_gives_the_exact_lists(exclude_known: bool) -> None:
    matrix, vectors, _ = clustered(1)
    rows = np.arange(matrix.n_users)
    model = ivf(vectors, nlist=20, nprobe=20)
    got = model.fit(matrix).recommend_rows(rows, K, exclude_known)
    want = exact(vectors).fit(matrix).recommend_rows(rows, K, exclude_known)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)
    assert model.search_info["recall_at_k"] == 1.0
    assert model.search_info["exact_filled_users"] == 0


def test_known_items_never_listed_and_every_profiled_user_gets_k() -> None:
    """Known items excluded, with a user who knows a whole cluster (more items than one
    scanned cell holds: the search comes back short and that user is ranked exactly) and
    users without a profile (no list, as with exact ranking)."""
    matrix, vectors, cluster = clustered(2)
    dense = matrix.values.toarray()
    heavy = np.flatnonzero(cluster == cluster[0])
    dense[0] = 0.0
    dense[0, heavy] = 1.0
    matrix = matrix_from(dense)
    rows = np.arange(matrix.n_users)
    model = ivf(vectors, nlist=40, nprobe=1)
    position, cols, _ = model.fit(matrix).recommend_rows(rows, K, True)
    assert not (dense[position, cols] > 0).any()
    counts = np.bincount(position, minlength=len(rows))
    profiled = dense.any(axis=1)
    assert (counts[profiled] == K).all()
    assert (counts[~profiled] == 0).all()
    assert model.search_info["exact_filled_users"] >= 1
    want = exact(vectors).fit(matrix).recommend_rows(rows, K, True)
    np.testing.assert_array_equal(np.unique(position), np.unique(want[0]))
    # The heavy user's list is the exact one.
    np.testing.assert_array_equal(cols[position == 0], want[1][want[0] == 0])


def test_a_user_who_knows_nearly_the_catalogue_gets_what_is_left() -> None:
    matrix, vectors, _ = clustered(3, n_users=50, n_items=120, n_clusters=4)
    dense = matrix.values.toarray()
    dense[0] = 1.0
    dense[0, [5, 60, 119]] = 0.0
    matrix = matrix_from(dense)
    rows = np.arange(matrix.n_users)
    position, cols, _ = ivf(vectors, nprobe=1).fit(matrix).recommend_rows(rows, K, True)
    assert sorted(cols[position == 0].tolist()) == [5, 60, 119]
    assert (np.bincount(position)[1:40] == K).all()


def test_auto_is_exact_for_small_catalogues_and_wide_sparse_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fashion_recs.personal import profiles

    matrix, vectors, _ = clustered(4, n_users=60, n_items=400)
    small = EmbeddingProfile(vectors, search=ProfileSearch(exact_max_items=400)).fit(matrix)
    assert small.search_info == {"method": "exact", "items": 400}
    large = EmbeddingProfile(vectors, search=ProfileSearch(exact_max_items=399)).fit(matrix)
    assert large.search_info["method"] == "faiss_ivf"
    monkeypatch.setattr(profiles, "DENSE_MAX_DIM", 8)
    wide = sp.csr_matrix(np.abs(vectors))
    for method in ("auto", "faiss_ivf"):
        search = ProfileSearch(method=method, exact_max_items=1)
        model = EmbeddingProfile(wide, search=search).fit(matrix)
        assert model.search_info["method"] == "exact"
        assert model.top_k_rows(np.arange(3), K, None) is None
    with pytest.raises(FashionRecsError, match="annoy"):
        ProfileSearch(method="annoy")


def test_profile_search_options_round_trip_through_the_config(tmp_path) -> None:
    from fashion_recs.config import PersonalConfig
    from fashion_recs.stages.personal import profile_search

    options = {
        "method": "faiss_ivf",
        "exact_max_items": 5000,
        "ivf_nlist": 64,
        "ivf_nprobe": 8,
        "recall_sample": 100,
    }
    config = make_config(tmp_path, seed=7, personal={"profiles": options})
    assert config.personal.profiles.model_dump() == {"vectors": ["text_tfidf", "fashion_clip"]} | (
        options
    )
    dumped = config.personal.model_dump()
    assert PersonalConfig.model_validate(dumped).profiles == config.personal.profiles
    assert profile_search(config) == ProfileSearch(
        method="faiss_ivf", exact_max_items=5000, nlist=64, nprobe=8, recall_sample=100, seed=7
    )
    default = make_config(tmp_path).personal.profiles
    assert (default.method, default.ivf_nlist, default.ivf_nprobe) == ("auto", None, 32)
    for bad in ({"method": "annoy"}, {"ivf_nprobe": 0}, {"recall_sample": 1}):
        with pytest.raises(ValidationError):
            make_config(tmp_path, personal={"profiles": bad})


def test_profiles_step_summary_records_the_search(tmp_path, monkeypatch) -> None:
    from fashion_recs.stages import personal

    matrix, vectors, _ = clustered(5, n_users=400)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    rng = np.random.default_rng(5)
    coo = matrix.values.tocoo()
    interactions = pd.DataFrame(
        {
            "user_id": matrix.users[coo.row],
            "product_id": matrix.items[coo.col],
            "event_ts": [start + timedelta(days=int(d)) for d in rng.integers(0, 30, coo.nnz)],
            "weight": coo.data.astype(np.float64),
        }
    )
    items = matrix.items.rename("product_id")
    split = holdout_split(interactions, items, holdout_days=7, half_life_days=30.0)
    full = user_item_matrix(
        interactions, items, as_of=start + timedelta(days=31), half_life_days=30.0
    )
    inputs = personal.PersonalInputs(
        interactions, pd.DataFrame({"product_id": items}), items, split, full
    )
    monkeypatch.setattr(personal, "item_vectors", lambda *args: vectors)
    profiles = {"vectors": ["text_tfidf"], "method": "faiss_ivf", "ivf_nlist": 32}
    config = make_config(tmp_path, personal={"profiles": profiles})
    summary = personal.profiles_stage(config, inputs, run_paths(config))
    search = summary["search"]["embedding_profile_text_tfidf"]
    assert search["method"] == "faiss_ivf"
    assert (search["items"], search["nlist"], search["nprobe"], search["k"]) == (2000, 32, 32, K)
    assert search["recall_at_k"] == 1.0  # every cell scanned
    assert search["recall_at_k_holdout"] == 1.0
    assert search["recall_users"] == (np.diff(full.values.indptr) > 0).sum()
    assert "embedding_profile_text_tfidf/map@12" in summary["values"]
