"""The reference service: the seed's routing as HTTP, over the published tables.

A FastAPI app that reads only the stable views a publish switches atomically
(`user_recommendations`, `item_candidates`, `popular_products`, `user_segments`,
`similar_products`, `fbt_recommendations`, `products`) and appends to `interaction_log`.
Every query is parameterised; unknown products are a 404 that says which id, bad bodies a 422
from the models below.

Every answer comes from one snapshot of one published run. A publish re-points the views in
one transaction that takes `current_run` exclusively before anything else
(`publish._lock_current_run`), and PostgreSQL reads view definitions from the live catalog,
not from a reader's snapshot. So a reader takes `current_run` (share mode) before it resolves
any other view and before its snapshot is taken: a switch in progress finishes first and the
reader sees all of it, a switch that starts later waits for the reader. Requests do that in
one of two ways:

- one statement, for the answers a shop asks for most (a known user's list, similar products,
  FBT for a product or a cart, popularity, health): a single SELECT whose first FROM item is
  `current_run`. PostgreSQL locks a statement's relations in that order whether it parses it
  or revalidates a prepared plan (`test_one_statement_takes_current_run_first` holds it to
  that), and a READ COMMITTED statement takes its snapshot after its locks. One round trip,
  no transaction to open and close;
- a snapshot transaction, for a new user's routing (segment, popularity by segment level,
  logged interactions, candidates): BEGIN REPEATABLE READ and LOCK TABLE current_run in one
  round trip, the queries, COMMIT.

On SQLite one statement, or one transaction, reads one WAL snapshot, schema included.

PostgreSQL is read with asyncpg (prepared statements, a small pool per worker process, opened
and closed by the app's lifespan) from `async` endpoints, and answers are encoded with msgspec:
a request costs well under a millisecond of CPU, so one uvicorn worker answers hundreds a
second. SQLite goes through the SQLAlchemy engine in worker threads.

    fashion-recs serve --db postgresql://... --port 8000
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Protocol, TypeVar

import anyio.to_thread
import msgspec
import pandas as pd
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashion_recs.errors import FashionRecsError
from fashion_recs.interaction_log import TABLE as LOG_TABLE
from fashion_recs.interaction_log import checked_text, ensure_table, log_user_interaction
from fashion_recs.personal.routing import (
    new_user_lists,
    own_item_lists,
    segment_level_keys,
    top_up,
)
from fashion_recs.publish import CURRENT_RUN_VIEW

log = logging.getLogger(__name__)

DB_ENV = "FASHION_RECS_RESULTS_URL"
MAX_K = 50
RECENT_PRODUCTS = 10
# PostgreSQL connections per worker process. A request holds one for a round trip or two, so
# a few carry hundreds of requests a second; more only help while a publish's switch makes
# requests wait on `current_run` (tens of milliseconds), and then they wait in the pool instead.
POOL_SIZE = 8
# Every statement is an index lookup whose best plan does not depend on the values: plan it
# once per connection, not on each request (PostgreSQL would keep re-planning the cart's).
SERVER_SETTINGS = {
    "application_name": "fashion-recs serve",
    "plan_cache_mode": "force_generic_plan",
}
NOTHING_PUBLISHED = "nothing is published yet: run the pipeline first"
MAX_ID = 200
MAX_CART = 100
API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "FASHION_RECS_API_KEY"
OWN_ITEMS_FIRST_ENV = "FASHION_RECS_SERVICE_OWN_ITEMS_FIRST"


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts and how long it waits: every request ends, fast, in an answer.

    A database that is down or frozen is a 503 after at most about `connect_timeout_s` (a new
    connection) or `statement_timeout_s` (a statement), and a request waits at most
    `pool_timeout_s` for a free connection. A body over `max_body_bytes` is a 413 before it is
    read; an `event_ts` later than now + `max_clock_skew_s` a 422. With `api_key` set, writes
    (POST /interactions) need it in the X-API-Key header.
    """

    connect_timeout_s: float = 3.0
    statement_timeout_s: float = 5.0
    pool_timeout_s: float = 5.0
    max_body_bytes: int = 1 << 20
    max_clock_skew_s: float = 300.0
    api_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceLimits:
        """`FASHION_RECS_SERVICE_<FIELD>` (e.g. FASHION_RECS_SERVICE_MAX_BODY_BYTES) and
        FASHION_RECS_API_KEY; unset or empty means the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, default in cls.__dataclass_fields__.items():
            if name == "api_key":
                continue
            raw = env.get(f"FASHION_RECS_SERVICE_{name.upper()}", "").strip()
            if raw:
                kind = type(default.default)
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise FashionRecsError(
                        f"FASHION_RECS_SERVICE_{name.upper()} must be a number, got {raw!r}"
                    ) from None
        return cls(**values, api_key=env.get(API_KEY_ENV) or None)


def _plain_text(value: str) -> str:
    """Ids and names are text the database can store: no NUL, no lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _text(max_length: int) -> Any:
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_plain_text)]


