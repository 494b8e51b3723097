"""The ranker's parts on small interaction logs built in code: candidate sources, features
that never see their own label window, labels, windows, and the quality gate's bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_recs.contract import METRICS, PERSONAL_GATE, personal_metrics
from fashion_recs.evaluate import evaluate_all
from fashion_recs.personal.candidates import CandidateInputs, generate_candidates, history_before
from fashion_recs.personal.ranker import (
    CandidateRanker,
    RankerParams,
    label_windows,
    serving_frame,
    window_frame,
    with_labels,
)
from fashion_recs.stages.personal import gate_stage
from tests.helpers import make_config, run_paths

DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2026-10-01", tz="UTC")
CAPS = {
    "own": 10,
    "siblings": 5,
    "item_knn": 5,
    "user_cf": 5,
    "basket": 5,
    "lookalike": 3,
    "segment_popularity": 5,
    "trending": 3,
    "popular": 3,
}


def _catalogue(n_items: int = 40) -> pd.DataFrame:
    """Products in designs of two colours (p00/p01 are one design, p02/p03 the next ...)."""
    ids = [f"p{i:02d}" for i in range(n_items)]
    return pd.DataFrame(
        {
            "product_id": ids,
            "group_key": [f"g{i // 2:02d}" for i in range(n_items)],
            "department": ["tops" if i % 4 < 2 else "shoes" for i in range(n_items)],
            "price": [10.0 + i for i in range(n_items)],
        }
    )


def _interactions(seed: int = 0, n_users: int = 30, days: int = 28) -> pd.DataFrame:
    """Users who come back to a few favourite designs and now and then open something popular."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        favourites = rng.choice(20, 3, replace=False) * 2
        for day in range(days):
            if rng.random() < 0.5:
                continue
            for _ in range(rng.integers(1, 4)):
                if rng.random() < 0.7:
                    item = favourites[rng.integers(0, 3)] + (rng.random() < 0.3)
                else:
                    item = int(rng.zipf(1.6)) % 40
                ts = START + day * DAY + pd.Timedelta(minutes=int(rng.integers(0, 1440)))
                rows.append((f"U{u:02d}", f"p{item:02d}", ts, float(rng.choice([1.0, 5.0]))))
    return pd.DataFrame(rows, columns=["user_id", "product_id", "event_ts", "weight"])


def _inputs(products: pd.DataFrame, users: list[str]) -> CandidateInputs:
    similar = pd.DataFrame(
        {
            "product_id": products["product_id"],
            "rank": 1,
            "similar_product_id": products["product_id"].shift(-1).fillna("p00"),
            "score": 0.9,
        }
    )
    segments = pd.DataFrame(
        {
            "user_id": users,
            "age_group": [("25-34", "35-44")[i % 2] for i in range(len(users))],
            "region": np.nan,
        }
    )
    return CandidateInputs.build(products, similar, segments, 30.0)


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return _interactions()


@pytest.fixture(scope="module")
def inputs(log: pd.DataFrame) -> CandidateInputs:
    return _inputs(_catalogue(), sorted(log["user_id"].unique()))


def test_own_items_come_newest_day_first_then_by_count() -> None:
    products = _catalogue()
    log = pd.DataFrame(
        {
            "user_id": ["u"] * 6,
            "product_id": ["p05", "p05", "p05", "p07", "p09", "p09"],
            "event_ts": [START, START, START + DAY, START + 3 * DAY, START + 3 * DAY, START],
            "weight": [1.0] * 6,
        }
    )
    history = history_before(log, pd.Index(products["product_id"]), START + 5 * DAY, 30.0)
    own = generate_candidates(history, np.array([0]), _inputs(products, ["u", "v"]), {"own": 5})
    items = history.matrix.items.to_numpy()[own["item"].to_numpy()]
    # p07 and p09 were last touched on day 3 (p09 twice in all), p05 on day 1 (three times).
    assert items.tolist() == ["p09", "p07", "p05"]
    assert own["source_rank"].tolist() == [1, 2, 3]


