"""Tests for the offline evaluation: every expected number is worked out by hand beside it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fashion_recs.evaluate as evaluate_module
from fashion_recs.contract import METRICS_SCHEMA
from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import (
    catalogue_coverage,
    evaluate_all,
    hit_rate_at_k,
    holdout_cutoff,
    map_at_k,
    ndcg_at_k,
    per_user_metrics,
    popularity_predictions,
    precision_at_k,
    recall_at_k,
    relevant_items,
    segment_levels,
    segment_popularity_predictions,
    temporal_split,
    top_k,
)

METRICS = [precision_at_k, recall_at_k, map_at_k, ndcg_at_k, hit_rate_at_k]
LOG2_3 = math.log2(3)  # the discount of position 2 is 1 / log2(3)


def truth_frame(pairs: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(user, item) for user, items in pairs.items() for item in items]
    return pd.DataFrame(rows, columns=["user_id", "product_id"])


def predictions_frame(lists: dict[str, list[tuple[str, int]]]) -> pd.DataFrame:
    rows = [(user, item, rank) for user, ranked in lists.items() for item, rank in ranked]
    return pd.DataFrame(rows, columns=["user_id", "product_id", "rank"])


def ranked(*items: str) -> list[tuple[str, int]]:
    return [(item, rank) for rank, item in enumerate(items, start=1)]


# Two users, k = 3.
#   u1 likes a, b, c and is shown [a, x, b]: hits at positions 1 and 3.
#   u2 likes d and is shown [y, d, z]: a hit at position 2.
TWO_USERS_TRUTH = truth_frame({"u1": ["a", "b", "c"], "u2": ["d"]})
TWO_USERS_PREDICTIONS = predictions_frame(
    {"u1": ranked("a", "x", "b"), "u2": ranked("y", "d", "z")}
)


def test_precision_counts_hits_over_k_slots() -> None:
    # u1: 2 hits / 3 slots = 2/3; u2: 1 / 3 = 1/3; mean = (2/3 + 1/3) / 2 = 0.5
    value = precision_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
    assert value == pytest.approx(0.5)


def test_recall_counts_hits_over_relevant_items() -> None:
    # u1: 2 of 3 relevant = 2/3; u2: 1 of 1 = 1; mean = (2/3 + 1) / 2 = 5/6
    value = recall_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
    assert value == pytest.approx(5 / 6)


def test_map_follows_the_kaggle_hm_definition() -> None:
    # u1: P(1) = 1/1, P(3) = 2/3; AP = (1 + 2/3) / min(3, 3) = 5/9
    # u2: P(2) = 1/2;             AP = (1/2) / min(3, 1) = 1/2
    # MAP = (5/9 + 1/2) / 2 = 19/36
    value = map_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
    assert value == pytest.approx(19 / 36)


def test_ndcg_discounts_hits_by_log2_of_position() -> None:
    # u1: DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    #     IDCG over min(3, 3) = 3 hits = 1 + 1/log2(3) + 1/log2(4) = 1.5 + 1/log2(3)
    # u2: DCG = 1/log2(3); IDCG over min(3, 1) = 1 hit = 1
    u1 = 1.5 / (1.5 + 1 / LOG2_3)  # about 0.7039
    u2 = 1 / LOG2_3  # about 0.6309
    value = ndcg_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
    assert value == pytest.approx((u1 + u2) / 2)


def test_hit_rate_counts_users_with_any_hit() -> None:
    # both users have a hit: 2 / 2 = 1.0; at k = 1 only u1 (a at position 1): 1 / 2
    assert hit_rate_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3) == pytest.approx(1.0)
    assert hit_rate_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=1) == pytest.approx(0.5)


def test_user_without_predictions_scores_zero_and_counts_in_the_mean() -> None:
    # u3 likes e and gets no list: every metric is 0 for u3 and the means are over 3 users.
    truth = pd.concat([TWO_USERS_TRUTH, truth_frame({"u3": ["e"]})], ignore_index=True)
    # precision: (2/3 + 1/3 + 0) / 3 = 1/3; recall: (2/3 + 1 + 0) / 3 = 5/9
    # MAP: (5/9 + 1/2 + 0) / 3 = 19/54; hit rate: 2/3
    assert precision_at_k(truth, TWO_USERS_PREDICTIONS, k=3) == pytest.approx(1 / 3)
    assert recall_at_k(truth, TWO_USERS_PREDICTIONS, k=3) == pytest.approx(5 / 9)
    assert map_at_k(truth, TWO_USERS_PREDICTIONS, k=3) == pytest.approx(19 / 54)
    assert hit_rate_at_k(truth, TWO_USERS_PREDICTIONS, k=3) == pytest.approx(2 / 3)


def test_users_with_predictions_but_no_truth_are_ignored() -> None:
    predictions = pd.concat(
        [TWO_USERS_PREDICTIONS, predictions_frame({"u9": ranked("a", "b", "c")})],
        ignore_index=True,
    )
    for metric in METRICS:
        assert metric(TWO_USERS_TRUTH, predictions, k=3) == pytest.approx(
            metric(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
        )


def test_k_smaller_than_relevant_count() -> None:
    # u1 likes a, b, c, d and is shown [a, b, c]; k = 2 reads [a, b]: 2 hits.
    truth = truth_frame({"u1": ["a", "b", "c", "d"]})
    predictions = predictions_frame({"u1": ranked("a", "b", "c")})
    assert precision_at_k(truth, predictions, k=2) == pytest.approx(1.0)  # 2 / 2
    assert recall_at_k(truth, predictions, k=2) == pytest.approx(0.5)  # 2 / 4
    # AP = (1/1 + 2/2) / min(2, 4) = 1; NDCG = (1 + 1/log2 3) / (1 + 1/log2 3) = 1
    assert map_at_k(truth, predictions, k=2) == pytest.approx(1.0)
    assert ndcg_at_k(truth, predictions, k=2) == pytest.approx(1.0)


def test_short_list_is_not_excused_by_precision_but_is_by_map() -> None:
    # u1 likes a, b and is shown only [a]; k = 4.
    truth = truth_frame({"u1": ["a", "b"]})
    predictions = predictions_frame({"u1": ranked("a")})
    assert precision_at_k(truth, predictions, k=4) == pytest.approx(0.25)  # 1 / 4 slots
    assert map_at_k(truth, predictions, k=4) == pytest.approx(0.5)  # (1/1) / min(4, 2)


def test_duplicate_predictions_keep_the_best_rank_and_close_the_gap() -> None:
    # Shown [a, a, b] with ranks 1, 2, 3: the list is really [a, b], so b sits at position 2
    # and is inside k = 2. Precision 1/2, recall 1/1, AP = (1/2) / 1, NDCG = 1/log2(3) / 1.
    truth = truth_frame({"u1": ["b"]})
    predictions = predictions_frame({"u1": [("a", 1), ("a", 2), ("b", 3)]})
    assert precision_at_k(truth, predictions, k=2) == pytest.approx(0.5)
    assert recall_at_k(truth, predictions, k=2) == pytest.approx(1.0)
    assert map_at_k(truth, predictions, k=2) == pytest.approx(0.5)
    assert ndcg_at_k(truth, predictions, k=2) == pytest.approx(1 / LOG2_3)


def test_duplicate_with_worse_rank_first_in_the_frame_still_keeps_the_best() -> None:
    predictions = predictions_frame({"u1": [("b", 7), ("a", 2), ("b", 1)]})
    top = top_k(predictions, k=12)
    assert top["product_id"].tolist() == ["b", "a"]
    assert top["position"].tolist() == [1, 2]


def test_tied_ranks_are_broken_by_item_id_whatever_the_row_order() -> None:
    # b and a share rank 1: a comes first, so at k = 1 the list is [a] and b is missed.
    truth = truth_frame({"u1": ["b"]})
    forwards = predictions_frame({"u1": [("b", 1), ("a", 1)]})
    backwards = forwards.iloc[::-1].reset_index(drop=True)
    assert recall_at_k(truth, forwards, k=1) == 0.0
    assert recall_at_k(truth, backwards, k=1) == 0.0
    assert recall_at_k(truth, forwards, k=2) == 1.0


def test_rank_gaps_do_not_push_items_out_of_the_top_k() -> None:
    # Ranks 5 and 10 are positions 1 and 2.
    truth = truth_frame({"u1": ["b"]})
    predictions = predictions_frame({"u1": [("a", 5), ("b", 10)]})
    assert hit_rate_at_k(truth, predictions, k=2) == 1.0


def test_duplicate_truth_rows_count_once() -> None:
    # truth a, a, b is {a, b}: shown [a] at k = 1 gives recall 1/2, AP = 1 / min(1, 2) = 1.
    truth = truth_frame({"u1": ["a", "a", "b"]})
    predictions = predictions_frame({"u1": ranked("a")})
    assert recall_at_k(truth, predictions, k=1) == pytest.approx(0.5)
    assert map_at_k(truth, predictions, k=1) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_empty_predictions_score_zero(metric) -> None:
    empty = pd.DataFrame(
        {
            "user_id": pd.Series([], dtype="str"),
            "product_id": pd.Series([], dtype="str"),
            "rank": pd.Series([], dtype="int64"),
        }
    )
    assert metric(TWO_USERS_TRUTH, empty, k=12) == 0.0


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_empty_truth_scores_zero(metric) -> None:
    assert metric(TWO_USERS_TRUTH.iloc[:0], TWO_USERS_PREDICTIONS, k=12) == 0.0


def test_metrics_honour_custom_column_names() -> None:
    truth = TWO_USERS_TRUTH.rename(columns={"user_id": "customer", "product_id": "article"})
    predictions = TWO_USERS_PREDICTIONS.rename(
        columns={"user_id": "customer", "product_id": "article", "rank": "position_in_list"}
    )
    value = map_at_k(
        truth,
        predictions,
        user_col="customer",
        item_col="article",
        rank_col="position_in_list",
        k=3,
    )
    assert value == pytest.approx(19 / 36)


def test_metrics_refuse_bad_input_with_a_message() -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=0)
    with pytest.raises(ValueError, match=r"predictions lacks columns \['rank'\]"):
        precision_at_k(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS.drop(columns="rank"), k=3)
    with_null_rank = TWO_USERS_PREDICTIONS.astype({"rank": "float64"})
    with_null_rank.loc[0, "rank"] = np.nan
    with pytest.raises(ValueError, match="1 of 6 rows with a missing 'rank'"):
        precision_at_k(TWO_USERS_TRUTH, with_null_rank, k=3)


def test_ids_of_different_kinds_are_an_error_not_a_zero() -> None:
    truth = pd.DataFrame({"user_id": [1, 2], "product_id": ["a", "d"]})
    with pytest.raises(ValueError, match="different kinds"):
        recall_at_k(truth, TWO_USERS_PREDICTIONS, k=3)


def test_per_user_metrics_are_indexed_by_truth_users() -> None:
    scores = per_user_metrics(TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3)
    assert scores.index.tolist() == ["u1", "u2"]
    assert scores["n_relevant"].tolist() == [3, 1]
    assert scores["hits"].tolist() == [2, 1]
    assert scores["average_precision"].tolist() == pytest.approx([5 / 9, 1 / 2])


# --- coverage and evaluate_all --------------------------------------------------------------


def test_catalogue_coverage_counts_distinct_items_in_the_top_k() -> None:
    # k = 2: u1 shows {a, b}, u2 shows {a, d}; distinct {a, b, d} = 3 of 10 items.
    predictions = predictions_frame({"u1": ranked("a", "b", "c"), "u2": ranked("a", "d", "e")})
    assert catalogue_coverage(predictions, 10, k=2) == pytest.approx(0.3)
    # k = 3 adds c and e: 5 of 10.
    assert catalogue_coverage(predictions, 10, k=3) == pytest.approx(0.5)


def test_catalogue_coverage_refuses_a_catalogue_smaller_than_the_predictions() -> None:
    predictions = predictions_frame({"u1": ranked("a", "b", "c")})
    with pytest.raises(ValueError, match="more than the catalogue_size of 2"):
        catalogue_coverage(predictions, 2, k=3)


def test_evaluate_all_rows_match_the_metrics_schema() -> None:
    metrics = evaluate_all(
        TWO_USERS_TRUTH, TWO_USERS_PREDICTIONS, k=3, catalogue_size=10, model="popularity"
    )
    assert list(metrics.columns) == METRICS_SCHEMA.names
    table = pa.Table.from_pandas(metrics, schema=METRICS_SCHEMA, preserve_index=False)
    assert table.schema.remove_metadata() == METRICS_SCHEMA
    assert table.num_rows == 6

    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert values == pytest.approx(
        {
            "precision": 0.5,
            "recall": 5 / 6,
            "map": 19 / 36,
            "ndcg": (1.5 / (1.5 + 1 / LOG2_3) + 1 / LOG2_3) / 2,
            "hit_rate": 1.0,
            # u1 shows a, x, b and u2 shows y, d, z: 6 distinct items of 10
            "catalogue_coverage": 0.6,
        }
    )
    assert set(metrics["model"]) == {"popularity"}
    assert set(metrics["k"]) == {3}
    # Ranking metrics average over the 2 truth users, coverage over the 2 users with lists.
    assert metrics["n_users"].tolist() == [2] * 6


def test_evaluate_all_with_no_predictions_reports_zeros() -> None:
    empty = TWO_USERS_PREDICTIONS.iloc[:0]
    metrics = evaluate_all(TWO_USERS_TRUTH, empty, k=12, catalogue_size=10, model="nothing")
    assert metrics["value"].tolist() == [0.0] * 6
    assert metrics["n_users"].tolist() == [2, 2, 2, 2, 2, 0]
    pa.Table.from_pandas(metrics, schema=METRICS_SCHEMA, preserve_index=False)


# --- properties -----------------------------------------------------------------------------

users_st = st.sampled_from(["u1", "u2", "u3", "u4"])
items_st = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])


@st.composite
def truth_and_predictions(draw) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    truth_rows = draw(st.lists(st.tuples(users_st, items_st), min_size=1, max_size=20))
    prediction_rows = draw(st.lists(st.tuples(users_st, items_st, st.integers(1, 9)), max_size=30))
    truth = pd.DataFrame(truth_rows, columns=["user_id", "product_id"])
    predictions = pd.DataFrame(prediction_rows, columns=["user_id", "product_id", "rank"])
    return truth, predictions, draw(st.integers(1, 8))


def reference_scores(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> dict[str, float]:
    """The textbook definitions, one user at a time, to check the vectorised version against."""
    relevant = truth.groupby("user_id")["product_id"].apply(set).to_dict()
    totals = dict.fromkeys(["precision", "recall", "map", "ndcg", "hit_rate"], 0.0)
    for user, liked in relevant.items():
        rows = sorted(
            (rank, item) for u, item, rank in predictions.itertuples(index=False) if u == user
        )
        shown: list[str] = []
        for _, item in rows:
            if item not in shown:
                shown.append(item)
        shown = shown[:k]
        hits = [item in liked for item in shown]
        found = sum(hits)
        precisions = [sum(hits[: i + 1]) / (i + 1) for i, hit in enumerate(hits) if hit]
        dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(liked))))
        totals["precision"] += found / k
        totals["recall"] += found / len(liked)
        totals["map"] += sum(precisions) / min(k, len(liked))
        totals["ndcg"] += dcg / idcg
        totals["hit_rate"] += float(found > 0)
    return {name: total / len(relevant) for name, total in totals.items()}


@settings(max_examples=100, deadline=None)
@given(truth_and_predictions())
def test_vectorised_metrics_match_the_per_user_definitions(case) -> None:
    truth, predictions, k = case
    expected = reference_scores(truth, predictions, k)
    actual = {
        "precision": precision_at_k(truth, predictions, k=k),
        "recall": recall_at_k(truth, predictions, k=k),
        "map": map_at_k(truth, predictions, k=k),
        "ndcg": ndcg_at_k(truth, predictions, k=k),
        "hit_rate": hit_rate_at_k(truth, predictions, k=k),
    }
    assert actual == pytest.approx(expected)
    assert all(0.0 <= value <= 1.0 for value in actual.values())


@settings(max_examples=100, deadline=None)
@given(truth_and_predictions())
def test_perfect_predictions_score_one_when_everything_fits_in_k(case) -> None:
    truth, _, _ = case
    pairs = truth.drop_duplicates()
    perfect = pairs.assign(rank=pairs.groupby("user_id").cumcount() + 1)
    k = int(perfect["rank"].max())
    for metric in (recall_at_k, map_at_k, ndcg_at_k, hit_rate_at_k):
        assert metric(truth, perfect, k=k) == pytest.approx(1.0)


# --- temporal split -------------------------------------------------------------------------


def interactions_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "event_ts"])
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True)
    frame["weight"] = 1.0
    return frame


SPLIT_EVENTS = interactions_frame(
    [
        ("u1", "a", "2026-03-01 00:00"),
        ("u2", "b", "2026-03-05 12:00"),
        ("u1", "c", "2026-03-09 00:00"),  # exactly at the cutoff: test
        ("u3", "d", "2026-03-09 06:00"),  # u3 has no train events: cold
        ("u2", "e", "2026-03-08 23:59"),  # a minute before the cutoff: train
        ("u1", "f", "2026-03-10 00:00"),  # the latest event
    ]
)


def test_temporal_split_holds_out_the_last_calendar_days() -> None:
    # The data reaches 03-10; a 2-day hold-out is 03-09 and 03-10: cutoff 03-09 00:00,
    # which belongs to test.
    train, test = temporal_split(SPLIT_EVENTS, holdout_days=2)
    assert train["product_id"].tolist() == ["a", "b", "e"]
    assert test["product_id"].tolist() == ["c", "f"]
    assert list(train.columns) == list(SPLIT_EVENTS.columns)
    assert train.index.tolist() == [0, 1, 2]
    assert test.index.tolist() == [0, 1]


def daily_events(times_of_day: list[str]) -> pd.DataFrame:
    """One event a day from 03-01 to 03-10 for u1, at the given times of day in turn."""
    rows = [
        ("u1", f"p{day}", f"2026-03-{day:02d} {times_of_day[day % len(times_of_day)]}")
        for day in range(1, 11)
    ]
    return interactions_frame(rows)


@pytest.mark.parametrize(
    "times_of_day",
    [["00:00"], ["08:30", "23:59", "00:00", "12:00"]],
    ids=["midnight", "times_of_day"],
)
def test_temporal_split_holds_out_exactly_holdout_days_calendar_days(
    times_of_day: list[str],
) -> None:
    # Events stamped at midnight once held out holdout_days + 1 days (cutoff = last - N days
    # falls on a midnight event); by calendar day, 2 days are 03-09 and 03-10 either way.
    events = daily_events(times_of_day)
    train, test = temporal_split(events, holdout_days=2)
    assert sorted(test["event_ts"].dt.day.unique()) == [9, 10]
    assert sorted(train["event_ts"].dt.day.unique()) == list(range(1, 9))


def test_holdout_cutoff_is_midnight_starting_the_nth_last_calendar_day() -> None:
    for last in ["2026-03-10 00:00", "2026-03-10 13:45", "2026-03-10 23:59:59"]:
        cutoff = holdout_cutoff(pd.Timestamp(last, tz="UTC"), 2)
        assert cutoff == pd.Timestamp("2026-03-09 00:00", tz="UTC")
    assert holdout_cutoff(pd.Timestamp("2026-03-10 13:45"), 1) == pd.Timestamp("2026-03-10")
    with pytest.raises(ValueError, match="at least 1"):
        holdout_cutoff(pd.Timestamp("2026-03-10"), 0)


def test_temporal_split_keeps_cold_users_on_request() -> None:
    _, test = temporal_split(SPLIT_EVENTS, holdout_days=2, keep_cold_users=True)
    assert test["product_id"].tolist() == ["c", "d", "f"]


def test_temporal_split_is_deterministic() -> None:
    first = temporal_split(SPLIT_EVENTS, holdout_days=2)
    second = temporal_split(SPLIT_EVENTS.copy(), holdout_days=2)
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_temporal_split_fails_when_nothing_is_left_to_train_on() -> None:
    # Events fall on 10 calendar days (03-01 to 03-10); a 10-day hold-out puts all in test.
    with pytest.raises(FashionRecsError, match="lower holdout_days") as raised:
        temporal_split(SPLIT_EVENTS, holdout_days=10)
    message = str(raised.value)
    assert "2026-03-01 00:00:00+00:00" in message  # the cutoff and the first event
    assert "10 calendar days" in message
    with pytest.raises(FashionRecsError, match="no interactions to split"):
        temporal_split(SPLIT_EVENTS.iloc[:0], holdout_days=1)


def test_temporal_split_refuses_unparsed_timestamps() -> None:
    raw = SPLIT_EVENTS.assign(event_ts=SPLIT_EVENTS["event_ts"].astype(str))
    with pytest.raises(ValueError, match="expected timestamps"):
        temporal_split(raw, holdout_days=1)


def test_relevant_items_are_unique_sorted_pairs() -> None:
    test = pd.DataFrame({"user_id": ["u2", "u1", "u1", "u1"], "product_id": ["a", "b", "a", "b"]})
    truth = relevant_items(test)
    assert truth.to_dict("list") == {"user_id": ["u1", "u1", "u2"], "product_id": ["a", "b", "a"]}


def test_relevant_items_min_weight_needs_one_strong_event_not_a_sum() -> None:
    # (u1, a): two views of weight 1 (sum 2, strongest 1); (u1, b): one bag of weight 3.
    test = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1"],
            "product_id": ["a", "a", "b"],
            "weight": [1.0, 1.0, 3.0],
        }
    )
    truth = relevant_items(test, weight_col="weight", min_weight=2.0)
    assert truth.to_dict("list") == {"user_id": ["u1"], "product_id": ["b"]}
    with pytest.raises(ValueError, match="needs weight_col"):
        relevant_items(test, min_weight=2.0)


# --- baselines ------------------------------------------------------------------------------


POPULARITY_TRAIN = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u3", "u1", "u2"],
        "product_id": ["a", "a", "b", "c", "d"],
        "weight": [1.0, 1.0, 2.0, 3.0, 1.0],
    }
)


def test_popularity_sums_weights_and_breaks_ties_by_item_id() -> None:
    # Summed weight: c 3, a 1 + 1 = 2, b 2, d 1. a and b tie at 2: a first.
    predictions = popularity_predictions(POPULARITY_TRAIN, ["u9", "u1", "u9"], k=3)
    assert predictions["user_id"].tolist() == ["u9"] * 3 + ["u1"] * 3
    assert predictions["product_id"].tolist() == ["c", "a", "b"] * 2
    assert predictions["rank"].tolist() == [1, 2, 3] * 2
    assert predictions["score"].tolist() == [3.0, 2.0, 2.0] * 2


def test_popularity_counts_events_without_a_weight_column() -> None:
    # Event counts: a 2, b 1, c 1, d 1. b, c, d tie at 1: b, then c.
    train = POPULARITY_TRAIN.drop(columns="weight")
    predictions = popularity_predictions(train, ["u1"], k=3)
    assert predictions["product_id"].tolist() == ["a", "b", "c"]
    assert predictions["score"].tolist() == [2.0, 1.0, 1.0]


def test_popularity_with_fewer_items_than_k_returns_them_all() -> None:
    predictions = popularity_predictions(POPULARITY_TRAIN, ["u1"], k=12)
    assert predictions["product_id"].tolist() == ["c", "a", "b", "d"]


def test_popularity_predictions_are_scored_by_the_metrics() -> None:
    # Everyone is shown [c, a, b]; u1 liked a (position 2): recall 1, AP = (1/2) / 1.
    predictions = popularity_predictions(POPULARITY_TRAIN, ["u1"], k=3)
    truth = truth_frame({"u1": ["a"]})
    assert map_at_k(truth, predictions, k=3) == pytest.approx(0.5)


SEGMENT_TRAIN = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u6", "u6", "u6", "u6"],
        "product_id": ["p", "q", "p", "r", "r", "r", "s"],
    }
)
SEGMENT_USERS = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u3", "u4", "u5"],
        "age_group": ["18-24", "18-24", "55+", None, "18-24"],
        "region": ["north", "north", "south", "north", "north"],
    }
)


def test_segment_popularity_ranks_within_the_segment_and_tops_up_from_overall() -> None:
    # Overall counts: r 3, p 2, q 1, s 1 -> [r, p, q].
    # Segment (18-24, north) holds u1, u2 (and u5, who has no events): p 2, q 1 -> [p, q],
    # topped up with the best overall item it lacks: r.
    # u3's segment (55+, south) has no events, nor has 55+ or south: u3 gets overall.
    # u4 has no age group; region north (u1, u2 again) has events, so u4 gets north's list.
    predictions = segment_popularity_predictions(
        SEGMENT_TRAIN, SEGMENT_USERS, ["age_group", "region"], k=3
    )
    lists = predictions.groupby("user_id", sort=False)["product_id"].apply(list).to_dict()
    assert lists == {
        "u1": ["p", "q", "r"],
        "u2": ["p", "q", "r"],
        "u3": ["r", "p", "q"],
        "u4": ["p", "q", "r"],
        "u5": ["p", "q", "r"],
    }
    u1 = predictions[predictions["user_id"] == "u1"]
    assert u1["source"].tolist() == ["segment", "segment", "overall"]
    assert u1["score"].tolist() == [2.0, 1.0, 3.0]
    assert u1["rank"].tolist() == [1, 2, 3]
    assert set(predictions.loc[predictions["user_id"] == "u3", "source"]) == {"overall"}
    u4 = predictions[predictions["user_id"] == "u4"]
    assert u4["source"].tolist() == ["region", "region", "overall"]


def sources_of(predictions: pd.DataFrame) -> dict[str, list[str]]:
    return predictions.groupby("user_id", sort=False)["source"].apply(list).to_dict()


def lists_of(predictions: pd.DataFrame) -> dict[str, list[str]]:
    return predictions.groupby("user_id", sort=False)["product_id"].apply(list).to_dict()


def test_segment_popularity_serves_the_age_group_when_no_region_is_known(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The H&M export has no region: every user's region is missing. Age groups still count:
    # 18-24 (u1, u2): p 2, q 1 -> [p, q] + r; 55+ (u6): r 3, s 1 -> [r, s] + p;
    # 25-34 (u7) has no train events -> overall [r, p, q].
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u6", "u7"],
            "age_group": ["18-24", "18-24", "55+", "25-34"],
            "region": [None, None, None, None],
        }
    )
    with caplog.at_level("INFO", logger="fashion_recs.evaluate"):
        predictions = segment_popularity_predictions(
            SEGMENT_TRAIN, users, ["age_group", "region"], k=3
        )
    assert lists_of(predictions) == {
        "u1": ["p", "q", "r"],
        "u2": ["p", "q", "r"],
        "u6": ["r", "s", "p"],
        "u7": ["r", "p", "q"],
    }
    assert sources_of(predictions)["u6"] == ["age_group", "age_group", "overall"]
    assert set(sources_of(predictions)["u7"]) == {"overall"}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'region'" in warnings[0] and "all 4 users" in warnings[0]
    assert "segment 0, age_group 3, region 0, overall 1" in caplog.text


def test_segment_popularity_falls_back_level_by_level(caplog: pytest.LogCaptureFixture) -> None:
    train = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u6", "u6", "u6", "u6"],
            "product_id": ["p", "q", "p", "r", "r", "r", "s"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u5", "u6", "u7"],
            "age_group": ["18-24", "18-24", "18-24", None, "25-34", "55+", None],
            "region": ["north", "south", "east", "north", None, "west", None],
        }
    )
    with caplog.at_level("INFO", logger="fashion_recs.evaluate"):
        predictions = segment_popularity_predictions(train, users, ["age_group", "region"], k=3)
    # Overall: r 3, p 2, q 1, s 1 -> [r, p, q].
    assert lists_of(predictions) == {
        "u1": ["p", "q", "r"],  # (18-24, north): p, q
        "u2": ["p", "r", "q"],  # (18-24, south): p, topped up with r, q
        "u3": ["p", "q", "r"],  # (18-24, east) has no events; 18-24 (u1, u2): p 2, q 1
        "u4": ["p", "q", "r"],  # no age group; north (u1): p, q
        "u5": ["r", "p", "q"],  # 25-34 has no events and the region is unknown
        "u6": ["r", "s", "p"],  # (55+, west): r 3, s 1
        "u7": ["r", "p", "q"],  # nothing known
    }
    sources = sources_of(predictions)
    assert sources["u2"] == ["segment", "overall", "overall"]
    assert sources["u3"] == ["age_group", "age_group", "overall"]
    assert sources["u4"] == ["region", "region", "overall"]
    assert set(sources["u5"]) == set(sources["u7"]) == {"overall"}
    assert predictions.loc[predictions["user_id"] == "u3", "score"].tolist() == [2.0, 1.0, 3.0]
    assert "segment 3, age_group 1, region 1, overall 2" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_segment_levels_drop_columns_from_the_end_then_single_columns() -> None:
    assert segment_levels(["age_group", "region"]) == [
        ("segment", ["age_group", "region"]),
        ("age_group", ["age_group"]),
        ("region", ["region"]),
    ]
    assert segment_levels(["a", "b", "c"]) == [
        ("segment", ["a", "b", "c"]),
        ("a_b", ["a", "b"]),
        ("a", ["a"]),
        ("b", ["b"]),
        ("c", ["c"]),
    ]
    assert segment_levels(["a"]) == [("segment", ["a"])]


def test_segment_popularity_keeps_the_users_frame_order() -> None:
    shuffled = SEGMENT_USERS.iloc[[4, 2, 0, 3, 1]]
    predictions = segment_popularity_predictions(
        SEGMENT_TRAIN, shuffled, ["age_group", "region"], k=2
    )
    # Two items each, users in the order given.
    order = predictions.drop_duplicates("user_id")["user_id"].tolist()
    assert order == ["u5", "u3", "u1", "u4", "u2"]
    assert predictions.groupby("user_id").size().eq(2).all()


def test_segment_popularity_refuses_users_with_two_segments() -> None:
    users = pd.concat([SEGMENT_USERS, SEGMENT_USERS.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="1 duplicate 'user_id'"):
        segment_popularity_predictions(SEGMENT_TRAIN, users, ["age_group"], k=3)


def reference_segment_popularity(
    train: pd.DataFrame, users: pd.DataFrame, cols: list[str], k: int
) -> pd.DataFrame:
    """Segment popularity spelled out user by user: the definition the vectorised version
    must match (first level whose columns are known and whose group has train events, its
    top k by summed weight then item id, topped up from the overall ranking)."""

    def ranking(events: pd.DataFrame) -> list[tuple[str, float]]:
        scores = events.groupby("product_id")["weight"].sum()
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))

    overall = ranking(train)[:k]
    segment_of = train.merge(users, on="user_id", how="inner")
    rows = []
    for user in users.itertuples(index=False):
        picked: list[tuple[str, float, str]] = []
        for level, level_cols in segment_levels(cols):
            values = [getattr(user, c) for c in level_cols]
            if any(pd.isna(v) for v in values):
                continue
            mask = np.ones(len(segment_of), dtype=bool)
            for c, v in zip(level_cols, values, strict=True):
                mask &= (segment_of[c] == v).to_numpy()
            if mask.any():
                picked = [(i, s, level) for i, s in ranking(segment_of[mask])[:k]]
                break
        have = {i for i, _, _ in picked}
        picked += [(i, s, "overall") for i, s in overall if i not in have]
        for rank, (item, score, source) in enumerate(picked[:k], start=1):
            rows.append((user.user_id, item, rank, score, source))
    return pd.DataFrame(rows, columns=["user_id", "product_id", "rank", "score", "source"])


def test_segment_popularity_equals_its_definition_on_random_data() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    items = [f"p{i:03d}" for i in range(60)]
    train = pd.DataFrame(
        {
            "user_id": pd.array([f"u{i:03d}" for i in rng.integers(0, 150, n)], dtype="str"),
            "product_id": pd.array(rng.choice(items, n), dtype="str"),
            # Whole weights, so equal sums tie exactly and the item id decides.
            "weight": rng.integers(1, 4, n).astype(float),
        }
    )
    ages = np.array(["18-24", "25-34", None], dtype=object)
    regions = np.array(["north", "south", "east", None], dtype=object)
    users = pd.DataFrame(
        {
            # Users without train events, and some train users left out.
            "user_id": [f"u{i:03d}" for i in range(20, 170)],
            "age_group": ages[rng.integers(0, 3, 150)],
            "region": regions[rng.integers(0, 4, 150)],
        }
    )

    got = segment_popularity_predictions(train, users, ["age_group", "region"], 12)
    expected = reference_segment_popularity(train, users, ["age_group", "region"], 12)

    assert got["product_id"].dtype == train["product_id"].dtype
    assert set(got["source"]) >= {"segment", "age_group", "region", "overall"}
    pd.testing.assert_frame_equal(
        got.astype({"product_id": object, "rank": np.int64}),
        expected.astype({"product_id": object}),
        check_dtype=False,
    )


def test_metrics_do_not_depend_on_the_truth_being_sorted() -> None:
    truth = pd.DataFrame({"user_id": ["b", "a", "b", "a", "b"], "product_id": list("xyzxy")})
    predictions = pd.DataFrame(
        {"user_id": ["a", "a", "b", "b"], "product_id": list("xqzy"), "rank": [1, 2, 1, 2]}
    )
    ordered = truth.sort_values(["user_id", "product_id"]).reset_index(drop=True)

    shuffled = per_user_metrics(truth, predictions, k=2)

    pd.testing.assert_frame_equal(shuffled, per_user_metrics(ordered, predictions, k=2))
    assert shuffled["hits"].tolist() == [1, 2]


def reference_ranked_items(
    events: pd.DataFrame, by: list[str], k: int, weight_col: str | None
) -> pd.DataFrame:
    """The top k spelled out with pandas' group-by and a stable sort on the columns."""
    keys = [*by, "product_id"]
    if weight_col is None:
        scores = events.groupby(keys, sort=False, observed=True).size()
    else:
        scores = events.groupby(keys, sort=False, observed=True)[weight_col].sum()
    scores = scores.astype(np.float64).rename("score").reset_index()
    scores = scores.sort_values(
        [*by, "score", "product_id"], ascending=[*([True] * len(by)), False, True], kind="mergesort"
    )
    if by:
        scores["rank"] = scores.groupby(by, sort=False, observed=True).cumcount() + 1
    else:
        scores["rank"] = np.arange(1, len(scores) + 1)
    return scores[scores["rank"] <= k].reset_index(drop=True)