Id = _text(MAX_ID)
PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID), AfterValidator(_plain_text)]


def _plain_optional(value: str | None) -> str | None:
    return None if value is None else _plain_text(value)


QueryText = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID), AfterValidator(_plain_optional)
]
K = Annotated[int, Query(ge=1, le=MAX_K)]
Row = Mapping[str, Any]
T = TypeVar("T")


class Item(BaseModel):
    rank: int
    product_id: str
    score: float
    source: str


class Recommendations(BaseModel):
    """The answer's shape, for the OpenAPI schema; endpoints build it as a dict (`_answer`)."""

    user_id: str | None = None
    product_id: str | None = None
    route: str | None = None
    strategy: str
    run_id: str
    items: list[Item]


class Cart(BaseModel):
    product_ids: list[Id] = Field(min_length=1, max_length=MAX_CART)


class Interaction(BaseModel):
    user_id: Id
    product_id: Id
    event_name: _text(100)
    button_name: _text(100) | None = None
    event_ts: datetime | None = None


# --------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sql:
    """One statement in PostgreSQL's spelling and in SQLite's (see `sql`)."""

    postgres: str
    sqlite: str


def sql(text: str) -> Sql:
    """A statement written for PostgreSQL (`$n` parameters, `= ANY($n)` for a list of values)
    and derived for SQLite (`?n`, and `IN (SELECT value FROM json_each(?n))` with the list
    passed as JSON), so each query is written, and tested on both databases, once."""
    lite = re.sub(r"= ANY\(\$(\d+)\)", r"IN (SELECT value FROM json_each(?\1))", text)
    return Sql(text, re.sub(r"\$(\d+)", r"?\1", lite))


# The one-statement reads: `current_run` is always the first FROM item (module docstring). It
# has one row once a run is published, so each returns at least one row, with NULLs where
# the joined part found nothing.
RUN_ID = sql(f"SELECT c.run_id FROM {CURRENT_RUN_VIEW} AS c")
USER_LIST = sql(
    f"SELECT c.run_id, x.product_id, x.score, x.strategy FROM {CURRENT_RUN_VIEW} AS c "
    "LEFT JOIN (SELECT product_id, score, strategy, rank FROM user_recommendations "
    "WHERE user_id = $1 ORDER BY rank LIMIT $2) AS x ON 1 = 1 ORDER BY x.rank"
)
_KNOWN_PRODUCT = "LEFT JOIN (SELECT product_id FROM products WHERE product_id = $1 LIMIT 1) AS p"
SIMILAR = {
    by_model: sql(
        f"SELECT c.run_id, p.product_id AS known, x.similar_product_id, x.score, x.model "
        f"FROM {CURRENT_RUN_VIEW} AS c {_KNOWN_PRODUCT} ON 1 = 1 "
        "LEFT JOIN (SELECT similar_product_id, score, model, rank FROM similar_products "
        f"WHERE product_id = $1 AND {'model = $3' if by_model else 'is_default'} "
        "ORDER BY rank LIMIT $2) AS x ON 1 = 1 ORDER BY x.rank"
    )
    for by_model in (False, True)
}
FBT = sql(
    f"SELECT c.run_id, p.product_id AS known, x.recommended_product_id, x.score, x.source "
    f"FROM {CURRENT_RUN_VIEW} AS c {_KNOWN_PRODUCT} ON 1 = 1 "
    "LEFT JOIN (SELECT recommended_product_id, score, source, rank FROM fbt_recommendations "
    "WHERE product_id = $1 ORDER BY rank LIMIT $2) AS x ON 1 = 1 ORDER BY x.rank"
)
# The cart's products that exist (part 0), then every cart product's complements (part 1).
CART = sql(
    f"SELECT c.run_id, x.known, x.recommended_product_id, x.score, x.source "
    f"FROM {CURRENT_RUN_VIEW} AS c LEFT JOIN ("
    "SELECT 0 AS part, product_id AS known, NULL AS recommended_product_id, NULL AS rank, "
    "NULL AS score, NULL AS source FROM products WHERE product_id = ANY($1) "
    "UNION ALL SELECT 1, NULL, recommended_product_id, rank, score, source "
    "FROM fbt_recommendations WHERE product_id = ANY($1)"
    ") AS x ON 1 = 1 ORDER BY x.part, x.rank, x.score DESC, x.recommended_product_id"
)
# Inside a snapshot transaction (a new user's routing).
SEGMENT = sql("SELECT age_group, region FROM user_segments WHERE user_id = $1")
RECENT = sql(
    f"SELECT product_id, max(event_ts) AS ts FROM {LOG_TABLE} WHERE user_id = $1 "
    "GROUP BY product_id ORDER BY ts DESC LIMIT $2"
)
CANDIDATES = sql(
    "SELECT product_id, rank, candidate_product_id, score, source "
    "FROM item_candidates WHERE product_id = ANY($1)"
)
PRODUCT_KNOWN = sql("SELECT 1 AS known FROM products WHERE product_id = $1 LIMIT 1")
# PostgreSQL appends in one statement, and only for a known product ($7: the id as sent).
PG_LOG_INSERT = (
    f"INSERT INTO {LOG_TABLE} (user_id, product_id, event_name, button_name, event_ts, "
    "logged_at) SELECT $1::text, $2::text, $3::text, $4::text, $5::timestamptz, "
    "$6::timestamptz WHERE EXISTS (SELECT 1 FROM products WHERE product_id = $7) RETURNING id"
)
_SQLITE_EXISTS = sql("SELECT 1 AS found FROM sqlite_master WHERE name = $1")
PG_SNAPSHOT = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
    f'LOCK TABLE "{CURRENT_RUN_VIEW}" IN ACCESS SHARE MODE'
)


