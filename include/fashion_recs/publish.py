"""Publishing a run's tables so readers switch from the old run to the new one atomically.

Readers (shop front-ends, the reference service) query stable names: `products`,
`popular_products`, `user_segments`, ... Each stable name is a VIEW over a physical table that
belongs to one publish (`popular_products__r000012`). A publish:

1. records itself in `runs` with status `loading` and gets a sequence number;
2. loads every physical table of that sequence and checks its row count (PostgreSQL: COPY);
3. in ONE transaction re-points every view, marks the run `published` and stores its metrics;
4. drops the physical tables of runs older than the last `keep_runs` published ones.

If anything fails before step 3 commits, the partial tables are dropped, the run is marked
`failed`, and readers never noticed: they still read the previous run through the views. Both
SQLite (transactional DDL once the driver is told not to manage transactions itself) and
PostgreSQL give readers the old run or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fashion_recs.errors import PublishError

log = logging.getLogger(__name__)

RUNS_TABLE = "runs"
METRICS_TABLE = "run_metrics"
CURRENT_RUN_VIEW = "current_run"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_")


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


def make_engine(url: str) -> Engine:
    """An engine whose transactions really cover DDL, and whose SQLite readers never block."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        # pysqlite neither BEGINs before DDL nor lets SQLAlchemy do it: take over (SQLAlchemy's
        # documented recipe), and use WAL so readers keep reading during a publish.
        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


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


def _rows(table: pa.Table) -> Iterable[tuple[Any, ...]]:
    """Rows as Python values; list columns become JSON text, NaN becomes NULL."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        values = column.to_pylist()
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            values = [None if v is None else json.dumps(v) for v in values]
        elif pa.types.is_floating(field.type):
            values = [None if v is None or math.isnan(v) else v for v in values]
        columns.append(values)
    return zip(*columns, strict=True)


def _bulk_load(conn: Connection, table: sa.Table, data: pa.Table) -> None:
    if data.num_rows == 0:
        return
    if conn.dialect.name == "postgresql":
        names = ", ".join(f'"{c.name}"' for c in table.columns)
        driver_conn = conn.connection.driver_connection
        sql = f'COPY "{table.name}" ({names}) FROM STDIN'
        with driver_conn.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for row in _rows(data):
                copy.write_row(row)
        return
    keys = [c.name for c in table.columns]
    conn.execute(table.insert(), [dict(zip(keys, row, strict=True)) for row in _rows(data)])


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


def publish_run(
    engine: Engine,
    *,
    run_id: str,
    retailer: str,
    tables: list[TableSpec],
    summary: Mapping[str, Any],
    metrics: list[Mapping[str, Any]],
    keep_runs: int = 3,
) -> dict[str, Any]:
    """Publish `tables` under their stable names; return the publish record.

    Raises PublishError (readers untouched) when loading fails.
    """
    metadata = sa.MetaData()
    runs, run_metrics = _metadata_tables(metadata)
    metadata.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        seq = conn.execute(
            runs.insert()
            .values(run_id=run_id, retailer=retailer, status="loading", created_at=now)
            .returning(runs.c.seq)
        ).scalar_one()

    created: list[str] = []
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

        with engine.begin() as conn:
            for spec in tables:
                conn.exec_driver_sql(f'DROP VIEW IF EXISTS "{spec.name}"')
                conn.exec_driver_sql(
                    f'CREATE VIEW "{spec.name}" AS SELECT * FROM "{physical_name(spec.name, seq)}"'
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
            if metrics:
                conn.execute(
                    run_metrics.insert(),
                    [{"seq": seq, "run_id": run_id, **dict(m)} for m in metrics],
                )
            conn.exec_driver_sql(f'DROP VIEW IF EXISTS "{CURRENT_RUN_VIEW}"')
            conn.exec_driver_sql(
                f'CREATE VIEW "{CURRENT_RUN_VIEW}" AS SELECT * FROM "{RUNS_TABLE}" '
                f"WHERE status = 'published' ORDER BY seq DESC LIMIT 1"
            )
    except Exception as exc:
        _drop_tables(engine, created)
        with engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.seq == seq)
                .values(status="failed", error=str(exc)[:4000])
            )
        raise PublishError(
            f"publishing run {run_id!r} failed ({exc}); readers still see the previous run, "
            "partial tables were removed"
        ) from exc

    expired = expire_old_runs(engine, [s.name for s in tables], keep_runs)
    log.info("publish: run %s is live as seq %d; expired seqs %s", run_id, seq, expired)
    return {
        "seq": seq,
        "run_id": run_id,
        "tables": {s.name: s.data.num_rows for s in tables},
        "expired": expired,
    }


def expire_old_runs(engine: Engine, names: list[str], keep_runs: int) -> list[int]:
    """Drop physical tables of all but the newest `keep_runs` published runs (and failed ones)."""
    metadata = sa.MetaData()
    runs, _ = _metadata_tables(metadata)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs.c.seq, runs.c.status).order_by(runs.c.seq.desc())).all()
    live = [seq for seq, status in rows if status == "published"][:keep_runs]
    stale = [
        seq for seq, status in rows if status in ("published", "superseded") and seq not in live
    ]
    if not stale:
        return []
    _drop_tables(engine, [physical_name(n, seq) for seq in stale for n in names])
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.seq.in_(stale)).values(status="expired"))
    return stale


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