@pytest.mark.parametrize("weight_col", ["weight", None])
@pytest.mark.parametrize("by", [[], ["age_group"], ["age_group", "region"]])
def test_ranked_items_equal_a_group_by_and_sort_on_the_columns(
    by: list[str], weight_col: str | None
) -> None:
    rng = np.random.default_rng(11)
    n = 4000
    ages = np.array(["25-34", "18-24", None], dtype=object)
    events = pd.DataFrame(
        {
            "product_id": pd.array([f"p{i:03d}" for i in rng.integers(0, 80, n)], dtype="str"),
            "weight": rng.integers(1, 4, n).astype(float),
            # A plain column with missing values, and a categorical whose categories are not
            # in lexical order (groups come in category order).
            "age_group": ages[rng.integers(0, 3, n)],
            "region": pd.Categorical.from_codes(
                rng.integers(-1, 3, n), categories=["south", "east", "north"]
            ),
        }
    )
    for k in (1, 5, 100):
        got = evaluate_module._ranked_items(
            events, by, k, item_col="product_id", weight_col=weight_col
        )
        expected = reference_ranked_items(events, by, k, weight_col)
        pd.testing.assert_frame_equal(got, expected)
    empty = evaluate_module._ranked_items(
        events.iloc[:0], by, 3, item_col="product_id", weight_col=weight_col
    )
    assert empty.empty and list(empty.columns) == [*by, "product_id", "score", "rank"]