@lru_cache(maxsize=64)
def _popular_sql(levels: tuple[tuple[str, bool, bool], ...], with_run: bool) -> Sql:
    """Popularity at every segment level a shopper qualifies for, in one statement: level i's
    top rows carry lvl = i, so the answer is the first level that has any (the seed's order).
    Parameters: $1 = k, then per level its segment_type, age group and region when used."""
    parts, n = [], 1
    for i, (_level, with_age, with_region) in enumerate(levels):
        n += 1
        where = f"segment_type = ${n}"
        if with_age:
            n += 1
            where += f" AND age_group = ${n}"
        if with_region:
            n += 1
            where += f" AND region = ${n}"
        parts.append(
            f"SELECT {i} AS lvl, product_id, score, rank FROM (SELECT product_id, score, rank "
            f"FROM popular_products WHERE {where} ORDER BY rank LIMIT $1) AS l{i}"
        )
    union = " UNION ALL ".join(parts)
    if with_run:
        return sql(
            f"SELECT c.run_id, x.lvl, x.product_id, x.score FROM {CURRENT_RUN_VIEW} AS c "
            f"LEFT JOIN ({union}) AS x ON 1 = 1 ORDER BY x.lvl, x.rank"
        )
    return sql(f"SELECT x.lvl, x.product_id, x.score FROM ({union}) AS x ORDER BY x.lvl, x.rank")


def _popular_query(
    keys: list[tuple[str, object, object]], k: int, *, with_run: bool
) -> tuple[Sql, list[Any]]:
    args: list[Any] = [k]
    for level, ag, rg in keys:
        args += [level, *(v for v in (ag, rg) if v is not None)]
    levels = tuple((level, ag is not None, rg is not None) for level, ag, rg in keys)
    return _popular_sql(levels, with_run), args


def _pick_popular(keys: list[tuple[str, object, object]], rows: Sequence[Row]) -> tuple[str, list]:
    """The most specific level with rows: (strategy, items)."""
    found = [r for r in rows if r["lvl"] is not None]
    if not found:
        return "popular_overall", []
    best = found[0]["lvl"]
    strategy = f"popular_{keys[best][0]}"
    return strategy, _items([r for r in found if r["lvl"] == best], "product_id", strategy)


# --------------------------------------------------------------------------------------------
# Database access
# --------------------------------------------------------------------------------------------


