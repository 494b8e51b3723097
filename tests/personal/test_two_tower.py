"""The two-tower model on a retailer with planted taste groups.

300 users in 4 groups over 60 days; each group shops mostly its own 30 of 200 products and
sometimes the long-tail "other" products, whose popularity is skewed. A model that learns the
groups finds most of each user's later items; popularity cannot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import (
    popularity_predictions,
    recall_at_k,
    relevant_items,
    temporal_split,
)
from fashion_recs.personal.two_tower import (
    TwoTowerModel,
    TwoTowerParams,
    top_k_by_dot,
    validation_split,
)

N_USERS, N_ITEMS, N_GROUPS, PER_GROUP = 300, 200, 4, 30
EVENTS_PER_USER = 24
K = 12
# One thread: the suite shares a small machine, and it exercises the thread-count restore.
PARAMS = TwoTowerParams(num_threads=1)


@dataclass(frozen=True)
class Retailer:
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    user_group: dict[str, int]
    item_group: np.ndarray  # group of each item row, -1 for the shared long tail


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    truth: pd.DataFrame


def _planted_retailer(seed: int = 0) -> Retailer:
    rng = np.random.default_rng(seed)
    product_ids = np.array([f"p{i:03d}" for i in range(N_ITEMS)], dtype=object)
    item_group = np.full(N_ITEMS, -1)
    for group in range(N_GROUPS):
        item_group[group * PER_GROUP : (group + 1) * PER_GROUP] = group
    items = pd.DataFrame(
        {
            "product_id": product_ids,
            "department": [f"d{g}" if g >= 0 else "other" for g in item_group],
            "color": rng.choice(np.array(["red", "blue", "black", None], dtype=object), N_ITEMS),
            "target_audience": rng.choice(np.array(["women", "men", None], dtype=object), N_ITEMS),
        }
    )
    groups = rng.integers(0, N_GROUPS, size=N_USERS)
    user_ids = np.array([f"u{u:03d}" for u in range(N_USERS)], dtype=object)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age_group": [f"a{g}" if rng.random() < 0.7 else None for g in groups],
            "region": rng.choice(["north", "south"], size=N_USERS),
        }
    )
    tail = np.flatnonzero(item_group < 0)
    tail_p = 1.0 / np.arange(1, len(tail) + 1)
    own_p = 1.0 / np.sqrt(np.arange(1, PER_GROUP + 1))
    start = pd.Timestamp("2026-01-01", tz="UTC")
    frames = []
    for user, group in zip(user_ids, groups, strict=True):
        n_tail = rng.binomial(EVENTS_PER_USER, 0.15)
        own_items = np.arange(group * PER_GROUP, (group + 1) * PER_GROUP)
        chosen = np.concatenate(
            [
                rng.choice(
                    own_items, EVENTS_PER_USER - n_tail, replace=False, p=own_p / own_p.sum()
                ),
                rng.choice(tail, n_tail, replace=False, p=tail_p / tail_p.sum()),
            ]
        )
        days = np.sort(rng.uniform(0, 60, size=EVENTS_PER_USER))
        frames.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "product_id": product_ids[rng.permutation(chosen)],
                    "event_ts": start + pd.to_timedelta(days, unit="D"),
                    "weight": rng.choice([1.0, 1.0, 2.0, 5.0], size=EVENTS_PER_USER),
                }
            )
        )
    interactions = pd.concat(frames, ignore_index=True)
    return Retailer(
        interactions, users, items, dict(zip(user_ids, groups, strict=True)), item_group
    )


@pytest.fixture(scope="module")
def retailer() -> Retailer:
    return _planted_retailer()


@pytest.fixture(scope="module")
def split(retailer: Retailer) -> Split:
    train, test = temporal_split(retailer.interactions, holdout_days=10)
    return Split(train, relevant_items(test))


@pytest.fixture(scope="module")
def softmax_model(retailer: Retailer, split: Split) -> TwoTowerModel:
    return TwoTowerModel.fit(split.train, retailer.users, retailer.items, PARAMS)


def _recall(model: TwoTowerModel, split: Split) -> float:
    recommendations = model.recommend(split.truth["user_id"].unique(), K)
    return recall_at_k(split.truth, recommendations, k=K)


def _popularity_recall(split: Split) -> float:
    predictions = popularity_predictions(split.train, split.truth["user_id"].unique(), K)
    return recall_at_k(split.truth, predictions, k=K)


# --- ranking quality ------------------------------------------------------------------------


def test_sampled_softmax_finds_planted_groups_far_better_than_popularity(
    softmax_model: TwoTowerModel, split: Split
) -> None:
    recall, popularity = _recall(softmax_model, split), _popularity_recall(split)
    assert popularity > 0.05  # the baseline is not a straw man: the long tail is skewed
    assert recall >= 3 * popularity, (recall, popularity)


def test_bpr_beats_popularity(retailer: Retailer, split: Split) -> None:
    params = TwoTowerParams(loss="bpr", num_threads=1)
    model = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)
    recall, popularity = _recall(model, split), _popularity_recall(split)
    assert recall >= 3 * popularity, (recall, popularity)


def test_mse_on_observed_pairs_ranks_far_worse_than_sampled_softmax(
    retailer: Retailer, split: Split, softmax_model: TwoTowerModel
) -> None:
    # Why MSE is not the default: without negatives nothing pushes unobserved items down.
    params = TwoTowerParams(loss="mse", num_threads=1)
    model = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)
    mse, softmax = _recall(model, split), _recall(softmax_model, split)
    assert mse < 0.5 * softmax, (mse, softmax)


def test_popularity_correction_lets_popular_items_back_into_the_lists(
    retailer: Retailer, split: Split, softmax_model: TwoTowerModel
) -> None:
    # Popular items are in-batch negatives more often; without the logQ correction the model
    # learns to push them down for being popular, so they appear less.
    params = TwoTowerParams(popularity_correction=False, num_threads=1)
    uncorrected = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)
    users = split.truth["user_id"].unique()
    top_items = popularity_predictions(split.train, ["anyone"], K)["product_id"]

    def popular_share(model: TwoTowerModel) -> float:
        return float(model.recommend(users, K)["product_id"].isin(top_items).mean())

    assert popular_share(softmax_model) > 1.3 * popular_share(uncorrected)


def test_new_user_with_events_gets_their_groups_items(
    retailer: Retailer, softmax_model: TwoTowerModel
) -> None:
    group = 2
    own_items = retailer.items["product_id"].to_numpy()[retailer.item_group == group]
    events = pd.DataFrame(
        {
            "user_id": "newcomer",
            "product_id": own_items[:5],
            "event_ts": pd.date_range("2026-03-01", periods=5, freq="h", tz="UTC"),
            "weight": 1.0,
        }
    )
    newcomer = pd.DataFrame({"user_id": ["newcomer"], "age_group": [None], "region": [None]})
    recommended = softmax_model.recommend(["newcomer"], K, users=newcomer, interactions=events)
    assert len(recommended) == K
    assert not recommended["product_id"].isin(own_items[:5]).any()
    assert recommended["product_id"].isin(own_items).sum() >= 0.75 * K


def test_cold_item_is_placed_by_its_content_and_department(
    retailer: Retailer, split: Split
) -> None:
    # Item p005 (group 0) is never seen in training; its content vector says "group 0".
    cold = "p005"
    train = split.train[split.train["product_id"] != cold]
    content = np.eye(N_GROUPS + 1, dtype=np.float32)[retailer.item_group]
    model = TwoTowerModel.fit(train, retailer.users, retailer.items, PARAMS, item_content=content)
    users = np.array(sorted(retailer.user_group))
    in_group = np.array([retailer.user_group[u] == 0 for u in users])
    scores = model.user_vectors(users) @ model.item_vectors()[int(cold[1:])]
    assert scores[in_group].mean() > scores[~in_group].mean() + 0.3


# --- training mechanics ---------------------------------------------------------------------


def test_two_fits_are_bit_identical_and_leave_torch_settings_alone(
    retailer: Retailer, split: Split
) -> None:
    params = TwoTowerParams(max_epochs=3, num_threads=1)
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    first = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)
    second = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)

    assert np.array_equal(first.item_vectors(), second.item_vectors())
    users = split.truth["user_id"].unique()
    pd.testing.assert_frame_equal(first.recommend(users, K), second.recommend(users, K))
    assert first.history.train_loss == second.history.train_loss
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_early_stopping_keeps_the_best_epochs_weights(retailer: Retailer, split: Split) -> None:
    params = TwoTowerParams(patience=1, max_epochs=30, num_threads=1)
    model = TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)
    history = model.history

    assert history.stopped_early
    assert len(history.val_recall) < params.max_epochs
    assert history.best_epoch == int(np.argmax(history.val_recall)) + 1
    assert history.val_recall[-1] < history.best_val_recall

    # Score the returned model exactly as training scored each epoch.
    fit, truth = validation_split(
        split.train, params.val_fraction, max_users=params.val_max_users, seed=params.seed
    )
    lists = model.recommend(truth["user_id"].unique(), params.val_k, interactions=fit)
    assert recall_at_k(truth, lists, k=params.val_k) == history.best_val_recall
    assert history.examples_per_s > 0 and history.seconds > 0


def test_an_epoch_budget_trains_on_a_fresh_seeded_sample_of_the_pairs(
    retailer: Retailer, split: Split
) -> None:
    """Above the pair count the budget changes nothing; below it each epoch trains on that
    many pairs, the same ones on every fit, and the towers still learn the planted groups."""

    def fit(budget: int | None) -> TwoTowerModel:
        params = TwoTowerParams(max_epochs=4, num_threads=1, max_examples_per_epoch=budget)
        return TwoTowerModel.fit(split.train, retailer.users, retailer.items, params)

    full = fit(None)
    assert fit(10**9).history.train_loss == full.history.train_loss
    half = full.history.n_pairs // 2
    first, second = fit(half), fit(half)
    assert first.history.examples_per_epoch == half < full.history.examples_per_epoch
    assert first.history.train_loss == second.history.train_loss
    assert first.history.train_loss != full.history.train_loss
    assert _recall(first, split) > 2 * _popularity_recall(split)


def test_validation_split_holds_out_the_latest_events_of_warm_users(split: Split) -> None:
    fit, truth = validation_split(split.train, 0.1)
    n_held_out = len(split.train) - len(fit)
    assert n_held_out == int(np.ceil(0.1 * len(split.train)))
    latest = split.train.sort_values("event_ts", kind="mergesort").tail(n_held_out)
    assert latest["event_ts"].min() >= fit["event_ts"].max()
    assert truth["user_id"].isin(fit["user_id"]).all()
    fit_pairs = set(zip(fit["user_id"], fit["product_id"], strict=True))
    assert not any(
        pair in fit_pairs for pair in zip(truth["user_id"], truth["product_id"], strict=True)
    )
    assert len(truth) > 0


def test_the_integer_keyed_preparation_equals_the_string_keyed_definition(
    retailer: Retailer, split: Split
) -> None:
    """The split, the summed pairs and the user state are computed on integer codes of the
    ids; each equals the plain pandas definition on the ids themselves (string groupbys and
    MultiIndex lookups, far slower on millions of events)."""
    from fashion_recs.personal.two_tower import _item_rows, _summed_pairs, _UserState

    train = split.train.copy()
    train["weight"] = np.random.default_rng(1).random(len(train)) + 0.5
    for fraction, max_users in ((0.1, None), (0.2, 40), (0.0, None)):
        fit, truth = validation_split(train, fraction, max_users=max_users, seed=3)
        n_val = int(np.ceil(fraction * len(train)))
        order = np.argsort(pd.DatetimeIndex(train["event_ts"]).asi8, kind="stable")
        expected_fit = train.iloc[np.sort(order[: len(order) - n_val])].reset_index(drop=True)
        held = train.iloc[np.sort(order[len(order) - n_val :])]
        expected = held[["user_id", "product_id"]].drop_duplicates()
        expected = expected[expected["user_id"].isin(expected_fit["user_id"].unique())]
        seen = pd.MultiIndex.from_frame(expected_fit[["user_id", "product_id"]].drop_duplicates())
        expected = expected[~pd.MultiIndex.from_frame(expected).isin(seen)]
        if max_users is not None and expected["user_id"].nunique() > max_users:
            users = np.sort(expected["user_id"].unique())
            kept = np.random.default_rng(3).choice(users, size=max_users, replace=False)
            expected = expected[expected["user_id"].isin(kept)]
        expected = expected.sort_values(["user_id", "product_id"], kind="mergesort")
        pd.testing.assert_frame_equal(fit, expected_fit)
        pd.testing.assert_frame_equal(truth, expected.reset_index(drop=True))
        assert (len(truth) > 0) == (fraction > 0)

    events, _ = _item_rows(train, pd.Index(retailer.items["product_id"]), "interactions")
    expected_pairs = (
        events.groupby(["user_id", "item_row"], sort=True)["weight"]
        .sum()
        .reset_index()
        .astype({"user_id": object})
    )
    pd.testing.assert_frame_equal(_summed_pairs(events), expected_pairs, check_exact=True)
    state = _UserState.from_events(events, 5)
    ids = pd.Index(sorted(events["user_id"].unique()), dtype=object)
    frame = pd.DataFrame(
        {
            "u": ids.get_indexer(events["user_id"]),
            "i": events["item_row"].to_numpy(np.int64),
            "ts": pd.DatetimeIndex(events["event_ts"]).asi8,
        }
    )
    latest = frame.groupby(["u", "i"], sort=True)["ts"].max().reset_index()
    recent = latest.sort_values(["u", "ts", "i"], ascending=[True, False, True], kind="mergesort")
    position = recent.groupby("u", sort=False).cumcount().to_numpy()
    history = np.full((len(ids), 5), -1, dtype=np.int64)
    keep = position < 5
    history[recent["u"].to_numpy()[keep], position[keep]] = recent["i"].to_numpy()[keep]
    assert list(state.ids) == list(ids)
    np.testing.assert_array_equal(state.indices, latest["i"].to_numpy())
    np.testing.assert_array_equal(
        state.indptr, np.r_[0, np.cumsum(np.bincount(latest["u"], minlength=len(ids)))]
    )
    np.testing.assert_array_equal(state.history, history)
    assert (history[:, 1] >= 0).sum() > 100
    empty = _UserState.from_events(events.iloc[:0], 5)
    assert len(empty.ids) == 0 and list(empty.indptr) == [0]


# --- refit for the published lists ---------------------------------------------------------

# Tiny towers and few epochs: these tests are about what is trained on, not how well.
REFIT_PARAMS = TwoTowerParams(dim=8, hidden=16, max_epochs=4, patience=1, num_threads=1)
LATE_USER, LATE_ITEM, NEVER_ITEM = "late_user", "p_late", "p_never"


@dataclass(frozen=True)
class LateRetailer:
    """The planted retailer plus a user and a product that appear only in the hold-out."""

    interactions: pd.DataFrame
    train: pd.DataFrame
    items: pd.DataFrame


@pytest.fixture(scope="module")
def late_retailer(retailer: Retailer) -> LateRetailer:
    # p_late and p_never have the same attributes; only p_late is ever bought, and only after
    # the cutoff, by the late user and by some group-0 users.
    twins = pd.DataFrame(
        {
            "product_id": [LATE_ITEM, NEVER_ITEM],
            "department": ["d0", "d0"],
            "color": ["red", "red"],
            "target_audience": ["women", "women"],
        }
    )
    items = pd.concat([retailer.items, twins], ignore_index=True)
    last = retailer.interactions["event_ts"].max()
    group_0 = [u for u, g in retailer.user_group.items() if g == 0][:20]
    late = pd.DataFrame(
        {
            "user_id": [LATE_USER] * 4 + group_0,
            "product_id": ["p000", "p001", "p002", LATE_ITEM] + [LATE_ITEM] * len(group_0),
            "event_ts": last,
            "weight": 2.0,
        }
    )
    interactions = pd.concat([retailer.interactions, late], ignore_index=True)
    train, _ = temporal_split(interactions, holdout_days=10)
    assert LATE_USER not in set(train["user_id"]) and LATE_ITEM not in set(train["product_id"])
    return LateRetailer(interactions, train, items)


@pytest.fixture(scope="module")
def holdout_model(retailer: Retailer, late_retailer: LateRetailer) -> TwoTowerModel:
    return TwoTowerModel.fit(late_retailer.train, retailer.users, late_retailer.items, REFIT_PARAMS)


@pytest.fixture(scope="module")
def refit_model(
    retailer: Retailer, late_retailer: LateRetailer, holdout_model: TwoTowerModel
) -> TwoTowerModel:
    return holdout_model.refit(late_retailer.interactions, retailer.users, late_retailer.items)


def test_refit_learns_users_and_items_seen_only_after_the_cutoff(
    late_retailer: LateRetailer, holdout_model: TwoTowerModel, refit_model: TwoTowerModel
) -> None:
    rows = pd.Index(late_retailer.items["product_id"]).get_indexer([LATE_ITEM, NEVER_ITEM])
    # The hold-out model never saw the late user or item: they look like strangers and twins.
    before = holdout_model.user_vectors([LATE_USER, "nobody"])
    assert np.allclose(before[0], before[1])
    assert np.allclose(*holdout_model.item_vectors()[rows])
    # The refit trained on every interaction: both have their own embeddings and history.
    after = refit_model.user_vectors([LATE_USER, "nobody"])
    assert not np.allclose(after[0], after[1])
    assert not np.allclose(*refit_model.item_vectors()[rows])
    lists = refit_model.recommend([LATE_USER], K)
    assert len(lists) == K
    assert not set(lists["product_id"]) & {"p000", "p001", "p002", LATE_ITEM}
    assert refit_model.history.n_fit_events == len(late_retailer.interactions)


def test_refit_trains_exactly_the_best_epoch_count_without_validation(
    holdout_model: TwoTowerModel, refit_model: TwoTowerModel
) -> None:
    best = holdout_model.history.best_epoch
    assert 1 <= best <= REFIT_PARAMS.max_epochs
    history = refit_model.history
    assert len(history.train_loss) == best and history.best_epoch == best
    assert history.n_val_pairs == 0 and not history.stopped_early
    assert refit_model.params.val_fraction == 0 and refit_model.params.max_epochs == best
    assert refit_model.params.seed == REFIT_PARAMS.seed


def test_a_fixed_epoch_count_trains_that_many_epochs_on_everything(
    retailer: Retailer, late_retailer: LateRetailer
) -> None:
    params = REFIT_PARAMS.for_refit(2)
    assert (params.max_epochs, params.val_fraction, params.dim) == (2, 0.0, REFIT_PARAMS.dim)
    model = TwoTowerModel.fit(late_retailer.train, retailer.users, late_retailer.items, params)
    assert len(model.history.train_loss) == 2 and model.history.best_epoch == 2
    assert model.history.n_fit_events == len(late_retailer.train)
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        REFIT_PARAMS.for_refit(0)


def test_refit_is_deterministic(
    retailer: Retailer,
    late_retailer: LateRetailer,
    holdout_model: TwoTowerModel,
    refit_model: TwoTowerModel,
) -> None:
    again = holdout_model.refit(late_retailer.interactions, retailer.users, late_retailer.items)
    assert np.array_equal(again.item_vectors(), refit_model.item_vectors())
    assert again.history.train_loss == refit_model.history.train_loss
    users = [LATE_USER, "u000", "u001", "nobody"]
    pd.testing.assert_frame_equal(again.recommend(users, K), refit_model.recommend(users, K))


def test_losses_sharing_one_preparation_train_as_if_alone(
    retailer: Retailer, late_retailer: LateRetailer, holdout_model: TwoTowerModel
) -> None:
    data = TwoTowerModel.prepare(
        late_retailer.train, retailer.users, late_retailer.items, REFIT_PARAMS
    )
    bpr = replace(REFIT_PARAMS, loss="bpr", max_epochs=2)
    first = TwoTowerModel.fit_prepared(data, REFIT_PARAMS)
    shared = TwoTowerModel.fit_prepared(data, bpr)
    alone = TwoTowerModel.fit(late_retailer.train, retailer.users, late_retailer.items, bpr)
    assert np.array_equal(first.item_vectors(), holdout_model.item_vectors())
    assert np.array_equal(shared.item_vectors(), alone.item_vectors())
    assert shared.history.train_loss == alone.history.train_loss
    users = [LATE_USER, "u000", "u001"]
    pd.testing.assert_frame_equal(shared.recommend(users, K), alone.recommend(users, K))
    with pytest.raises(ValueError, match="prepared for"):
        TwoTowerModel.fit_prepared(data, replace(REFIT_PARAMS, history_len=3))


@pytest.fixture(scope="module")
def warm_model(
    retailer: Retailer, late_retailer: LateRetailer, holdout_model: TwoTowerModel
) -> TwoTowerModel:
    return holdout_model.refit(
        late_retailer.interactions, retailer.users, late_retailer.items, epochs=1
    )


def test_a_warm_refit_starts_from_the_split_models_weights(
    retailer: Retailer,
    late_retailer: LateRetailer,
    holdout_model: TwoTowerModel,
    warm_model: TwoTowerModel,
) -> None:
    history = warm_model.history
    assert len(history.train_loss) == 1 and history.n_val_pairs == 0
    assert history.n_fit_events == len(late_retailer.interactions)
    # Before any step, the warm towers are the split model's: each known user's and item's
    # id row is copied to its new code, and every shared layer is the same.
    params = REFIT_PARAMS.for_refit(1)
    start = TwoTowerModel.fit(
        late_retailer.interactions,
        retailer.users,
        late_retailer.items,
        replace(params, max_examples_per_epoch=1, learning_rate=1e-12),
        warm_start=holdout_model,
    )
    old, new = holdout_model._towers, start._towers
    users = ["u000", "u017", "u042"]
    old_rows = holdout_model._vocabularies["user_id"].get_indexer(users) + 1
    new_rows = start._vocabularies["user_id"].get_indexer(users) + 1
    assert (old_rows > 0).all() and (new_rows > 0).all()
    close = dict(atol=1e-6)
    assert torch.allclose(old.user_id.weight[old_rows], new.user_id.weight[new_rows], **close)
    item_rows = pd.Index(late_retailer.items["product_id"]).get_indexer(["p000", "p005"])
    old_items = holdout_model._item_id_codes[item_rows]
    new_items = start._item_id_codes[item_rows]
    assert (old_items > 0).all() and (new_items > 0).all()
    assert torch.allclose(old.item_id.weight[old_items], new.item_id.weight[new_items], **close)
    for name, tensor in old.user_mlp.state_dict().items():
        assert torch.allclose(tensor, new.user_mlp.state_dict()[name], **close)
    # Items are matched by id: a catalogue in another order takes the same rows.
    reordered = TwoTowerModel.fit(
        late_retailer.interactions,
        retailer.users,
        late_retailer.items.iloc[::-1].reset_index(drop=True),
        replace(params, max_examples_per_epoch=1, learning_rate=1e-12),
        warm_start=holdout_model,
    )
    back = reordered._item_ids.get_indexer(start._item_ids)
    known = holdout_model._item_id_codes > 0  # new items start from rows of their own code
    assert known.sum() > 50
    got, want = reordered.item_vectors()[back][known], start.item_vectors()[known]
    assert np.allclose(got, want, atol=1e-5)
    # The late user and item, unknown to the split model, got rows of their own in training.
    rows = pd.Index(late_retailer.items["product_id"]).get_indexer([LATE_ITEM, NEVER_ITEM])
    assert not np.allclose(*warm_model.item_vectors()[rows])
    after = warm_model.user_vectors([LATE_USER, "nobody"])
    assert not np.allclose(after[0], after[1])


def test_a_warm_refit_is_deterministic(
    retailer: Retailer,
    late_retailer: LateRetailer,
    holdout_model: TwoTowerModel,
    warm_model: TwoTowerModel,
) -> None:
    again = holdout_model.refit(
        late_retailer.interactions, retailer.users, late_retailer.items, epochs=1
    )
    assert np.array_equal(again.item_vectors(), warm_model.item_vectors())
    users = [LATE_USER, "u000", "u001", "nobody"]
    pd.testing.assert_frame_equal(again.recommend(users, K), warm_model.recommend(users, K))


# --- serving --------------------------------------------------------------------------------


def test_recommend_excludes_known_items_only_when_asked(
    softmax_model: TwoTowerModel, split: Split
) -> None:
    users = split.truth["user_id"].unique()[:50]
    known = set(zip(split.train["user_id"], split.train["product_id"], strict=True))

    excluding = softmax_model.recommend(users, K)
    including = softmax_model.recommend(users, K, exclude_known=False)
    for lists in (excluding, including):
        assert list(lists.columns) == ["user_id", "product_id", "rank", "score"]
        assert lists["rank"].dtype == np.int32 and lists["score"].dtype == np.float64
        ranks = lists.groupby("user_id")["rank"].apply(list)
        assert len(ranks) == len(users) and all(r == list(range(1, K + 1)) for r in ranks)
        assert (lists.groupby("user_id")["score"].diff().dropna() <= 0).all()

    def n_known(lists: pd.DataFrame) -> int:
        pairs = zip(lists["user_id"], lists["product_id"], strict=True)
        return sum(pair in known for pair in pairs)

    assert n_known(excluding) == 0
    assert n_known(including) > 0


def test_unknown_user_gets_a_list_from_features(softmax_model: TwoTowerModel) -> None:
    lists = softmax_model.recommend(["nobody", "u001"], K)
    assert lists.groupby("user_id").size().to_dict() == {"nobody": K, "u001": K}
    vectors = softmax_model.user_vectors(["nobody", "u001"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, PARAMS.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_save_and_load_round_trip_gives_the_same_lists(
    softmax_model: TwoTowerModel, split: Split, tmp_path: Path
) -> None:
    users = [*split.truth["user_id"].unique()[:40], "nobody"]
    target = tmp_path / "two_tower"
    softmax_model.save(target)
    softmax_model.save(target)  # replacing an existing model works and leaves no debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two_tower"]

    loaded = TwoTowerModel.load(target)
    assert np.array_equal(loaded.item_vectors(), softmax_model.item_vectors())
    assert np.array_equal(loaded.user_vectors(users), softmax_model.user_vectors(users))
    pd.testing.assert_frame_equal(loaded.recommend(users, K), softmax_model.recommend(users, K))
    # Measured timings stay out of the saved model, so a rerun saves identical files.
    assert loaded.history == dataclasses.replace(
        softmax_model.history, seconds=0.0, examples_per_s=0.0
    )


def test_top_k_by_dot_breaks_ties_by_item_row_and_honours_exclusions() -> None:
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]], np.float32)
    users = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    excluded = (np.array([1, 1]), np.array([1, 3]))

    for block in (1, 1024):
        rows, item_rows, ranks, scores = top_k_by_dot(users, items, 3, excluded, block=block)
        assert rows.tolist() == [0, 0, 0, 1, 1, 1]
        # user 0: three items tie at 1.0 and come in row order; user 1 lost its two best.
        assert item_rows.tolist() == [0, 2, 4, 0, 2, 4]
        assert ranks.tolist() == [1, 2, 3, 1, 2, 3]
        assert scores.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]

    rows, item_rows, _, _ = top_k_by_dot(users[:1], items[:2], 5, (np.array([0]), np.array([0])))
    assert item_rows.tolist() == [1]  # fewer than k left: a shorter list, not -inf filler


def test_top_k_by_dot_equals_a_full_sort_with_ties_and_exclusions() -> None:
    """Rows settled by topk alone and rows with ties across the k-th place (identical item
    vectors) give what sorting every item by (score desc, item row) gives."""
    rng = np.random.default_rng(3)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    items[40:60] = items[40]  # twenty identical items: ties across the boundary
    users = rng.standard_normal((200, 8)).astype(np.float32)
    users[:50] = items[40] * 3  # these users rank the tied items first
    excluded = (np.repeat(np.arange(0, 200, 7), 3), rng.integers(0, 300, 3 * 29))
    rows, item_rows, ranks, scores = top_k_by_dot(users, items, 10, excluded, block=64)
    full = users @ items.T
    full[excluded] = -np.inf
    for user in range(200):
        order = np.lexsort((np.arange(300), -full[user]))[:10]
        mine = rows == user
        assert item_rows[mine].tolist() == order.tolist(), user
        assert ranks[mine].tolist() == list(range(1, 11))
        np.testing.assert_allclose(scores[mine], full[user, order], rtol=1e-5)


# --- bad input ------------------------------------------------------------------------------


def test_empty_interactions_are_refused_with_a_clear_error(retailer: Retailer) -> None:
    empty = retailer.interactions.iloc[:0]
    with pytest.raises(FashionRecsError, match="interactions frame is empty"):
        TwoTowerModel.fit(empty, retailer.users, retailer.items, PARAMS)


def test_interactions_with_no_known_product_are_refused(retailer: Retailer) -> None:
    foreign = retailer.interactions.assign(product_id="x" + retailer.interactions["product_id"])
    with pytest.raises(FashionRecsError, match=r"none of the \d+ interactions is on a product_id"):
        TwoTowerModel.fit(foreign, retailer.users, retailer.items, PARAMS)


def test_misaligned_item_content_is_refused(retailer: Retailer, split: Split) -> None:
    content = np.zeros((N_ITEMS - 1, 4), np.float32)
    with pytest.raises(FashionRecsError, match=r"item_content has shape \(199, 4\)"):
        TwoTowerModel.fit(split.train, retailer.users, retailer.items, PARAMS, item_content=content)


def test_interactions_on_unknown_products_are_dropped_and_counted(
    retailer: Retailer, split: Split
) -> None:
    strays = split.train.head(7).assign(product_id="not-in-catalogue")
    train = pd.concat([split.train, strays], ignore_index=True)
    params = TwoTowerParams(max_epochs=1, num_threads=1)
    model = TwoTowerModel.fit(train, retailer.users, retailer.items, params)
    assert model.history.n_dropped_unknown_items == 7
