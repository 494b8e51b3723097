"""Publishing a run's tables so readers switch from the old run to the new one atomically.

Readers (shop front-ends, the reference service) query stable names: `products`,
`popular_products`, `user_segments`, ... Each stable name is a VIEW over a physical table that
belongs to one publish (`popular_products__r000012`). A publish:

1. takes the database's publish lock, so publishes never overlap (PostgreSQL: a session advisory
   lock on a dedicated connection; SQLite: an exclusive `flock` on `<db file>.publish.lock`; an
   in-memory SQLite database has a single user and needs none). It is held until step 5 is done;
2. refuses a retailer other than the one whose runs already went live in this database (status
   `published`, `superseded` or `expired`): the views and retention are shared by everything in
   one database, so each retailer needs its own database (SQLite file) or PostgreSQL schema;
3. records itself in `runs` with status `loading` and gets a sequence number, then loads every
   physical table of that sequence and checks its row count (PostgreSQL: COPY);
4. in ONE transaction checks that no newer run went live meanwhile (a second line of defence
   behind the lock), re-points every view, marks the run `published` (an earlier publish of the
   same run_id becomes `superseded`), replaces that run_id's metrics in `run_metrics` and
   recreates the `current_run` view;
5. retention: drops the physical tables of superseded runs and of published runs older than the
   last `keep_runs` (both become `expired`), and the leftovers of every earlier publish that
   never went live: `loading` runs (their publisher was killed mid-load, since under the lock no
   other publisher is running) become `abandoned`; `failed` runs keep their status and error,
   and lose any tables their own clean-up could not drop.

A refused retailer records nothing. If anything fails after step 3 recorded the run and before
step 4 commits (a refusal in step 4 included), the run's tables are dropped, the run is marked
`failed`, and readers never noticed: they still read what they read before. Both
SQLite (transactional DDL once the driver is told not to manage transactions itself) and
PostgreSQL give readers the old run or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fashion_recs.errors import DatabaseUnavailable, PublishError, PublishLockTimeout

log = logging.getLogger(__name__)

RUNS_TABLE = "runs"
PROGRESS_EVERY_S = 10.0
SQLITE_ROWS_PER_BATCH = 100_000
CSV_ROWS_PER_BLOCK = 50_000
METRICS_TABLE = "run_metrics"
CURRENT_RUN_VIEW = "current_run"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_")
_PHYSICAL_RE = re.compile(r"^([a-z0-9_]{1,40})__r(\d{6,})$")
# Key of the PostgreSQL advisory lock that serialises publishes into one database.
PG_PUBLISH_LOCK_KEY = 0x66725F7075626C  # "fr_publ"
# Runs that went live at some point: their retailer owns the database.
_LIVE_STATUSES = ("published", "superseded", "expired")


@dataclass(frozen=True)
class TableSpec:
    """A table to publish: its stable name, data and the columns worth an index."""

    name: str
    data: pa.Table
    index_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or set(self.name) - _NAME_OK or len(self.name) > 40:
            raise ValueError(f"table name {self.name!r} must be lower_snake_case, <= 40 chars")


def physical_name(name: str, seq: int) -> str:
    return f"{name}__r{seq:06d}"


def make_engine(
    url: str,
    *,
    connect_timeout_s: int = 10,
    statement_timeout_s: int | None = None,
    pool_timeout_s: float = 10.0,
) -> Engine:
    """An engine whose transactions really cover DDL, and whose SQLite readers never block.

    A database that is down or frozen fails fast instead of hanging: connecting gives up
    after `connect_timeout_s`, a statement after `statement_timeout_s` (PostgreSQL; SQLite
    waits at most that long for a lock), and waiting for a pooled connection after
    `pool_timeout_s`.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    options: dict[str, Any] = {"future": True}
    if url.startswith("postgresql"):
        connect_args: dict[str, Any] = {"connect_timeout": connect_timeout_s}
        if statement_timeout_s:
            connect_args["options"] = f"-c statement_timeout={statement_timeout_s * 1000}"
        options.update(connect_args=connect_args, pool_timeout=pool_timeout_s, pool_pre_ping=True)
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        busy_ms = 1000 * (statement_timeout_s or 30)

        # pysqlite neither BEGINs before DDL nor lets SQLAlchemy do it: take over (SQLAlchemy's
        # documented recipe), and use WAL so readers keep reading during a publish.
        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password hidden, for messages."""
    return engine.url.render_as_string(hide_password=True)


def unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailable:
    """A database error that is the database's state (down, frozen), not our data."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    detail = first[0][:300] if first else type(exc).__name__
    return DatabaseUnavailable(
        f"the results database {safe_url(engine)} is not available ({detail}). Nothing was "
        "published; readers stay on the previous run. The task is retried; check the database."
    )