class DatabaseBusy(Exception):
    """Every database connection stayed in use for the whole pool wait."""


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a database that is down, frozen or overloaded raises: answered with a 503, never
    a 500. Errors of the statements themselves (a bug) stay 500s."""
    found: list[type[BaseException]] = [
        DatabaseBusy, OSError, TimeoutError, sa.exc.OperationalError, sa.exc.TimeoutError,
    ]  # fmt: skip
    try:
        import asyncpg
    except ImportError:
        return tuple(found)
    errors = asyncpg.exceptions
    return (
        *found, errors.PostgresConnectionError, errors.InterfaceError,
        errors.QueryCanceledError, errors.CannotConnectNowError,
        errors.TooManyConnectionsError, errors.AdminShutdownError, errors.CrashShutdownError,
        errors.InternalClientError,
    )  # fmt: skip


class Reader(Protocol):
    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]: ...


class Database(Protocol):
    """What the endpoints need from the results database; one per lifespan (worker)."""

    published: bool
    has_log: bool

    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]:
        """One statement on its own: it sees one snapshot."""
        ...

    async def snapshot(self, work: Callable[[Reader], Awaitable[T]]) -> T:
        """`work`'s queries in one snapshot of one published run."""
        ...

    async def exists(self, name: str) -> bool: ...

    async def log_interaction(self, row: dict[str, Any], sent_product_id: str) -> int | None:
        """Append a validated `interaction_log` row; None when the product is unknown."""
        ...

    async def close(self) -> None: ...


class _PgReader:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]:
        return await self._conn.fetch(query.postgres, *args)


