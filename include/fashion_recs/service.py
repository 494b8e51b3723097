"""The reference service: the seed's routing as HTTP, over the published tables.

A FastAPI app that reads only the stable views a publish switches atomically
(`user_recommendations`, `item_candidates`, `popular_products`, `user_segments`,
`similar_products`, `fbt_recommendations`, `products`) and appends to `interaction_log`.
Each request reads inside one transaction (REPEATABLE READ on PostgreSQL, a WAL snapshot on
SQLite), so a publish that lands mid-request can never give it half an old run and half a
new one. Every query is parameterised; unknown products are a 404 that says which id, bad
bodies a 422 from the models below.

    fashion-recs serve --db postgresql://... --port 8000
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import pandas as pd
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from fashion_recs.errors import FashionRecsError
from fashion_recs.interaction_log import log_user_interaction
from fashion_recs.personal.routing import new_user_lists, segment_level_keys

log = logging.getLogger(__name__)

DB_ENV = "FASHION_RECS_RESULTS_URL"
MAX_K = 50
RECENT_PRODUCTS = 10
K = Annotated[int, Query(ge=1, le=MAX_K)]


class Item(BaseModel):
    rank: int
    product_id: str
    score: float
    source: str


class Recommendations(BaseModel):
    user_id: str | None = None
    product_id: str | None = None
    route: str | None = None
    strategy: str
    run_id: str
    items: list[Item]


class Cart(BaseModel):
    product_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=100
    )


class Interaction(BaseModel):
    user_id: str = Field(min_length=1, max_length=200)
    product_id: str = Field(min_length=1, max_length=200)
    event_name: str = Field(min_length=1, max_length=100)
    button_name: str | None = Field(default=None, min_length=1, max_length=100)
    event_ts: datetime | None = None


def _published(state: Any) -> bool:
    """Whether `current_run` exists (once it does, it always will: a publish re-creates it
    inside its switch transaction), checked outside the request's transaction."""
    if not state.published:
        with state.reader.connect() as conn:
            inspector = sa.inspect(conn)
            state.published = inspector.has_table("current_run") or "current_run" in (
                inspector.get_view_names()
            )
    return bool(state.published)


def snapshot(request: Request) -> Iterator[Connection]:
    """One read transaction per request: every query of it sees the same published run.

    On PostgreSQL a REPEATABLE READ snapshot alone is not enough, because a publish re-points
    views and view definitions are read from the live catalog. So the transaction first takes
    a share lock on `current_run`, before any query fixes its snapshot: a switch in progress
    finishes first (the snapshot then sees it whole), and a switch that starts later waits
    for the request (`publish._lock_current_run`). SQLite's WAL snapshot covers the schema.
    """
    state = request.app.state
    with state.reader.begin() as conn:
        if conn.dialect.name == "postgresql" and _published(state):
            conn.exec_driver_sql('LOCK TABLE "current_run" IN ACCESS SHARE MODE')
        yield conn


Snapshot = Annotated[Connection, Depends(snapshot)]


def _rows(conn: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    """A parameterised query; a tuple parameter expands into an IN list."""
    query = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, tuple):
            query = query.bindparams(sa.bindparam(name, expanding=True))
    return [dict(r._mapping) for r in conn.execute(query, params)]


def _items(rows: list[dict[str, Any]], product: str, source: str | None = None) -> list[Item]:
    return [
        Item(
            rank=i,
            product_id=r[product],
            score=float(r["score"]),
            source=str(source or r.get("source") or r.get("strategy")),
        )
        for i, r in enumerate(rows, start=1)
    ]