def check_text(tables: Iterable[TableSpec]) -> None:
    """Fail before anything is loaded when a text column holds a NUL, which PostgreSQL text
    cannot store (the load would fail at the very end with an encoding error)."""
    for spec in tables:
        for name, column in zip(spec.data.column_names, spec.data.columns, strict=True):
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                continue
            hits = pc.sum(pc.cast(pc.match_substring(column, "\x00"), pa.int64())).as_py()
            if hits:
                raise PublishError(
                    f"table {spec.name!r}, column {name!r}: {hits} value(s) hold a NUL byte, "
                    "which the database cannot store; nothing was published. The stage that "
                    "made this column should have removed control characters: report it."
                )


def _sql_type(arrow_type: pa.DataType) -> sa.types.TypeEngine:
    if pa.types.is_boolean(arrow_type):
        return sa.Boolean()
    if pa.types.is_integer(arrow_type):
        return sa.BigInteger() if arrow_type.bit_width > 32 else sa.Integer()
    if pa.types.is_floating(arrow_type):
        return sa.Double()
    if pa.types.is_timestamp(arrow_type):
        return sa.DateTime(timezone=arrow_type.tz is not None)
    if pa.types.is_date(arrow_type):
        return sa.Date()
    return sa.Text()  # strings, and lists stored as JSON text


def _sql_table(name: str, schema: pa.Schema, metadata: sa.MetaData) -> sa.Table:
    columns = [sa.Column(f.name, _sql_type(f.type), nullable=f.nullable) for f in schema]
    return sa.Table(name, metadata, *columns)


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _json_text(column: pa.ChunkedArray) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())