def test_own_items_order_equals_a_lexsort_on_their_keys() -> None:
    """The own-item order, held to the five-key lexsort it replaced, on a log with many
    ties (whole days, repeated counts and weights)."""
    rng = np.random.default_rng(3)
    products = _catalogue()
    n = 3000
    log = pd.DataFrame(
        {
            "user_id": [f"u{i:02d}" for i in rng.integers(0, 40, n)],
            "product_id": products["product_id"].to_numpy()[rng.integers(0, 40, n)],
            "event_ts": START + pd.to_timedelta(rng.integers(0, 20, n) * 12, unit="h"),
            "weight": rng.choice([1.0, 2.0, 4.0], n),
        }
    )
    history = history_before(log, pd.Index(products["product_id"]), START + 12 * DAY, 30.0)
    own = history.own
    key = history.user.astype(np.int64) * history.n_items + history.item
    order = np.argsort(key, kind="stable")
    unique, starts = np.unique(key[order], return_index=True)
    days, weight = history.days[order], history.weight[order]
    since = np.minimum.reduceat(days, starts)
    n_events = np.diff(np.r_[starts, len(order)]).astype(np.float64)
    total = np.add.reduceat(weight * np.power(0.5, days / 30.0), starts)
    user, item = unique // history.n_items, unique % history.n_items
    expected = np.lexsort((item, -total, -n_events, np.floor(since), user))
    assert len(np.unique(np.c_[user, np.floor(since), n_events], axis=0)) < len(user)  # ties
    np.testing.assert_array_equal(own.user, user[expected])
    np.testing.assert_array_equal(own.item, item[expected])
    np.testing.assert_array_equal(own.decayed, total[expected])
    np.testing.assert_array_equal(own.keys, unique)


def test_siblings_are_other_colours_of_own_designs_never_owned_items(log, inputs) -> None:
    cutoff = START + 21 * DAY
    history = history_before(log, inputs.items, cutoff, 30.0)
    rows = np.arange(history.n_users)
    siblings = generate_candidates(history, rows, inputs, {"siblings": 10})
    assert len(siblings)
    user, item = siblings["user"].to_numpy(), siblings["item"].to_numpy()
    assert not history.own.contains(user, item).any()
    own = history.own
    for u, i in zip(user[:50], item[:50], strict=True):
        designs = set(inputs.group[own.item[own.user == u]])
        assert inputs.group[i] in designs


def test_every_source_proposes_at_most_its_cap_per_user(log, inputs) -> None:
    history = history_before(log, inputs.items, START + 21 * DAY, 30.0)
    candidates = generate_candidates(history, np.arange(history.n_users), inputs, CAPS)
    assert set(candidates["source"]) == set(CAPS)
    per_user = candidates.groupby(["source", "user"]).size().groupby(level=0).max()
    for source, cap in CAPS.items():
        assert per_user[source] <= cap, source
    assert not candidates.duplicated(["source", "user", "item"]).any()
    co = candidates[candidates["source"].isin(["item_knn", "user_cf", "basket", "lookalike"])]
    assert not history.own.contains(co["user"].to_numpy(), co["item"].to_numpy()).any()


def test_two_tower_source_trains_on_the_last_days_and_proposes_unseen_items(log) -> None:
    """The towers are real (TwoTowerModel, seeded), trained on the history's last days only,
    fitted once per history whatever the number of chunks, and propose at most the cap of
    items the user did not touch in those days."""
    from dataclasses import replace

    from fashion_recs.personal.two_tower import TwoTowerParams

    products = _catalogue().assign(color="red", target_audience="women")
    base = _inputs(products, sorted(log["user_id"].unique()))
    inputs = replace(
        base,
        catalogue=products[["product_id", "department", "color", "target_audience"]],
        two_tower_params=TwoTowerParams(dim=8, hidden=8, max_epochs=2, val_fraction=0.0),
        two_tower_days=7,
    )
    history = history_before(log, inputs.items, START + 21 * DAY, 30.0)
    rows = np.arange(history.n_users)
    proposed = generate_candidates(history, rows, inputs, {"two_tower": 4})
    assert set(proposed["source"]) == {"two_tower"}
    assert proposed.groupby("user").size().max() == 4
    assert proposed["user"].nunique() > 0.5 * history.n_users
    recent = history.days < 7
    seen = set(zip(history.user[recent], history.item[recent], strict=True))
    pairs = zip(proposed["user"], proposed["item"], strict=True)
    assert not any(pair in seen for pair in pairs)
    # A second chunk reuses the fitted towers: the same users get the same proposals.
    again = generate_candidates(history, rows[:5], inputs, {"two_tower": 4})
    pd.testing.assert_frame_equal(again, proposed[proposed["user"] < 5].reset_index(drop=True))
    assert len([key for key in history._memo if key[0] == "two_tower"]) == 1


