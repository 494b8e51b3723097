"""The matrix-based recommenders against hand-computed values and brute-force numpy."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fashion_recs.errors import FashionRecsError
from fashion_recs.personal.blend import blend, learn_caps, similar_of_recent
from fashion_recs.personal.item_knn import ItemKNN
from fashion_recs.personal.matrix import UserItemMatrix, user_item_matrix
from fashion_recs.personal.profiles import EmbeddingProfile
from fashion_recs.personal.repurchase import Repurchase
from fashion_recs.personal.user_cf import UserCF

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def matrix_from(dense: np.ndarray) -> UserItemMatrix:
    users = pd.Index([f"u{i}" for i in range(dense.shape[0])])
    items = pd.Index([f"p{j}" for j in range(dense.shape[1])])
    return UserItemMatrix(sp.csr_matrix(dense.astype(np.float32)), users, items)


def random_matrix(seed: int, n_users: int = 60, n_items: int = 40) -> UserItemMatrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) * (rng.random((n_users, n_items)) < 0.15)
    return matrix_from(np.round(dense * 5, 1))


def brute_force_lists(scores: np.ndarray, known: np.ndarray, k: int) -> list[list[int]]:
    """Top-k columns per row: positive scores only, ties by column, known items excluded."""
    lists = []
    for row, seen in zip(scores, known, strict=True):
        cand = [j for j in range(len(row)) if row[j] > 1e-6 and not seen[j]]
        cand.sort(key=lambda j: (-round(float(row[j]), 5), j))
        lists.append(cand[:k])
    return lists


def assert_same_lists(
    frame: pd.DataFrame, matrix: UserItemMatrix, scores: np.ndarray, k: int
) -> None:
    """Each user's list is a top-k of `scores` (known items excluded): same length, and the
    scores of what we picked equal the brute-force top scores (ties may pick either item)."""
    dense = matrix.values.toarray()
    expected = brute_force_lists(scores, dense > 0, k)
    got = lists_of(frame, matrix)
    for row, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert len(ours) == len(theirs)
        np.testing.assert_allclose(scores[row, ours], scores[row, theirs], rtol=1e-4, atol=1e-6)
        assert not (dense[row, ours] > 0).any()


def lists_of(frame: pd.DataFrame, matrix: UserItemMatrix) -> list[list[int]]:
    codes = matrix.items.get_indexer(frame["product_id"])
    by_user = {u: [] for u in matrix.users}
    for u, c in zip(frame["user_id"], codes, strict=True):
        by_user[u].append(int(c))
    return [by_user[u] for u in matrix.users]


def unit_rows(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def cf_brute_force(dense: np.ndarray, n_neighbours: int, pearson: bool) -> np.ndarray:
    base = dense.copy()
    if pearson:
        for r in range(len(base)):
            seen = base[r] != 0
            if seen.any():
                base[r, seen] -= base[r, seen].mean()
    sims = unit_rows(base) @ unit_rows(base).T
    np.fill_diagonal(sims, -np.inf)
    weights = np.zeros_like(sims)
    for r in range(len(sims)):
        order = sorted(range(len(sims)), key=lambda j: (-round(sims[r, j], 6), j))
        for j in order[:n_neighbours]:
            if sims[r, j] > 0:
                weights[r, j] = sims[r, j]
    return weights @ unit_rows(dense)


def test_matrix_sums_decayed_weights_and_keeps_catalogue_order() -> None:
    interactions = pd.DataFrame(
        {
            "user_id": ["b", "a", "a", "a"],
            "product_id": ["p2", "p1", "p1", "unknown"],
            "event_ts": pd.to_datetime(
                ["2026-11-01", "2026-11-01", "2026-10-02", "2026-11-01"], utc=True
            ),
            "weight": [2.0, 1.0, 4.0, 3.0],
        }
    )
    m = user_item_matrix(interactions, ["p2", "p1", "p3"], as_of=AS_OF, half_life_days=30)
    assert list(m.users) == ["a", "b"]
    assert list(m.items) == ["p2", "p1", "p3"]
    # a: p1 = 1 (today) + 4 * 0.5 ** (30 / 30) = 3; the unknown product is left out.
    np.testing.assert_allclose(m.values.toarray(), [[0, 3, 0], [2, 0, 0]])
    assert m.user_rows(["b", "zz"]).tolist() == [1, -1]
    with pytest.raises(FashionRecsError, match="lack columns"):
        user_item_matrix(interactions.drop(columns="weight"), ["p1"], as_of=AS_OF, half_life_days=1)


def test_user_cf_cosine_by_hand() -> None:
    # u0 and u1 share p0; u2 shares nothing with u0. u0's only neighbour is u1 (cos 1/sqrt2),
    # whose unit vector puts 1/sqrt2 on p1: score 0.5.
    m = matrix_from(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=float))
    recs = UserCF("cosine", n_neighbours=5).fit(m).recommend(["u0", "u2", "nobody"], k=3)
    assert recs.to_dict("records") == [
        {"user_id": "u0", "product_id": "p1", "rank": 1, "score": pytest.approx(0.5)}
    ]


@pytest.mark.parametrize("similarity", ["cosine", "pearson"])
def test_user_cf_matches_brute_force(similarity: str) -> None:
    m = random_matrix(3)
    dense = m.values.toarray().astype(np.float64)
    model = UserCF(similarity, n_neighbours=7, weighting="raw").fit(m)
    expected = cf_brute_force(dense, 7, similarity == "pearson")
    assert_same_lists(model.recommend(m.users, k=5), m, expected, 5)


def test_user_cf_repurchase_option_keeps_known_items() -> None:
    m = random_matrix(4)
    model = UserCF("cosine", n_neighbours=10).fit(m)
    excluded = model.recommend(m.users, k=8)
    included = model.recommend(m.users, k=8, exclude_known=False)
    known = {(u, p) for u, p in zip(*m.values.nonzero(), strict=True)}
    codes = zip(
        m.users.get_indexer(excluded.user_id), m.items.get_indexer(excluded.product_id), strict=True
    )
    assert not any(pair in known for pair in codes)
    codes = zip(
        m.users.get_indexer(included.user_id), m.items.get_indexer(included.product_id), strict=True
    )
    assert any(pair in known for pair in codes)
    assert (
        excluded.groupby("user_id")["rank"]
        .apply(lambda r: list(r) == list(range(1, len(r) + 1)))
        .all()
    )


def test_item_knn_matches_brute_force() -> None:
    m = random_matrix(5)
    dense = m.values.toarray().astype(np.float64)
    sims = unit_rows(dense.T) @ unit_rows(dense.T).T
    np.fill_diagonal(sims, -np.inf)
    kept = np.zeros_like(sims)
    for r in range(len(sims)):
        order = sorted(range(len(sims)), key=lambda j: (-round(sims[r, j], 6), j))[:6]
        kept[r, order] = np.where(sims[r, order] > 0, sims[r, order], 0)
    recs = ItemKNN(n_neighbours=6, weighting="raw").fit(m).recommend(m.users, k=5)
    assert_same_lists(recs, m, unit_rows(dense) @ kept, 5)


@pytest.mark.parametrize("sparse", [False, True])
def test_embedding_profile_matches_brute_force(sparse: bool) -> None:
    m = random_matrix(6)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(m.n_items, 8)).astype(np.float32)
    dense = m.values.toarray().astype(np.float64)
    profile = unit_rows((dense / dense.sum(axis=1, keepdims=True).clip(1e-12)) @ unit_rows(vectors))
    scores = profile @ unit_rows(vectors).T
    scores[~profile.any(axis=1)] = -1
    model = EmbeddingProfile(sp.csr_matrix(vectors) if sparse else vectors).fit(m)
    got = model.recommend(m.users, k=4)
    for user, group in got.groupby("user_id"):
        row = m.users.get_loc(user)
        want = scores[row].copy()
        want[dense[row] > 0] = -np.inf
        top = np.argsort(-want, kind="stable")[:4]
        np.testing.assert_allclose(group["score"], want[top], rtol=1e-4)
    with pytest.raises(FashionRecsError, match="aligned"):
        EmbeddingProfile(vectors[:3]).fit(m)


def test_repurchase_ranks_own_items_by_weight() -> None:
    m = matrix_from(np.array([[0.5, 0, 3.0], [0, 0, 0]]))
    recs = Repurchase().fit(m).recommend(["u0", "u1"], k=5)
    assert recs[["user_id", "product_id", "rank"]].values.tolist() == [
        ["u0", "p2", 1],
        ["u0", "p0", 2],
    ]


def test_blend_priority_caps_and_dedupe() -> None:
    recent = pd.DataFrame(
        {"user_id": ["a", "a", "a"], "product_id": ["r1", "r2", "r3"], "rank": [1, 2, 3]}
    )
    similar = pd.DataFrame(
        {
            "product_id": ["r1", "r1", "r2", "r2"],
            "rank": [1, 2, 1, 2],
            "similar_product_id": ["s1", "s2", "s3", "r1"],
            "score": [0.9, 0.8, 0.7, 0.6],
        }
    )
    near = similar_of_recent(recent, similar, n_recent=2, per_item=2)
    # Round-robin: every recent item's best look-alike before anyone's second.
    assert near["product_id"].tolist() == ["s1", "s3", "s2", "r1"]
    model = pd.DataFrame({"user_id": ["a", "a"], "product_id": ["s3", "m1"], "rank": [1, 2]})
    popular = pd.DataFrame({"user_id": ["a", "b"], "product_id": ["t1", "t1"], "rank": [1, 1]})
    out = blend(
        ["b", "a"],
        {"recent": recent, "similar": near, "model": model, "segment_popularity": popular},
        ["recent", "similar", "model", "segment_popularity"],
        {"recent": 2, "similar": 3},
        k=6,
    )
    assert out[["user_id", "product_id", "source"]].values.tolist() == [
        ["b", "t1", "segment_popularity"],
        ["a", "r1", "recent"],
        ["a", "r2", "recent"],
        ["a", "s1", "similar"],
        ["a", "s3", "similar"],
        ["a", "s2", "similar"],
        ["a", "m1", "model"],
    ]
    assert out[out.user_id == "a"]["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(FashionRecsError, match="no candidate lists"):
        blend(["a"], {"recent": recent}, ["recent", "model"], {}, k=3)


def test_log_weighting_is_cf_on_damped_weights() -> None:
    m = random_matrix(8)
    damped = matrix_from(np.log1p(m.values.toarray()))
    logged = UserCF("cosine", n_neighbours=5).fit(m).recommend(m.users, k=4)
    raw_on_damped = UserCF("cosine", n_neighbours=5, weighting="raw").fit(damped)
    expected = raw_on_damped.recommend(damped.users, k=4)
    np.testing.assert_allclose(logged["score"], expected["score"], rtol=1e-5)
    assert logged["user_id"].tolist() == expected["user_id"].tolist()


def test_learned_caps_follow_the_truth_and_are_cross_fitted() -> None:
    users = [f"u{i}" for i in range(40)]
    recent = pd.DataFrame(
        {
            "user_id": np.repeat(users, 3),
            "product_id": ["r1", "r2", "r3"] * 40,
            "rank": [1, 2, 3] * 40,
        }
    )
    model = pd.DataFrame(
        {
            "user_id": np.repeat(users, 3),
            "product_id": ["m1", "m2", "m3"] * 40,
            "rank": [1, 2, 3] * 40,
        }
    )
    candidates = {"recent": recent, "model": model}
    # Everyone comes back for the model's items, nobody for their recent ones.
    truth = pd.DataFrame({"user_id": np.repeat(users, 2), "product_id": ["m1", "m2"] * 40})
    learned = learn_caps(users, candidates, ["recent", "model"], {"recent": [0, 3]}, truth, k=3)
    assert learned.caps == {"recent": 0}
    assert learned.grid_scores["recent=0"] > learned.grid_scores["recent=3"]
    assert set(learned.lists["source"]) == {"model"}
    assert learned.lists["user_id"].drop_duplicates().tolist() == users


@pytest.mark.parametrize("metric", ["average_precision", "recall", "ndcg"])
def test_cap_grid_scores_equal_blending_and_scoring_each_point(metric: str) -> None:
    """The grid's integer-code scorer is held to `blend` + `per_user_metrics` on every grid
    point: overlapping sources, repeated products across sources, users without truth, truth
    users without candidates and truth items no source proposes."""
    from fashion_recs.evaluate import per_user_metrics
    from fashion_recs.personal.blend import CapGrid

    rng = np.random.default_rng(3)
    users = pd.Index([f"u{i:03d}" for i in range(150)])
    items = np.array([f"p{i:02d}" for i in range(40)])

    def lists(n: int, drop: float) -> pd.DataFrame:
        rows = []
        for user in users:
            if rng.random() < drop:
                continue
            for r, item in enumerate(rng.choice(items, n, replace=False), 1):
                rows.append((user, item, r))
        return pd.DataFrame(rows, columns=["user_id", "product_id", "rank"])

    candidates = {"recent": lists(6, 0.3), "similar": lists(8, 0.2), "model": lists(12, 0.0)}
    truth = lists(3, 0.4).drop(columns="rank")
    truth = pd.concat([truth, pd.DataFrame({"user_id": ["stranger"], "product_id": ["zz"]})])
    priority, k = ["recent", "similar", "model"], 5
    grid = CapGrid(users, candidates, priority, {"recent": 6, "similar": 8}, truth, k)
    for caps in (
        {"recent": 0, "similar": 0},
        {"recent": 2, "similar": 4},
        {"recent": 6, "similar": 8},
    ):
        expected = (
            per_user_metrics(truth, blend(users, candidates, priority, caps, k), k=k)[metric]
            .reindex(users)
            .fillna(0.0)
            .to_numpy()
        )
        np.testing.assert_allclose(grid.scores(caps, metric), expected, rtol=0, atol=1e-12)


def test_profile_vectors_come_from_an_encoders_embeddings_artifact(tmp_path) -> None:
    """Any similar-products encoder works: its embeddings artifact is aligned to the
    catalogue, products it has no vector for get a zero row (no evidence), and a run without
    the artifact says so with None."""
    from fashion_recs.artifacts import write_artifact
    from fashion_recs.stages.embeddings import embeddings_artifact
    from fashion_recs.stages.personal import item_vectors
    from tests.helpers import make_config, run_paths

    config = make_config(tmp_path)
    paths = run_paths(config)
    products = pd.DataFrame({"product_id": ["a", "b", "c"]})
    assert item_vectors(config, paths, "fashion_clip", products) is None
    embeddings = pd.DataFrame(
        {
            "product_id": ["c", "a"],
            "model": "fashion_clip",
            "vector": [[0.0, 1.0], [1.0, 0.0]],
        }
    )
    write_artifact(paths, embeddings_artifact("fashion_clip"), embeddings)
    vectors = item_vectors(config, paths, "fashion_clip", products)
    np.testing.assert_array_equal(vectors, [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    "make",
    [
        Repurchase,
        lambda: ItemKNN(5),
        lambda: UserCF("cosine", 7),
        lambda: UserCF("pearson", 7),
    ],
    ids=["repurchase", "item_knn", "user_cf_cosine", "user_cf_pearson"],
)
@pytest.mark.parametrize("exclude_known", [True, False])
def test_sparse_ranking_gives_the_dense_blocks_lists(make, exclude_known: bool) -> None:
    """Ranking from the sparse scores is a speed-up only: the same rows, items, scores and
    order as ranking the dense score block, users in several blocks."""
    rng = np.random.default_rng(7)
    dense = rng.random((300, 80)) * (rng.random((300, 80)) < 0.1)
    matrix = matrix_from(dense)
    rows = np.arange(matrix.n_users)[::-1]
    sparse_model = make()
    sparse_model.block_rows = 64
    dense_model = make()
    dense_model.block_rows = 64
    dense_model.sparse_scores = lambda rows: None
    dense_model.score_factors = lambda rows: None
    got = sparse_model.fit(matrix).recommend_rows(rows, 12, exclude_known)
    want = dense_model.fit(matrix).recommend_rows(rows, 12, exclude_known)
    assert len(want[0]) > 0
    for ours, theirs in zip(got, want, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "make", [lambda: ItemKNN(5), lambda: UserCF("cosine", 7)], ids=["item_knn", "user_cf"]
)
def test_blocks_of_similar_known_counts_keep_the_asked_order(make) -> None:
    """Known items excluded, users are blocked by how many items they know (a heavy user no
    longer widens a block of light ones); the lists are those of one user per block, and come
    back grouped in the order the rows were asked."""
    rng = np.random.default_rng(11)
    dense = rng.random((200, 60)) * (rng.random((200, 60)) < rng.random((200, 1)) * 0.5)
    matrix = matrix_from(dense)
    rows = rng.permutation(matrix.n_users)
    blocked, single = make(), make()
    blocked.block_rows, single.block_rows = 32, 1
    got = blocked.fit(matrix).recommend_rows(rows, 10, True)
    want = single.fit(matrix).recommend_rows(rows, 10, True)
    assert len(want[0]) > 0
    assert (np.diff(got[0]) >= 0).all()
    for ours, theirs in zip(got, want, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_narrow_sparse_item_vectors_profile_like_the_sparse_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Profiles over narrow sparse vectors are scored densely: the same lists as the sparse
    product, scores equal to float rounding."""
    from fashion_recs.personal import profiles

    m = random_matrix(9, n_users=120, n_items=50)
    rng = np.random.default_rng(1)
    vectors = sp.csr_matrix(rng.random((m.n_items, 30)) * (rng.random((m.n_items, 30)) < 0.2))
    dense = EmbeddingProfile(vectors).fit(m).recommend(m.users, k=6)
    monkeypatch.setattr(profiles, "DENSE_MAX_DIM", 0)
    sparse = EmbeddingProfile(vectors).fit(m).recommend(m.users, k=6)
    pd.testing.assert_frame_equal(
        dense.drop(columns="score"), sparse.drop(columns="score"), check_dtype=False
    )
    np.testing.assert_allclose(dense["score"], sparse["score"], rtol=1e-5)