def _loadable(table: pa.Table) -> pa.Table:
    """The table as the database stores it: list columns as JSON text, NaN as NULL."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if _is_list(field.type):
            column = _json_text(column)
        elif pa.types.is_floating(field.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, field.type), column)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _rows(table: pa.Table) -> Iterable[tuple[Any, ...]]:
    """Rows as Python values (SQLite's executemany)."""
    return zip(*(column.to_pylist() for column in _loadable(table).columns), strict=True)


class _LoadProgress:
    """A table load's progress line every PROGRESS_EVERY_S: rows so far, rate, time left
    (a list table of a large retailer takes minutes on SQLite)."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.started = self.last = time.monotonic()

    def done(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S or rows >= self.total:
            return
        self.last = now
        rate = rows / max(now - self.started, 1e-9)
        log.info(
            "publish: loading %s: %d/%d rows (%.0f rows/s, ~%.0f s left)",
            self.name,
            rows,
            self.total,
            rate,
            (self.total - rows) / max(rate, 1e-9),
        )


def _csv_blocks(table: pa.Table, rows_per_block: int = CSV_ROWS_PER_BLOCK) -> Iterator[bytes]:
    """The table as PostgreSQL COPY CSV, a block at a time. Arrow quotes every string, so an
    empty string stays "" while NULL is an empty field, and writes floats so they parse
    back to the same double."""
    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    for offset in range(0, table.num_rows, rows_per_block):
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table.slice(offset, rows_per_block), sink, options)
        yield sink.getvalue().to_pybytes()


def _bulk_load(conn: Connection, table: sa.Table, data: pa.Table) -> None:
    """Load `data` into `table`: on PostgreSQL one COPY of Arrow-written CSV (no per-row
    Python work, so a publish takes little CPU from the services reading the database)."""
    if data.num_rows == 0:
        return
    progress = _LoadProgress(table.name, data.num_rows)
    if conn.dialect.name == "postgresql":
        names = ", ".join(f'"{c.name}"' for c in table.columns)
        driver_conn = conn.connection.driver_connection
        sql = f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT csv)'
        with driver_conn.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for blocks, block in enumerate(_csv_blocks(_loadable(data), CSV_ROWS_PER_BLOCK), 1):
                copy.write(block)
                progress.done(blocks * CSV_ROWS_PER_BLOCK)
        return
    # In batches: one executemany of every row held each row as a dict at once. Rows of
    # text and numbers go to the driver as they are (SQLAlchemy's per-row parameter work was
    # three quarters of the load); dates and times keep SQLAlchemy's storage format.
    keys = [c.name for c in table.columns]
    plain = not any(pa.types.is_temporal(f.type) for f in data.schema)
    names = ", ".join(f'"{key}"' for key in keys)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(keys))})'
    for offset in range(0, data.num_rows, SQLITE_ROWS_PER_BATCH):
        batch = data.slice(offset, SQLITE_ROWS_PER_BATCH)
        if plain:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.executemany(sql, _rows(batch))
            cursor.close()
        else:
            rows = [dict(zip(keys, row, strict=True)) for row in _rows(batch)]
            conn.execute(table.insert(), rows)
        progress.done(offset + batch.num_rows)


def _metadata_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    runs = sa.Table(
        RUNS_TABLE,
        metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("retailer", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("tables", sa.Text),
        sa.Column("summary", sa.Text),
        sa.Column("metrics", sa.Text),
        sa.Column("error", sa.Text),
    )
    metrics = sa.Table(
        METRICS_TABLE,
        metadata,
        sa.Column("seq", sa.Integer, nullable=False, index=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("k", sa.Integer),
        sa.Column("value", sa.Double, nullable=False),
        sa.Column("n_users", sa.BigInteger, nullable=False),
    )
    return runs, metrics


def _drop_tables(engine: Engine, names: Iterable[str]) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')


def _sqlite_lock_path(engine: Engine) -> str | None:
    """`<db file>.publish.lock`, or None for an in-memory database (nobody else can publish)."""
    database = engine.url.database or ""
    if database.startswith("file:"):  # URI filename (?uri=true)
        if "mode=memory" in database or "mode=memory" in str(engine.url.query.get("mode", "")):
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:"):
        return None
    return f"{database}.publish.lock"


def _holder() -> str:
    """Who holds a publish lock: host, pid and since when (UTC)."""
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"host {socket.gethostname()[:24]} pid {os.getpid()} since {since}"


LOCK_POLL_S = 0.2


def _pg_holder(conn: Connection) -> str:
    row = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = CAST(:key AS bigint)"
        ),
        {"key": PG_PUBLISH_LOCK_KEY},
    ).first()
    if row is None:
        return "unknown (the lock was released meanwhile)"
    return (
        f"{row.application_name or 'a session'} (backend pid {row.pid}, client {row.client_addr})"
    )


@contextlib.contextmanager
def _publish_lock(engine: Engine, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the database's publish lock: one publish at a time, from allocation to retention.

    PostgreSQL: a session-level advisory lock (per database) on a dedicated autocommit
    connection, whose application_name says who holds it. SQLite: an exclusive `flock` on a
    lock file next to the database file, which says who holds it; the OS releases it when the
    process dies, as PostgreSQL does when the session ends. A stopped holder (SIGSTOP, a frozen
    container) releases nothing: after `timeout_s` this fails, naming the holder.
    """
    deadline = time.monotonic() + timeout_s
    if engine.dialect.name == "postgresql":
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        locked = False
        try:
            key = {"key": PG_PUBLISH_LOCK_KEY}
            try_lock = sa.text("SELECT pg_try_advisory_lock(CAST(:key AS bigint))")
            waited = False
            while not (locked := conn.execute(try_lock, key).scalar_one()):
                if not waited:
                    log.info("publish: another publish into this database is running; waiting")
                    waited = True
                if time.monotonic() > deadline:
                    raise PublishLockTimeout(
                        f"publish: waited {timeout_s:.0f} s for the publish lock of "
                        f"{safe_url(engine)}, held by {_pg_holder(conn)}. If that publisher is "
                        "stopped or gone, end its session (pg_terminate_backend) and rerun; "
                        "publish.lock_timeout_s sets the wait."
                    )
                time.sleep(LOCK_POLL_S)
            conn.execute(
                sa.text("SELECT set_config('application_name', :name, false)"),
                {"name": f"fashion-recs publish {_holder()}"[:63]},
            )
            yield
        finally:
            try:
                if locked:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(CAST(:key AS bigint))"), key)
            except Exception:
                # Never hand a connection that may still hold the lock back to the pool: closing
                # the session releases the lock.
                log.warning("publish: could not release the publish lock; closing its session")
                conn.invalidate()
            finally:
                conn.close()
        return
    if engine.dialect.name == "sqlite":
        path = _sqlite_lock_path(engine)
        if path is None:
            yield
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        log.info("publish: another publish into this database is running; waiting")
                        waited = True
                    if time.monotonic() > deadline:
                        holder = os.pread(fd, 300, 0).decode(errors="replace").strip()
                        raise PublishLockTimeout(
                            f"publish: waited {timeout_s:.0f} s for the publish lock {path}, "
                            f"held by {holder or 'an unknown process'}. If that publisher is "
                            "stopped or gone, end it and rerun; publish.lock_timeout_s sets "
                            "the wait."
                        ) from None
                    time.sleep(LOCK_POLL_S)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder().encode() + b"\n", 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    log.warning("publish: no publish lock for dialect %s", engine.dialect.name)
    yield


def _before_switch(seq: int) -> None:
    """Called between loading seq's tables and switching the views to them; a no-op.

    A seam: tests pause a publish here to overlap it with another one.
    """


def _check_retailer(conn: Connection, runs: sa.Table, retailer: str) -> None:
    owners = set(
        conn.execute(
            sa.select(runs.c.retailer).distinct().where(runs.c.status.in_(_LIVE_STATUSES))
        ).scalars()
    )
    others = sorted(owners - {retailer})
    if others:
        raise PublishError(
            f"this database already holds published runs of retailer "
            f"{', '.join(repr(o) for o in others)}; "
            f"refusing to publish retailer {retailer!r} into it, because the views and the "
            "retention of old runs are shared by everything in one database. Use a separate "
            "database (SQLite file) or PostgreSQL schema per retailer"
        )


def publish_run(
    engine: Engine,
    *,
    run_id: str,
    retailer: str,
    tables: list[TableSpec],
    summary: Mapping[str, Any],
    metrics: list[Mapping[str, Any]],
    keep_runs: int = 3,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Publish `tables` under their stable names; return the publish record.

    Waits up to `lock_timeout_s` for any other publish into the same database to finish
    first. Raises PublishError (readers untouched) when a text column holds a NUL, when the
    database belongs to another retailer, when loading fails, or when a newer run went live
    while this one was loading; PublishLockTimeout naming the holder of the lock; and
    DatabaseUnavailable (retried by the task) when the database is down or does not answer.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1 (the live run), not {keep_runs}")
    check_text(tables)
    try:
        return _publish(
            engine, run_id, retailer, tables, summary, metrics, keep_runs, lock_timeout_s
        )
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise unavailable(engine, exc) from None


def _publish(
    engine: Engine,
    run_id: str,
    retailer: str,
    tables: list[TableSpec],
    summary: Mapping[str, Any],
    metrics: list[Mapping[str, Any]],
    keep_runs: int,
    lock_timeout_s: float,
) -> dict[str, Any]:
    metadata = sa.MetaData()
    runs, run_metrics = _metadata_tables(metadata)
    with _publish_lock(engine, lock_timeout_s):
        metadata.create_all(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            _check_retailer(conn, runs, retailer)
            seq = conn.execute(
                runs.insert()
                .values(run_id=run_id, retailer=retailer, status="loading", created_at=now)
                .returning(runs.c.seq)
            ).scalar_one()

        _load_and_switch(
            engine,
            runs,
            run_metrics,
            seq,
            run_id=run_id,
            tables=tables,
            summary=summary,
            metrics=metrics,
        )
        expired, cleaned = _expire(engine, runs, keep_runs, newest_seq=seq)
    log.info(
        "publish: run %s is live as seq %d; expired seqs %s; cleaned up unfinished seqs %s",
        run_id,
        seq,
        expired,
        cleaned,
    )
    return {
        "seq": seq,
        "run_id": run_id,
        "tables": {s.name: s.data.num_rows for s in tables},
        "expired": expired,
        "cleaned_up": cleaned,
    }


def _load_and_switch(
    engine: Engine,
    runs: sa.Table,
    run_metrics: sa.Table,
    seq: int,
    *,
    run_id: str,
    tables: list[TableSpec],
    summary: Mapping[str, Any],
    metrics: list[Mapping[str, Any]],
) -> None:
    created: list[str] = []
    newer: tuple[int, str] | None = None
    try:
        for spec in tables:
            name = physical_name(spec.name, seq)
            table = _sql_table(name, spec.data.schema, sa.MetaData())
            with engine.begin() as conn:
                table.create(conn)
                created.append(name)
                _bulk_load(conn, table, spec.data)
                for col in spec.index_columns:
                    conn.exec_driver_sql(f'CREATE INDEX "ix_{name}_{col}" ON "{name}" ("{col}")')
                loaded = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if loaded != spec.data.num_rows:
                raise PublishError(
                    f"table {name}: loaded {loaded} rows, expected {spec.data.num_rows}"
                )
            log.info("publish: loaded %s (%d rows)", name, loaded)

        _before_switch(seq)
        with engine.begin() as conn:
            _lock_current_run(conn)
            row = conn.execute(
                sa.select(runs.c.seq, runs.c.run_id)
                .where(runs.c.seq > seq, runs.c.status.in_(_LIVE_STATUSES))
                .order_by(runs.c.seq.desc())
                .limit(1)
            ).first()
            if row is not None:
                newer = (row.seq, row.run_id)
                raise PublishError(
                    f"run {row.run_id!r} (seq {row.seq}) went live while this publish (seq {seq}) "
                    "was loading; switching now would take readers back to older data"
                )
            _execute_all(
                conn,
                [
                    statement
                    for spec in tables
                    for statement in (
                        f'DROP VIEW IF EXISTS "{spec.name}"',
                        f'CREATE VIEW "{spec.name}" AS SELECT * FROM '
                        f'"{physical_name(spec.name, seq)}"',
                    )
                ],
            )
            conn.execute(
                runs.update()
                .where(runs.c.seq == seq)
                .values(
                    status="published",
                    published_at=datetime.now(UTC),
                    tables=json.dumps({s.name: s.data.num_rows for s in tables}, sort_keys=True),
                    summary=json.dumps(summary, sort_keys=True, default=str),
                    metrics=json.dumps(list(metrics), sort_keys=True, default=str),
                )
            )
            conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id, runs.c.seq < seq, runs.c.status == "published")
                .values(status="superseded")
            )
            # A republished run's metrics replace those of its earlier copies.
            conn.execute(
                run_metrics.delete().where(run_metrics.c.run_id == run_id, run_metrics.c.seq < seq)
            )
            if metrics:
                conn.execute(
                    run_metrics.insert(),
                    [{"seq": seq, "run_id": run_id, **dict(m)} for m in metrics],
                )
            _execute_all(
                conn,
                [
                    f'DROP VIEW IF EXISTS "{CURRENT_RUN_VIEW}"',
                    f'CREATE VIEW "{CURRENT_RUN_VIEW}" AS SELECT * FROM "{RUNS_TABLE}" '
                    f"WHERE status = 'published' ORDER BY seq DESC LIMIT 1",
                ],
            )
    except Exception as exc:
        _drop_tables(engine, created)
        with engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.seq == seq)
                .values(status="failed", error=str(exc)[:4000])
            )
        if newer is not None:
            raise PublishError(
                f"publishing run {run_id!r} refused: {exc}. Readers stay on run {newer[1]!r}; "
                "this publish's tables were removed"
            ) from exc
        raise PublishError(
            f"publishing run {run_id!r} failed ({exc}); readers still see the previous run, "
            "partial tables were removed"
        ) from exc


