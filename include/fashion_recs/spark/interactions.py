"""Interaction expressions the Spark stages share, written to match the local engine's.

Time is read as integer microseconds since the epoch (`unix_micros`), never through the
session time zone, so a cluster in any zone computes the local engine's UTC numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from fashion_recs.stages.interactions import SECONDS_PER_DAY

if TYPE_CHECKING:
    from pyspark.sql import Column

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS_PER_SECOND = 1_000_000


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def decay_weight(weight: Column, ts: Column, as_of: datetime, half_life_days: float) -> Column:
    """`stages.interactions.decay_weight` in Spark: weight * 0.5 ** (age in days / half-life),
    the age counted in whole seconds (as polars' `total_seconds` does), events after as-of
    at full weight."""
    from pyspark.sql import functions as F

    age_us = F.lit(epoch_micros(as_of)) - F.unix_micros(ts)
    # Whole seconds, truncated toward zero like polars: the remainder (sign of the dividend,
    # as in Java) off first, so the division is exact.
    age_seconds = (age_us - age_us % MICROS_PER_SECOND) / MICROS_PER_SECOND
    age_days = F.greatest(age_seconds / F.lit(SECONDS_PER_DAY), F.lit(0.0))
    return weight * F.pow(F.lit(0.5), age_days / F.lit(float(half_life_days)))
