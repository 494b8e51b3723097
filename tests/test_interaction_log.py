"""log_user_interaction and the next run's read of it, on SQLite and the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fashion_recs.contract import INTERACTION_LOG_SCHEMA
from fashion_recs.errors import FashionRecsError
from fashion_recs.interaction_log import LOG_SLOT, log_user_interaction, read_interaction_log

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def test_logged_rows_read_back_by_time_window(engine) -> None:
    assert read_interaction_log(engine, T0 - timedelta(days=1), T0).num_rows == 0  # no table yet
    first = log_user_interaction(engine, "u-new", "p1", "product_details_page_view", None, T0)
    second = log_user_interaction(
        engine, "u-new", "p2", "button_click", "bag_button", T0 + timedelta(minutes=5)
    )
    log_user_interaction(engine, "u-late", "p3", "purchase", None, T0 + timedelta(days=2))
    assert second > first
    table = read_interaction_log(engine, T0 - timedelta(days=1), T0 + timedelta(hours=1))
    assert table.schema == INTERACTION_LOG_SCHEMA
    assert table.to_pylist() == [
        {
            "user_id": "u-new",
            "event_name": "product_details_page_view",
            "button_name": None,
            "event_ts": T0,
            "product_id": "p1",
            "product_slot": LOG_SLOT,
        },
        {
            "user_id": "u-new",
            "event_name": "button_click",
            "button_name": "bag_button",
            "event_ts": T0 + timedelta(minutes=5),
            "product_id": "p2",
            "product_slot": LOG_SLOT,
        },
    ]
    # Another timezone names the same instant.
    berlin = T0.astimezone(ZoneInfo("Europe/Berlin"))
    assert read_interaction_log(engine, berlin, berlin).num_rows == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": ""}, "user_id"),
        ({"product_id": None}, "product_id"),
        ({"event_name": "x" * 500}, "event_name"),
        ({"event_ts": datetime(2026, 11, 2)}, "timezone"),
    ],
)
def test_bad_interactions_are_refused_with_a_message(engine, kwargs, message) -> None:
    args = {"user_id": "u", "product_id": "p", "event_name": "purchase", "event_ts": T0}
    with pytest.raises(FashionRecsError, match=message):
        log_user_interaction(engine, **{**args, **kwargs})