def _execute_all(conn: Connection, statements: list[str]) -> None:
    """Run parameterless statements in order; on PostgreSQL in one round trip, so the switch
    holds `current_run` (and keeps readers waiting) for as short a time as possible."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("; ".join(statements))
        return
    for statement in statements:
        conn.exec_driver_sql(statement)


def _lock_current_run(conn: Connection) -> None:
    """PostgreSQL: take `current_run` before any other view of the switch.

    Readers (the reference service) open a request's transaction by reading `current_run` and
    then the views they need; the switch re-creates those views and `current_run` last. If a
    reader held `current_run` while waiting for a view the switch had already taken, and the
    switch waited for `current_run`, one of them would die of a deadlock. Taking
    `current_run` first makes the switch wait for in-flight requests instead.
    """
    if conn.dialect.name != "postgresql":
        return
    if sa.inspect(conn).has_table(CURRENT_RUN_VIEW) or CURRENT_RUN_VIEW in (
        sa.inspect(conn).get_view_names()
    ):
        conn.exec_driver_sql(f'LOCK TABLE "{CURRENT_RUN_VIEW}" IN ACCESS EXCLUSIVE MODE')


def _physical_tables(conn: Connection) -> dict[int, list[str]]:
    """Every physical (`<name>__r<seq>`) table in the database, by seq."""
    by_seq: dict[int, list[str]] = {}
    for name in sa.inspect(conn).get_table_names():
        match = _PHYSICAL_RE.match(name)
        if match:
            by_seq.setdefault(int(match.group(2)), []).append(name)
    return by_seq


def _expire(
    engine: Engine, runs: sa.Table, keep_runs: int, *, newest_seq: int
) -> tuple[list[int], list[int]]:
    """Retention; the caller holds the publish lock. Returns (expired seqs, cleaned-up seqs).

    Published/superseded runs beyond the newest `keep_runs` published ones lose their tables and
    become `expired`. Runs below `newest_seq` that never went live lose any leftover tables:
    `loading` ones (their publisher died mid-load) become `abandoned`, `failed` ones stay
    `failed` with their error.
    """
    with engine.begin() as conn:
        rows = conn.execute(sa.select(runs.c.seq, runs.c.status).order_by(runs.c.seq.desc())).all()
        live = [seq for seq, status in rows if status == "published"][:keep_runs]
        stale = [
            seq for seq, status in rows if status in ("published", "superseded") and seq not in live
        ]
        abandoned = [seq for seq, status in rows if status == "loading" and seq < newest_seq]
        failed = [seq for seq, status in rows if status == "failed" and seq < newest_seq]
        physical = _physical_tables(conn)
        cleaned = sorted(abandoned + [seq for seq in failed if seq in physical])
        for seq in [*stale, *abandoned, *failed]:
            for name in physical.get(seq, []):
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
        if stale:
            conn.execute(runs.update().where(runs.c.seq.in_(stale)).values(status="expired"))
        if abandoned:
            conn.execute(
                runs.update()
                .where(runs.c.seq.in_(abandoned))
                .values(
                    status="abandoned",
                    error=f"never finished loading; its tables were dropped by seq {newest_seq}",
                )
            )
    return stale, cleaned


def expire_old_runs(engine: Engine, keep_runs: int) -> list[int]:
    """Retention outside a publish (see `_expire`), under the publish lock; the expired seqs.

    Unfinished runs below the newest published one are cleaned up as a publish would.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1 (the live run), not {keep_runs}")
    metadata = sa.MetaData()
    runs, _ = _metadata_tables(metadata)
    with _publish_lock(engine):
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS_TABLE):
                return []
            newest = conn.execute(
                sa.select(sa.func.max(runs.c.seq)).where(runs.c.status == "published")
            ).scalar_one()
        if newest is None:
            return []
        expired, _ = _expire(engine, runs, keep_runs, newest_seq=newest)
    return expired


def read_table(engine: Engine, name: str) -> list[dict[str, Any]]:
    """All rows of a stable name, as dicts (small tables, tests and the demo summary)."""
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f'SELECT * FROM "{name}"')
        return [dict(row._mapping) for row in result]


def connection_url(
    conn_type: str,
    host: str | None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    schema: str | None = None,
) -> str:
    """A SQLAlchemy URL from the parts of an Airflow-style connection (sqlite or postgres).

    Airflow connections spell SQLite's database file as the host; PostgreSQL's database is the
    schema field. Anything else is refused with a message, not guessed.
    """
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ValueError("a sqlite connection needs the database file path as its host")
        return f"sqlite:///{host}"
    if kind in ("postgres", "postgresql"):
        url = sa.engine.URL.create(
            "postgresql+psycopg",
            username=login or None,
            password=password or None,
            host=host or None,
            port=port or None,
            database=schema or None,
        )
        return url.render_as_string(hide_password=False)
    raise ValueError(f"results connections must be sqlite or postgres, not {conn_type!r}")


def default_results_url(url: str, base_dir: str) -> str:
    """The configured fallback URL, with a relative SQLite path resolved against `base_dir`."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        path = Path(parsed.database)
        if not path.is_absolute():
            path = Path(base_dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return url