def test_features_never_see_the_window_they_are_labelled_by(log, inputs) -> None:
    """Changing everything at or after a cutoff leaves its candidates and features unchanged."""
    params = RankerParams(caps=CAPS, window_days=7)
    cutoff = START + 21 * DAY
    users = sorted(log["user_id"].unique())
    before = serving_frame(log, cutoff, users, inputs, params)
    future = log["event_ts"] >= cutoff
    altered = pd.concat(
        [
            log[~future],
            log[future].assign(product_id="p39", weight=50.0),
            pd.DataFrame(
                {
                    "user_id": users,
                    "product_id": "p38",
                    "event_ts": cutoff,
                    "weight": 100.0,
                }
            ),
        ],
        ignore_index=True,
    )
    after = serving_frame(altered, cutoff, users, inputs, params)
    pd.testing.assert_frame_equal(before.candidates, after.candidates)
    pd.testing.assert_frame_equal(before.features, after.features)


def test_window_labels_are_exactly_what_was_touched_inside_the_window(log, inputs) -> None:
    params = RankerParams(caps=CAPS, window_days=7)
    window = label_windows(START + 28 * DAY, 7, 1)[0]
    frame = window_frame(log, window, 0, inputs, params)
    inside = log[(log["event_ts"] >= window.start) & (log["event_ts"] < window.end)]
    touched = set(zip(inside["user_id"], inside["product_id"], strict=True))
    history = history_before(log, inputs.items, window.start, 30.0)
    users = history.matrix.users.to_numpy()[frame["user"].to_numpy()]
    items = inputs.items.to_numpy()[frame["item"].to_numpy()]
    labels = [(u, i) in touched for u, i in zip(users, items, strict=True)]
    assert frame["label"].astype(bool).tolist() == labels
    # Every kept user has a positive; users without one teach lambdarank nothing.
    assert frame.groupby("user")["label"].max().eq(1).all()


