"""The personalisation hold-out: one cutoff, shared with the evaluate stage's split."""

from __future__ import annotations

import pandas as pd

from fashion_recs.evaluate import holdout_cutoff, temporal_split
from fashion_recs.personal.evaluation import holdout_split


def midnight_events() -> pd.DataFrame:
    """u1 and u2 each touch one product a day, 03-01 to 03-10, stamped at midnight."""
    rows = [
        (user, f"p{day}", pd.Timestamp(f"2026-03-{day:02d}", tz="UTC"))
        for day in range(1, 11)
        for user in ("u1", "u2")
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "event_ts"])
    frame["weight"] = 1.0
    return frame


def test_holdout_split_holds_out_the_last_calendar_days_at_the_shared_cutoff() -> None:
    events = midnight_events()
    items = pd.Index(sorted(events["product_id"].unique()), name="product_id")
    split = holdout_split(events, items, holdout_days=2, half_life_days=30.0)
    assert split.cutoff == pd.Timestamp("2026-03-09", tz="UTC")
    assert split.cutoff == holdout_cutoff(events["event_ts"].max(), 2)
    assert split.train["event_ts"].max() < split.cutoff
    assert set(split.truth["product_id"]) == {"p9", "p10"}
    train, _ = temporal_split(events, 2)
    pd.testing.assert_frame_equal(split.train, train)