def test_cap_rows_keeps_each_rows_largest_entries_ties_by_column() -> None:
    from fashion_recs.personal.user_cf import cap_rows

    matrix = sp.csr_matrix(
        np.array([[0.5, 0.9, 0.0, 0.9, 0.1], [0.0, 0.2, 0.0, 0.0, 0.3]], dtype=np.float32)
    )
    kept, capped = cap_rows(matrix, 2)
    assert capped == 1
    np.testing.assert_array_equal(
        kept.toarray(), np.array([[0, 0.9, 0, 0.9, 0], [0, 0.2, 0, 0, 0.3]], dtype=np.float32)
    )
    assert cap_rows(matrix, 4)[1] == 0


@pytest.mark.parametrize("similarity", ["cosine", "pearson"])
def test_user_cf_item_cap_above_every_items_users_is_exact(similarity: str) -> None:
    matrix = random_matrix(11, n_users=200, n_items=30)
    rows = np.arange(matrix.n_users)
    most = int(np.diff(matrix.values.tocsc().indptr).max())
    exact = UserCF(similarity, 10).fit(matrix).recommend_rows(rows, 8)
    capped = UserCF(similarity, 10, max_item_users=most).fit(matrix).recommend_rows(rows, 8)
    for a, b in zip(exact, capped, strict=True):
        np.testing.assert_array_equal(a, b)
    smaller = UserCF(similarity, 10, max_item_users=most // 3).fit(matrix)
    assert len(smaller.recommend_rows(rows, 8)[0]) > 0


def test_item_knn_similar_items_lists_each_products_nearest_items_by_score() -> None:
    """The vectorised lists equal a per-product loop over the similarity rows."""
    matrix = random_matrix(12, n_users=150, n_items=40)
    model = ItemKNN(6).fit(matrix)
    asked = ["p3", "unknown", "p0", *[f"p{j}" for j in range(10, 40)]]
    expected = []
    for pid in asked:
        if pid not in matrix.items:
            continue
        row = model.item_similarity.getrow(matrix.items.get_loc(pid))
        order = np.lexsort((row.indices, -row.data))[:4]
        for rank, j in enumerate(order, start=1):
            expected.append((pid, rank, matrix.items[row.indices[j]], float(row.data[j])))
    got = model.similar_items(asked, 4)
    assert list(got.itertuples(index=False, name=None)) == expected


@pytest.mark.parametrize("slack", [0, 8])
def test_item_knn_keeps_each_items_best_rounded_neighbours_ties_by_lower_item(
    monkeypatch, slack: int
) -> None:
    """The neighbours are chosen on similarities rounded to SIMILARITY_QUANTUM, ties by the
    lower item, whatever the top-n kernel cut off: with no slack every row of tied items is
    one the kernel may have cut wrongly and must be recomputed in full."""
    from fashion_recs.personal import user_cf
    from fashion_recs.personal.item_knn import SIMILARITY_QUANTUM

    monkeypatch.setattr(user_cf, "QUANTUM_SLACK", slack)
    rng = np.random.default_rng(3)
    dense = (rng.random((80, 30)) < 0.15) * rng.integers(1, 4, (80, 30)).astype(np.float64)
    dense[:, 10:20] = dense[:, [9]]  # eleven copies of one item: tied with every other
    dense[:, 7] = 0.0  # an item nobody touched has no neighbours
    m = matrix_from(dense)
    model = ItemKNN(n_neighbours=4, weighting="log1p").fit(m)

    unit = unit_rows(np.log1p(dense).T)
    sims = user_cf.quantize(unit @ unit.T, SIMILARITY_QUANTUM)
    expected = np.zeros_like(sims)
    for r in range(len(sims)):
        others = [j for j in range(len(sims)) if j != r and sims[r, j] > 0]
        best = sorted(others, key=lambda j: (-sims[r, j], j))[:4]
        expected[r, best] = sims[r, best]
    got = model.item_similarity.toarray()
    assert model.item_similarity.dtype == np.float32
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert np.all(np.mod(got, SIMILARITY_QUANTUM) == 0)
    assert (got[7] == 0).all()
    tied = sum(len(set(row[row > 0])) < (row > 0).sum() for row in got)
    assert tied > 10


def test_best_others_equal_a_lexsort_on_row_value_and_column() -> None:
    """The neighbour pick, held to the three-key lexsort it replaced, with many tied values,
    zeros of both signs and each row's own column among its results."""
    from fashion_recs.personal.user_cf import _best_others
    from fashion_recs.sort_keys import by_row_value_column

    rng = np.random.default_rng(4)
    n_rows, per, n = 300, 40, 500
    r = np.repeat(np.arange(n_rows), per)
    c = rng.integers(0, n, len(r))
    v = (rng.integers(0, 12, len(r)) / 4).astype(np.float32)
    v[rng.random(len(r)) < 0.05] = -0.0
    which = rng.integers(0, n, n_rows)
    c[::per] = which  # every row finds itself
    got = _best_others(r, c, v, which, 7, n)
    np.testing.assert_array_equal(by_row_value_column(r, v, c), np.lexsort((c, -v, r)))

    others = c != which[r]
    rr, cc, vv = r[others], c[others], v[others]
    order = np.lexsort((cc, -vv, rr))
    rr, cc, vv = rr[order], cc[order], vv[order]
    keep = np.arange(len(rr)) - np.searchsorted(rr, rr) < 7
    expected = sp.csr_matrix((vv[keep], (rr[keep], cc[keep])), shape=(n_rows, n))
    assert np.array_equal(got.indptr, expected.indptr)
    assert np.array_equal(got.indices, expected.indices)
    assert np.array_equal(got.data, expected.data.astype(np.float32))