def test_a_window_trains_on_at_most_max_train_users_a_seeded_sample(log, inputs) -> None:
    """The fit costs the same whatever the user count: each window samples its users."""
    window = label_windows(START + 28 * DAY, 7, 1)[0]
    everyone = window_frame(log, window, 0, inputs, RankerParams(caps=CAPS, window_days=7))
    params = RankerParams(caps=CAPS, window_days=7, max_train_users=8, chunk_users=3)
    sampled = window_frame(log, window, 0, inputs, params)
    assert everyone["user"].nunique() > 8
    assert 0 < sampled["user"].nunique() <= 8
    assert set(sampled["user"]) <= set(everyone["user"])
    pd.testing.assert_frame_equal(sampled, window_frame(log, window, 0, inputs, params))
    # Chunks of three users give the sampled users' rows of the single-chunk frame.
    whole = everyone[everyone["user"].isin(set(sampled["user"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(sampled, whole)


def test_label_windows_are_back_to_back_calendar_days() -> None:
    end = pd.Timestamp("2026-11-01", tz="UTC")
    windows = label_windows(end, 7, 3)
    assert [w.end for w in windows] == [end, end - 7 * DAY, end - 14 * DAY]
    assert all(w.end - w.start == 7 * DAY for w in windows)


def test_exclude_known_keeps_own_items_out_of_every_candidate(log, inputs) -> None:
    params = RankerParams(caps=CAPS, window_days=7, exclude_known=True)
    frame = serving_frame(log, START + 21 * DAY, None, inputs, params)
    owned = frame.history.own.contains(
        frame.candidates["user"].to_numpy(), frame.candidates["item"].to_numpy()
    )
    assert not owned.any()
    assert frame.features["ui_events"].eq(0).all()


def test_ranker_is_deterministic_and_learns_the_planted_return_visits(log, inputs) -> None:
    params = RankerParams(caps=CAPS, window_days=7, n_estimators=30, min_child_samples=5)
    end = START + 21 * DAY
    frames = [
        window_frame(log, w, i, inputs, params) for i, w in enumerate(label_windows(end, 7, 2))
    ]
    train = pd.concat(frames, ignore_index=True)
    first = CandidateRanker(params).fit(train)
    second = CandidateRanker(params).fit(train)
    serving = serving_frame(log, end, None, inputs, params)
    lists = first.rank(serving, 5)
    pd.testing.assert_frame_equal(lists, second.rank(serving, 5))
    # Scoring on several threads gives exactly the one-thread scores.
    features = serving.features[first.features]
    np.testing.assert_array_equal(
        first.model.predict(features, num_threads=1),
        first.model.predict(features, num_threads=4),
    )
    assert set(lists["score"]) <= set(first.model.predict(features, num_threads=1))
    test = log[log["event_ts"] >= end][["user_id", "product_id"]].drop_duplicates()
    score = evaluate_all(test, lists, k=5, catalogue_size=40, model="ranker")
    popular = serving.candidates[serving.candidates["source"] == "popular"]
    popular_lists = pd.DataFrame(
        {
            "user_id": serving.history.matrix.users.to_numpy()[popular["user"].to_numpy()],
            "product_id": inputs.items.to_numpy()[popular["item"].to_numpy()],
            "rank": popular["source_rank"].to_numpy(),
        }
    )
    baseline = evaluate_all(test, popular_lists, k=5, catalogue_size=40, model="popular")
    assert (
        score.set_index("metric").loc["map", "value"]
        > 1.5 * baseline.set_index("metric").loc["map", "value"]
    )
    assert with_labels(serving, test, 0)["label"].sum() > 0


def _metric_rows(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": list(values),
            "metric": "map",
            "k": np.int32(12),
            "value": list(values.values()),
            "n_users": 100,
        }
    )


def test_gate_serves_the_best_baseline_when_no_candidate_clears_it(tmp_path) -> None:
    from fashion_recs.artifacts import write_artifact

    config = make_config(tmp_path, personal={"gate": {"margin": 0.05}})
    paths = run_paths(config)
    write_artifact(paths, METRICS, _metric_rows({"popularity": 0.05, "segment_popularity": 0.07}))
    write_artifact(
        paths, personal_metrics("baselines"), _metric_rows({"repurchase": 0.16, "item_knn": 0.04})
    )
    write_artifact(paths, personal_metrics("models"), _metric_rows({"ranker": 0.165, "blend": 0.1}))
    summary = gate_stage(config, paths)
    gate = pd.read_parquet(paths.path(PERSONAL_GATE))
    # 0.165 beats repurchase, but not by 5 %: repurchase itself serves existing users.
    assert summary["chosen"] is None and summary["fallback"]
    assert summary["served"] == summary["baseline"] == "repurchase"
    assert summary["required"] == pytest.approx(0.16 * 1.05)
    chosen = gate[gate["chosen"]]
    assert chosen["model"].tolist() == ["repurchase"] and chosen["role"].item() == "baseline"

    write_artifact(paths, personal_metrics("models"), _metric_rows({"ranker": 0.2, "blend": 0.1}))
    summary = gate_stage(config, paths)
    assert summary["chosen"] == summary["served"] == "ranker"
    assert summary["failed"] == ["blend"]


def test_gate_leaves_known_item_baselines_out_when_models_exclude_known_items(tmp_path) -> None:
    from fashion_recs.artifacts import write_artifact

    config = make_config(tmp_path, personal={"exclude_known": True})
    paths = run_paths(config)
    write_artifact(paths, METRICS, _metric_rows({"popularity": 0.05, "segment_popularity": 0.07}))
    write_artifact(
        paths,
        personal_metrics("baselines"),
        _metric_rows({"repurchase": 0.16, "item_knn": 0.04, "popularity_unseen": 0.03}),
    )
    write_artifact(paths, personal_metrics("models"), _metric_rows({"ranker": 0.06}))
    summary = gate_stage(config, paths)
    assert summary["baseline"] == "item_knn"
    assert summary["chosen"] == "ranker"


def test_ranker_step_is_skipped_with_a_reason_when_no_window_has_history(
    tmp_path, monkeypatch
) -> None:
    """Too little history for any training window must not fail the run: the step says why,
    and the gate simply has one candidate fewer."""
    from fashion_recs.personal.evaluation import holdout_split
    from fashion_recs.personal.matrix import user_item_matrix
    from fashion_recs.stages import ranking
    from fashion_recs.stages.personal import PersonalInputs

    config = make_config(tmp_path, evaluation={"holdout_days": 2})
    paths = run_paths(config)
    log = _interactions(days=4)
    products = _catalogue()
    items = pd.Index(products["product_id"])
    split = holdout_split(log, items, holdout_days=2, half_life_days=30.0)
    full = user_item_matrix(log, items, as_of=START + 4 * DAY, half_life_days=30.0)
    inputs = PersonalInputs(log, products, items, split, full)
    candidates = _inputs(products, sorted(log["user_id"].unique()))
    monkeypatch.setattr(ranking, "candidate_inputs", lambda *_: candidates)
    summary = ranking.ranker_stage(config, inputs, paths)
    assert "no training window" in summary["skipped"]
    assert not paths.path(personal_metrics("ranker")).exists()