def create_app(engine: Engine, unknown_label: str = "unknown") -> FastAPI:
    """The app over one results database (an engine from `publish.make_engine`)."""
    reader = (
        engine.execution_options(isolation_level="REPEATABLE READ")
        if engine.dialect.name == "postgresql"
        else engine
    )
    app = FastAPI(title="fashion-recs reference service", version="1")
    app.state.reader = reader
    app.state.published = False
    app.state.has_log = False

    def run_id(conn: Connection) -> str:
        rows = _rows(conn, "SELECT run_id FROM current_run") if _published(app.state) else []
        if not rows:
            raise HTTPException(503, "nothing is published yet: run the pipeline first")
        return str(rows[0]["run_id"])

    def require_products(conn: Connection, ids: list[str]) -> None:
        known = (
            {
                r["product_id"]
                for r in _rows(
                    conn,
                    "SELECT product_id FROM products WHERE product_id IN :ids",
                    ids=tuple(ids),
                )
            }
            if ids
            else set()
        )
        missing = [p for p in ids if p not in known]
        if missing:
            raise HTTPException(404, f"unknown product id(s): {', '.join(missing[:10])}")

    def popular(conn: Connection, k: int, age_group: Any, region: Any) -> tuple[str, list[Item]]:
        for level, ag, rg in segment_level_keys(age_group, region, unknown_label):
            sql = "SELECT product_id, score FROM popular_products WHERE segment_type = :level"
            params: dict[str, Any] = {"level": level, "k": k}
            if ag is not None:
                sql += " AND age_group = :ag"
                params["ag"] = ag
            if rg is not None:
                sql += " AND region = :rg"
                params["rg"] = rg
            rows = _rows(conn, sql + " ORDER BY rank LIMIT :k", **params)
            if rows:
                return f"popular_{level}", _items(rows, "product_id", f"popular_{level}")
        return "popular_overall", []

    @app.get("/health")
    def health(conn: Snapshot) -> dict[str, str]:
        return {"status": "ok", "run_id": run_id(conn)}

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations)
    def user_recommendations(
        user_id: str, conn: Snapshot, k: K = 12, age_group: str | None = None,
        region: str | None = None,
    ) -> Recommendations:  # fmt: skip
        """The seed's process_user: existing, new with events, or new with nothing."""
        current = run_id(conn)
        rows = _rows(
            conn,
            "SELECT product_id, score, strategy FROM user_recommendations "
            "WHERE user_id = :u ORDER BY rank LIMIT :k",
            u=user_id,
            k=k,
        )
        if rows:
            items = _items(rows, "product_id")
            return Recommendations(
                user_id=user_id, route="existing", strategy=items[0].source, run_id=current,
                items=items,
            )  # fmt: skip
        segment = _rows(
            conn, "SELECT age_group, region FROM user_segments WHERE user_id = :u", u=user_id
        )
        if segment:
            age_group, region = segment[0]["age_group"], segment[0]["region"]
        strategy, fallback = popular(conn, k, age_group, region)
        recent = _rows(
            conn,
            "SELECT product_id, max(event_ts) AS ts FROM interaction_log WHERE user_id = :u "
            "GROUP BY product_id ORDER BY ts DESC LIMIT :n",
            u=user_id,
            n=RECENT_PRODUCTS,
        ) if _has_log(app.state) else []  # fmt: skip
        if not recent:
            return Recommendations(
                user_id=user_id, route="new_without_events", strategy=strategy, run_id=current,
                items=fallback,
            )  # fmt: skip
        touched = pd.DataFrame(
            {
                "user_id": user_id,
                "product_id": [r["product_id"] for r in recent],
                "recency": range(1, len(recent) + 1),
            }
        )
        candidates = pd.DataFrame(
            _rows(
                conn,
                "SELECT product_id, rank, candidate_product_id, score, source "
                "FROM item_candidates WHERE product_id IN :ids",
                ids=tuple(touched["product_id"]),
            ),
            columns=["product_id", "rank", "candidate_product_id", "score", "source"],
        )
        lists = new_user_lists(touched, candidates, k)
        items = [
            Item(rank=i, product_id=p, score=float(s), source=str(st))
            for i, (p, s, st) in enumerate(
                zip(lists["product_id"], lists["score"], lists["strategy"], strict=True), 1
            )
        ]
        seen = {i.product_id for i in items} | set(touched["product_id"])
        for extra in fallback:
            if len(items) >= k:
                break
            if extra.product_id not in seen:
                items.append(extra.model_copy(update={"rank": len(items) + 1}))
        return Recommendations(
            user_id=user_id, route="new_with_events",
            strategy=items[0].source if items else strategy, run_id=current, items=items,
        )  # fmt: skip

    @app.get("/products/{product_id}/similar", response_model=Recommendations)
    def similar(
        product_id: str, conn: Snapshot, k: K = 12, model: str | None = None
    ) -> Recommendations:
        current = run_id(conn)
        require_products(conn, [product_id])
        sql = (
            "SELECT similar_product_id, score, model FROM similar_products "
            "WHERE product_id = :p AND "
        )
        sql += "model = :m" if model else "is_default = :d"
        params = {"p": product_id, "k": k, **({"m": model} if model else {"d": True})}
        rows = _rows(conn, sql + " ORDER BY rank LIMIT :k", **params)
        if model and not rows:
            raise HTTPException(404, f"no similar-products model {model!r} in run {current}")
        used = rows[0]["model"] if rows else (model or "none")
        return Recommendations(
            product_id=product_id, strategy=str(used), run_id=current,
            items=_items(rows, "similar_product_id", str(used)),
        )  # fmt: skip

    @app.get("/products/{product_id}/fbt", response_model=Recommendations)
    def fbt(product_id: str, conn: Snapshot, k: K = 12) -> Recommendations:
        current = run_id(conn)
        require_products(conn, [product_id])
        rows = _rows(
            conn,
            "SELECT recommended_product_id, score, source FROM fbt_recommendations "
            "WHERE product_id = :p ORDER BY rank LIMIT :k",
            p=product_id,
            k=k,
        )
        return Recommendations(
            product_id=product_id, strategy="fbt", run_id=current,
            items=_items(rows, "recommended_product_id"),
        )  # fmt: skip

    @app.post("/cart/fbt", response_model=Recommendations)
    def cart_fbt(cart: Cart, conn: Snapshot, k: K = 12) -> Recommendations:
        """Complements of a whole cart: each product's list, best ranks first, cart left out."""
        current = run_id(conn)
        ids = list(dict.fromkeys(cart.product_ids))
        require_products(conn, ids)
        rows = _rows(
            conn,
            "SELECT recommended_product_id, rank, score, source FROM fbt_recommendations "
            "WHERE product_id IN :ids ORDER BY rank, score DESC, recommended_product_id",
            ids=tuple(ids),
        )
        picked: list[dict[str, Any]] = []
        seen = set(ids)
        for r in rows:
            if r["recommended_product_id"] not in seen and len(picked) < k:
                seen.add(r["recommended_product_id"])
                picked.append(r)
        return Recommendations(
            strategy="fbt_cart", run_id=current, items=_items(picked, "recommended_product_id")
        )

    @app.get("/popular", response_model=Recommendations)
    def popular_items(
        conn: Snapshot, k: K = 12, age_group: str | None = None, region: str | None = None
    ) -> Recommendations:
        current = run_id(conn)
        strategy, items = popular(conn, k, age_group, region)
        return Recommendations(strategy=strategy, run_id=current, items=items)

    @app.post("/interactions", status_code=201)
    def post_interaction(body: Interaction) -> dict[str, Any]:
        """The seed's log_user_interaction; the next pipeline run takes the row in."""
        with reader.connect() as conn:
            require_products(conn, [body.product_id])
        when = body.event_ts
        if when is not None and when.tzinfo is None:
            raise HTTPException(422, "event_ts needs a timezone offset, e.g. 2026-11-02T10:00Z")
        try:
            new_id = log_user_interaction(
                engine, body.user_id, body.product_id, body.event_name, body.button_name, when
            )
        except FashionRecsError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"id": new_id, "user_id": body.user_id, "product_id": body.product_id}

    return app


def _has_log(state: Any) -> bool:
    """Whether interaction_log exists (created by the first logged interaction, never dropped),
    checked on a connection of its own and remembered once true."""
    if not state.has_log:
        with state.reader.connect() as conn:
            state.has_log = sa.inspect(conn).has_table("interaction_log")
    return bool(state.has_log)


def app_from_env() -> FastAPI:
    """The app over the database named by FASHION_RECS_RESULTS_URL (`fashion-recs serve`)."""
    import os

    from fashion_recs.publish import make_engine

    url = os.environ.get(DB_ENV)
    if not url:
        raise FashionRecsError(f"set {DB_ENV} to the results database's SQLAlchemy URL")
    return create_app(make_engine(url))