class Postgres:
    """asyncpg connections in a LIFO pool of `size` slots, opened when first needed.

    Not asyncpg's own pool: its release resets each connection with another round trip, and
    its acquire/release cost more than the query they wrap. A slot holds a connection or None
    (open one); a connection whose state is unknown (cancelled mid-statement, broken) is closed
    and its slot goes back empty, so a request never inherits another one's transaction.
    """

    def __init__(
        self, engine: Engine, size: int = POOL_SIZE, limits: ServiceLimits | None = None
    ) -> None:
        import asyncpg

        self._asyncpg = asyncpg
        self._engine = engine
        self._limits = limits or ServiceLimits()
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._slots: asyncio.LifoQueue[Any] = asyncio.LifoQueue()
        for _ in range(size):
            self._slots.put_nowait(None)
        self.published = False
        self.has_log = False
        # The session is gone or unusable: the server ended it (a restart, an administrator;
        # asyncpg may only notice on the next statement, as a protocol-state error) or the
        # socket broke. A connection serves one request at a time, so never for misuse.
        errors = asyncpg.exceptions
        self._lost: tuple[type[Exception], ...] = (
            errors.PostgresConnectionError, errors.AdminShutdownError,
            errors.CrashShutdownError, errors.IdleSessionTimeoutError, errors.InterfaceError,
            errors.InternalClientError, ConnectionError,
        )  # fmt: skip

    async def _connect(self) -> Any:
        """A new session that gives up on a database that does not answer: connecting after
        connect_timeout_s, each statement after statement_timeout_s (the server ends it, and
        the client stops waiting for a server that is frozen)."""
        limits = self._limits
        return await self._asyncpg.connect(
            self._dsn,
            timeout=limits.connect_timeout_s,
            command_timeout=limits.statement_timeout_s,
            server_settings={
                **SERVER_SETTINGS,
                "statement_timeout": str(int(limits.statement_timeout_s * 1000)),
            },
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            conn = await asyncio.wait_for(self._slots.get(), self._limits.pool_timeout_s)
        except TimeoutError:
            raise DatabaseBusy(
                f"no free database connection within {self._limits.pool_timeout_s:g} s"
            ) from None
        if conn is None or conn.is_closed():
            try:
                conn = await self._connect()
            except BaseException:
                self._slots.put_nowait(None)
                raise
        try:
            yield conn
        except Exception as exc:
            # A statement failed (or the answer was an error): the session is sound once out
            # of its transaction, unless the connection itself was lost.
            try:
                # A statement that timed out may be on a frozen server: never wait on it again.
                if isinstance(exc, (*self._lost, TimeoutError)):
                    conn.terminate()
                elif not conn.is_closed() and conn.is_in_transaction():
                    await conn.execute("ROLLBACK")
            except BaseException:
                conn.terminate()
                raise
            finally:
                self._slots.put_nowait(None if conn.is_closed() else conn)
            raise
        except BaseException:
            # Cancelled mid-statement: what the session is doing is unknown.
            conn.terminate()
            self._slots.put_nowait(None)
            raise
        else:
            self._slots.put_nowait(conn)

    async def _read(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """`work` on a pooled connection, and once more on a fresh one when the first turned
        out to be dead (the server restarted, or ended the session) or its prepared statements
        stale (a publish changed a column's type: outside a transaction asyncpg re-prepares by
        itself, inside one the work is redone). Reads only: a write is never sent twice."""
        for attempt in (1, 2):
            try:
                async with self._connection() as conn:
                    return await work(conn)
            except (*self._lost, self._asyncpg.InvalidCachedStatementError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]:
        return await self._read(lambda conn: conn.fetch(query.postgres, *args))

    async def snapshot(self, work: Callable[[Reader], Awaitable[T]]) -> T:
        async def run(conn: Any) -> T:
            await conn.execute(PG_SNAPSHOT)
            result = await work(_PgReader(conn))
            await conn.execute("COMMIT")
            return result

        return await self._read(run)

    async def exists(self, name: str) -> bool:
        found = await self._read(lambda c: c.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
        return bool(found)

    async def log_interaction(self, row: dict[str, Any], sent_product_id: str) -> int | None:
        if not self.has_log:
            await anyio.to_thread.run_sync(ensure_table, self._engine)
            self.has_log = True
        async with self._connection() as conn:
            new_id = await conn.fetchval(
                PG_LOG_INSERT,
                row["user_id"], row["product_id"], row["event_name"], row["button_name"],
                row["event_ts"], row["logged_at"], sent_product_id,
            )  # fmt: skip
        return None if new_id is None else int(new_id)

    async def close(self) -> None:
        while not self._slots.empty():
            conn = self._slots.get_nowait()
            if conn is not None:
                await conn.close()


def _sqlite_args(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(json.dumps(list(a)) if isinstance(a, list | tuple) else a for a in args)


class _LiteReader:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]:
        return await anyio.to_thread.run_sync(_lite_fetch, self._conn, query, args)


def _lite_fetch(conn: Any, query: Sql, args: Sequence[Any]) -> Sequence[Row]:
    return conn.exec_driver_sql(query.sqlite, _sqlite_args(args)).mappings().all()


class SQLite:
    """The SQLAlchemy engine (WAL, a BEGIN per transaction: `publish.make_engine`), used from
    worker threads so that the event loop never waits on the file."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.published = False
        self.has_log = False

    def _fetch(self, query: Sql, args: Sequence[Any]) -> Sequence[Row]:
        with self._engine.connect() as conn:
            return _lite_fetch(conn, query, args)

    async def fetch(self, query: Sql, *args: Any) -> Sequence[Row]:
        return await anyio.to_thread.run_sync(self._fetch, query, args)

    async def snapshot(self, work: Callable[[Reader], Awaitable[T]]) -> T:
        conn = await anyio.to_thread.run_sync(self._engine.connect)
        try:
            await anyio.to_thread.run_sync(conn.begin)
            result = await work(_LiteReader(conn))
            await anyio.to_thread.run_sync(conn.commit)
            return result
        finally:
            await anyio.to_thread.run_sync(conn.close)

    async def exists(self, name: str) -> bool:
        return bool(await self.fetch(_SQLITE_EXISTS, name))

    def _log(self, row: dict[str, Any], sent_product_id: str) -> int | None:
        if not self._fetch(PRODUCT_KNOWN, (sent_product_id,)):
            return None
        return log_user_interaction(
            self._engine, row["user_id"], row["product_id"], row["event_name"],
            row["button_name"], row["event_ts"],
        )  # fmt: skip

    async def log_interaction(self, row: dict[str, Any], sent_product_id: str) -> int | None:
        new_id = await anyio.to_thread.run_sync(self._log, row, sent_product_id)
        self.has_log = self.has_log or new_id is not None
        return new_id

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def _json(body: Any, status_code: int = 200) -> Response:
    """JSON without a second validation pass: the endpoints build exactly the documented shape
    (`Recommendations`), and msgspec encodes it in microseconds."""
    return Response(_encode(body), status_code=status_code, media_type="application/json")


def _answer(
    strategy: str, run_id: str, items: list[dict[str, Any]], *, user_id: str | None = None,
    product_id: str | None = None, route: str | None = None,
) -> Response:  # fmt: skip
    return _json(
        {"user_id": user_id, "product_id": product_id, "route": route, "strategy": strategy,
         "run_id": run_id, "items": items}
    )  # fmt: skip


def _items(rows: Sequence[Row], product: str, source: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "rank": i,
            "product_id": r[product],
            "score": float(r["score"]),
            "source": str(source or r.get("source") or r.get("strategy")),
        }
        for i, r in enumerate(rows, start=1)
    ]


def _run_id(rows: Sequence[Row]) -> str:
    if not rows:
        raise HTTPException(503, NOTHING_PUBLISHED)
    return str(rows[0]["run_id"])


def _unknown(missing: list[str]) -> HTTPException:
    return HTTPException(404, f"unknown product id(s): {', '.join(missing[:10])}")


def _db(request: Request) -> Database:
    try:
        return request.state.db  # type: ignore[no-any-return]
    except AttributeError:
        raise RuntimeError(
            "the service's database access is opened by the app's lifespan: serve the app with "
            "an ASGI server (fashion-recs serve) or use `with TestClient(app)`"
        ) from None


async def _live(request: Request) -> Database:
    """The database, once something is published there (`current_run` exists; a publish
    re-creates it inside its switch, so once it exists it always will)."""
    db = _db(request)
    if not db.published:
        db.published = await db.exists(CURRENT_RUN_VIEW)
        if not db.published:
            raise HTTPException(503, NOTHING_PUBLISHED)
    return db


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a 413, before they are held in memory:
    at once when Content-Length says so, else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(send)
                return
        seen = 0
        over = refused = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def checked_send(message: Message) -> None:
            # The app answers a body it could not read with an error of its own (FastAPI:
            # 400): the answer is ours.
            nonlocal refused
            if not over:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, limited_receive, checked_send)
        except _BodyTooLarge:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = _encode(
            {"detail": f"request body over {self.max_bytes} bytes (the service's limit)"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _install_error_answers(app: FastAPI) -> None:
    """Every error is a short JSON answer: a 422 names the fields and what is wrong with them
    but never echoes the input, and a database that is down or frozen is a 503 that says so
    (the client may retry), not a 500."""

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [_short(part, 40) for part in list(e.get("loc", ()))[:6]],
                "msg": _short(e.get("msg", ""), 200),
                "type": _short(e.get("type", ""), 40),
            }
            for e in exc.errors()[:10]
        ]
        return _json({"detail": errors}, status_code=422)

    async def unavailable(_request: Request, exc: Exception) -> Response:
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = getattr(exc, "orig", None) or first or type(exc).__name__
        log.warning("results database unavailable: %s", _short(reason, 300))
        response = _json(
            {
                "detail": "the results database is not available; try again shortly",
                "reason": _short(f"{type(exc).__name__}: {reason}", 300),
            },
            status_code=503,
        )
        response.headers["Retry-After"] = "5"
        return response

    app.add_exception_handler(RequestValidationError, invalid)
    for error in _unavailable_errors():
        app.add_exception_handler(error, unavailable)


@dataclass
class _NewUser:
    """What a new user's routing read in its snapshot."""

    run_id: str
    own: list[Row]
    keys: list[tuple[str, object, object]]
    popular: Sequence[Row] = ()
    recent: Sequence[Row] = ()
    candidates: Sequence[Row] = ()


def create_app(
    engine: Engine,
    unknown_label: str = "unknown",
    pool_size: int = POOL_SIZE,
    limits: ServiceLimits | None = None,
    own_items_first: bool = True,
) -> FastAPI:
    """The app over one results database (an engine from `publish.make_engine`).

    Database access is opened by the app's lifespan, once per worker process (or per
    `with TestClient(app)`), in the event loop that will use it. `limits` bounds what a
    request may send and how long it waits (`ServiceLimits`). `own_items_first` answers a
    shopper the run has not seen but whose events were logged since with those products
    first, most recent first, as `route_users` does when known items are allowed
    (`personal.exclude_known: false`, the default); False keeps them out of the list.
    """
    limits = limits or ServiceLimits()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        db: Database = (
            Postgres(engine, pool_size, limits)
            if engine.dialect.name == "postgresql"
            else SQLite(engine)
        )
        try:
            yield {"db": db}
        finally:
            await db.close()

    app = FastAPI(title="fashion-recs reference service", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    _install_error_answers(app)

    @app.get("/health")
    async def health(request: Request) -> Response:
        db = await _live(request)
        return _json({"status": "ok", "run_id": _run_id(await db.fetch(RUN_ID))})

    def existing(user_id: str, run_id: str, own: Sequence[Row]) -> Response:
        items = _items(own, "product_id")
        return _answer(
            items[0]["source"], run_id, items, user_id=user_id, route="existing"
        )  # fmt: skip

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations)
    async def user_recommendations(
        request: Request, user_id: PathId, k: K = 12, age_group: QueryText = None,
        region: QueryText = None,
    ) -> Response:  # fmt: skip
        """The seed's process_user: existing, new with events, or new with nothing."""
        db = await _live(request)
        rows = await db.fetch(USER_LIST, user_id, k)
        run_id = _run_id(rows)
        own = [r for r in rows if r["product_id"] is not None]
        if own:
            return existing(user_id, run_id, own)
        # Not a user of the run (as of that statement): the full routing, in one snapshot.
        has_log = db.has_log or await db.exists(LOG_TABLE)
        db.has_log = has_log

        async def read(s: Reader) -> _NewUser:
            rows = await s.fetch(USER_LIST, user_id, k)
            got = _NewUser(_run_id(rows), [r for r in rows if r["product_id"] is not None], [])
            if got.own:
                return got
            segment = await s.fetch(SEGMENT, user_id)
            ag, rg = (segment[0]["age_group"], segment[0]["region"]) if segment else (
                age_group, region
            )  # fmt: skip
            got.keys = segment_level_keys(ag, rg, unknown_label)
            got.popular = await s.fetch(*_flat(_popular_query(got.keys, k, with_run=False)))
            if has_log:
                got.recent = await s.fetch(RECENT, user_id, RECENT_PRODUCTS)
            if got.recent:
                got.candidates = await s.fetch(CANDIDATES, [r["product_id"] for r in got.recent])
            return got

        got = await db.snapshot(read)
        if got.own:
            return existing(user_id, got.run_id, got.own)
        strategy, fallback = _pick_popular(got.keys, got.popular)
        if not got.recent:
            return _answer(
                strategy, got.run_id, fallback, user_id=user_id, route="new_without_events"
            )  # fmt: skip
        touched = pd.DataFrame(
            {
                "user_id": user_id,
                "product_id": [r["product_id"] for r in got.recent],
                "recency": range(1, len(got.recent) + 1),
            }
        )
        candidates = pd.DataFrame(
            [dict(r) for r in got.candidates],
            columns=["product_id", "rank", "candidate_product_id", "score", "source"],
        )
        lists = new_user_lists(touched, candidates, k)
        if own_items_first:
            lists = top_up(own_item_lists(touched, k), lists, k)
        items = [
            {"rank": i, "product_id": p, "score": float(s), "source": str(st)}
            for i, (p, s, st) in enumerate(
                zip(lists["product_id"], lists["score"], lists["strategy"], strict=True), 1
            )
        ]
        seen = {i["product_id"] for i in items}
        if not own_items_first:
            seen |= set(touched["product_id"])
        for extra in fallback:
            if len(items) >= k:
                break
            if extra["product_id"] not in seen:
                items.append({**extra, "rank": len(items) + 1})
        return _answer(
            items[0]["source"] if items else strategy, got.run_id, items, user_id=user_id,
            route="new_with_events",
        )  # fmt: skip

    @app.get("/products/{product_id}/similar", response_model=Recommendations)
    async def similar(
        request: Request, product_id: PathId, k: K = 12, model: QueryText = None
    ) -> Response:
        db = await _live(request)
        args = (product_id, k, model) if model else (product_id, k)
        rows = await db.fetch(SIMILAR[bool(model)], *args)
        current = _run_id(rows)
        if rows[0]["known"] is None:
            raise _unknown([product_id])
        found = [r for r in rows if r["similar_product_id"] is not None]
        if model and not found:
            raise HTTPException(404, f"no similar-products model {model!r} in run {current}")
        used = str(found[0]["model"] if found else (model or "none"))
        return _answer(
            used, current, _items(found, "similar_product_id", used), product_id=product_id
        )

    @app.get("/products/{product_id}/fbt", response_model=Recommendations)
    async def fbt(request: Request, product_id: PathId, k: K = 12) -> Response:
        db = await _live(request)
        rows = await db.fetch(FBT, product_id, k)
        current = _run_id(rows)
        if rows[0]["known"] is None:
            raise _unknown([product_id])
        found = [r for r in rows if r["recommended_product_id"] is not None]
        return _answer(
            "fbt", current, _items(found, "recommended_product_id"), product_id=product_id
        )

    @app.post("/cart/fbt", response_model=Recommendations)
    async def cart_fbt(request: Request, cart: Cart, k: K = 12) -> Response:
        """Complements of a whole cart: each product's list, best ranks first, cart left out."""
        db = await _live(request)
        ids = list(dict.fromkeys(cart.product_ids))
        rows = await db.fetch(CART, ids)
        current = _run_id(rows)
        known = {r["known"] for r in rows}
        missing = [p for p in ids if p not in known]
        if missing:
            raise _unknown(missing)
        picked: list[Row] = []
        seen = set(ids)
        for r in rows:
            rec = r["recommended_product_id"]
            if rec is not None and rec not in seen and len(picked) < k:
                seen.add(rec)
                picked.append(r)
        return _answer("fbt_cart", current, _items(picked, "recommended_product_id"))

    @app.get("/popular", response_model=Recommendations)
    async def popular_items(
        request: Request, k: K = 12, age_group: QueryText = None, region: QueryText = None
    ) -> Response:
        db = await _live(request)
        keys = segment_level_keys(age_group, region, unknown_label)
        rows = await db.fetch(*_flat(_popular_query(keys, k, with_run=True)))
        current = _run_id(rows)
        strategy, items = _pick_popular(keys, rows)
        return _answer(strategy, current, items)

    @app.post("/interactions", status_code=201)
    async def post_interaction(request: Request, body: Interaction) -> Response:
        """The seed's log_user_interaction; the next pipeline run takes the row in. With an
        API key configured, only callers that send it may write."""
        if limits.api_key is not None:
            sent = request.headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(sent.encode(), limits.api_key.encode()):
                raise HTTPException(
                    401, f"POST /interactions needs the service's API key in {API_KEY_HEADER}"
                )
        db = _db(request)
        try:
            row = _interaction_row(body, limits.max_clock_skew_s)
        except FashionRecsError as exc:
            # An unknown product is the first thing to say, as before the row was looked at.
            if not await db.fetch(PRODUCT_KNOWN, body.product_id):
                raise _unknown([body.product_id]) from None
            raise HTTPException(422, str(exc)) from None
        new_id = await db.log_interaction(row, body.product_id)
        if new_id is None:
            raise _unknown([body.product_id])
        log.debug(
            "interaction logged: %s %s %s", row["user_id"], row["event_name"], row["product_id"]
        )
        return _json(
            {"id": new_id, "user_id": body.user_id, "product_id": body.product_id},
            status_code=201,
        )

    return app


def _flat(query: tuple[Sql, list[Any]]) -> tuple[Any, ...]:
    return (query[0], *query[1])


def _interaction_row(body: Interaction, max_clock_skew_s: float = 300.0) -> dict[str, Any]:
    """`interaction_log.log_user_interaction`'s row and checks, for a one-statement insert.
    An event from the future (beyond the clocks' allowed skew) is refused: the pipeline would
    keep it out of every window, or worse, count it in a later one."""
    when = body.event_ts
    if when is not None and when.tzinfo is None:
        raise FashionRecsError("event_ts needs a timezone offset, e.g. 2026-11-02T10:00Z")
    now = datetime.now(UTC)
    if when is not None and when > now + timedelta(seconds=max_clock_skew_s):
        raise FashionRecsError(
            f"event_ts {when.isoformat()} is in the future (now {now.isoformat()} plus "
            f"{max_clock_skew_s:g} s of allowed clock skew)"
        )
    return {
        "user_id": checked_text("user_id", body.user_id),
        "product_id": checked_text("product_id", body.product_id),
        "event_name": checked_text("event_name", body.event_name),
        "button_name": checked_text("button_name", body.button_name, required=False),
        "event_ts": (when or now).astimezone(UTC),
        "logged_at": now,
    }


def app_from_env() -> FastAPI:
    """The app over the database named by FASHION_RECS_RESULTS_URL (`fashion-recs serve`),
    with `ServiceLimits.from_env()`; FASHION_RECS_SERVICE_OWN_ITEMS_FIRST=false keeps a new
    shopper's logged products out of their list (for runs with `personal.exclude_known`)."""
    from fashion_recs.publish import make_engine

    url = os.environ.get(DB_ENV)
    if not url:
        raise FashionRecsError(f"set {DB_ENV} to the results database's SQLAlchemy URL")
    limits = ServiceLimits.from_env()
    engine = make_engine(
        url,
        connect_timeout_s=max(1, round(limits.connect_timeout_s)),
        statement_timeout_s=max(1, round(limits.statement_timeout_s)),
        pool_timeout_s=limits.pool_timeout_s,
    )
    own_first = os.environ.get(OWN_ITEMS_FIRST_ENV, "true").strip().lower()
    if own_first not in ("true", "false", "1", "0", ""):
        raise FashionRecsError(f"{OWN_ITEMS_FIRST_ENV} must be true or false, got {own_first!r}")
    app = create_app(engine, limits=limits, own_items_first=own_first not in ("false", "0"))
    # Everything built so far (modules, the app, its models) lives as long as the worker:
    # keep it out of the cyclic collector's full passes, which would otherwise walk it all and
    # stall requests for milliseconds.
    gc.freeze()
    return app
