"""The seed's `log_user_interaction`: interactions captured between runs, taken in by the next.

A shop front-end (or the reference service) records what a shopper just did, typically a new
shopper's first clicks, in the `interaction_log` table of the results database. It is an
ordinary append-only table beside the published views (not versioned by publishing): the
next pipeline run reads the rows up to its as-of time into the `interaction_log` artifact and
the `interactions` stage weighs them like exported events, so a shopper who was new yesterday
is a known user today.

Rows are validated on the way in (ids and names must be non-empty, the timestamp must carry a
timezone) and read back by event time, so a rerun of the same run reads the same rows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fashion_recs.contract import INTERACTION_LOG_SCHEMA
from fashion_recs.errors import FashionRecsError

log = logging.getLogger(__name__)

TABLE = "interaction_log"
# The events artifact's product_slot for rows that came from the log, not from an export.
LOG_SLOT = "interaction_log"
MAX_ID_LENGTH = 200


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("user_id", sa.String(MAX_ID_LENGTH), nullable=False, index=True),
        sa.Column("product_id", sa.String(MAX_ID_LENGTH), nullable=False),
        sa.Column("event_name", sa.String(100), nullable=False),
        sa.Column("button_name", sa.String(100)),
        sa.Column("event_ts", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    )


def ensure_table(engine: Engine) -> sa.Table:
    """Create `interaction_log` if it does not exist yet; return its definition."""
    metadata = sa.MetaData()
    table = _table(metadata)
    metadata.create_all(engine, tables=[table], checkfirst=True)
    return table


def checked_text(name: str, value: Any, *, required: bool = True) -> str | None:
    """An id or name as the log stores it (stripped), or the error a caller reports: one rule
    for the library's `log_user_interaction` and the service's POST /interactions."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        raise FashionRecsError(
            f"log_user_interaction: {name} must be a non-empty string of at most "
            f"{MAX_ID_LENGTH} characters, got {value!r}"
        )
    return value.strip()


def log_user_interaction(
    engine: Engine,
    user_id: str,
    product_id: str,
    event_name: str,
    button_name: str | None = None,
    event_ts: datetime | None = None,
) -> int:
    """Append one interaction; returns its id. `event_ts` defaults to now (UTC)."""
    when = event_ts or datetime.now(UTC)
    if when.tzinfo is None:
        raise FashionRecsError(
            "log_user_interaction: event_ts needs a timezone (use datetime.now(UTC))"
        )
    row = {
        "user_id": checked_text("user_id", user_id),
        "product_id": checked_text("product_id", product_id),
        "event_name": checked_text("event_name", event_name),
        "button_name": checked_text("button_name", button_name, required=False),
        "event_ts": when.astimezone(UTC),
        "logged_at": datetime.now(UTC),
    }
    table = ensure_table(engine)
    with engine.begin() as conn:
        new_id = conn.execute(table.insert().values(**row)).inserted_primary_key[0]
    log.info("interaction logged: %s %s %s", row["user_id"], row["event_name"], row["product_id"])
    return int(new_id)


def read_interaction_log(engine: Engine, since: datetime, until: datetime) -> pa.Table:
    """Rows with since <= event_ts <= until, in the INTERACTION_LOG schema, ordered by time
    then id (so a rerun reads the same table). A database without the table has no rows."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(TABLE):
            return INTERACTION_LOG_SCHEMA.empty_table()
    table = _table(sa.MetaData())
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    query = (
        sa.select(table)
        .where(table.c.event_ts >= since, table.c.event_ts <= until)
        .order_by(table.c.event_ts, table.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return pa.Table.from_pydict(
        {
            "user_id": [r["user_id"] for r in rows],
            "event_name": [r["event_name"] for r in rows],
            "button_name": [r["button_name"] for r in rows],
            "event_ts": [_utc(r["event_ts"]) for r in rows],
            "product_id": [r["product_id"] for r in rows],
            "product_slot": [LOG_SLOT] * len(rows),
        },
        schema=INTERACTION_LOG_SCHEMA,
    )


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
