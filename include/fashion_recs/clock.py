"""The run's notion of "now": everything up to the end of the as-of day (UTC) is the past.

A run for logical date D sees the data up to D 23:59:59 UTC, whatever the wall clock says, so a
backfill of an old date computes what a run on that date would have computed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time


def as_of_timestamp(as_of: date) -> datetime:
    """The end of the as-of day, UTC."""
    return datetime.combine(as_of, time.max, tzinfo=UTC)
