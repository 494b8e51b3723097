"""The reference service over published tables, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from fashion_recs import contract
from fashion_recs.publish import CURRENT_RUN_VIEW, TableSpec, make_engine, publish_run
from fashion_recs.service import create_app, sql

P = [f"{i:024x}" for i in range(1, 9)]


def tables(generation: int = 0) -> list[TableSpec]:
    """A tiny published run; `generation` 1 serves other products on every list (the existing
    user's, a segment's popularity, similar products and FBT), so a reader can tell which run
    an answer came from."""
    own = [P[0], P[1], P[2]] if generation == 0 else [P[5], P[6], P[7]]
    shift = 3 * generation  # segment popularity P[2:5], or P[5:8]
    similar_to_p0, fbt_of_p0 = (P[1], [P[1], P[2]]) if generation == 0 else (P[6], [P[6], P[7]])
    products = pa.table(
        {"product_id": P, "title": [f"product {i}" for i in range(len(P))]},
    )
    popular = pa.Table.from_pylist(
        [
            {"segment_type": "overall", "age_group": None, "region": None, "rank": r + 1,
             "product_id": P[7 - r], "score": 10.0 - r, "n_users": 5}
            for r in range(4)
        ]
        + [
            {"segment_type": "age_group_region", "age_group": "25-34", "region": "North",
             "rank": r + 1, "product_id": P[r + 2 + shift], "score": 5.0 - r, "n_users": 3}
            for r in range(3)
        ]
        + [
            {"segment_type": "age_group", "age_group": "18-24", "region": None, "rank": 1,
             "product_id": P[4], "score": 2.0, "n_users": 3}
        ],
        schema=contract.POPULAR_SCHEMA,
    )  # fmt: skip
    users = pa.table(
        {"user_id": ["old", "surveyed"], "age_group": ["25-34", "25-34"],
         "region": ["North", "North"]}
    )  # fmt: skip
    recs = pa.Table.from_pylist(
        [
            {"user_id": "old", "rank": r + 1, "product_id": p, "score": 1.0 - r / 10,
             "strategy": "two_tower"}
            for r, p in enumerate(own)
        ],
        schema=contract.USER_RECOMMENDATIONS_SCHEMA,
    )  # fmt: skip
    candidates = pa.Table.from_pylist(
        [
            {"product_id": P[0], "rank": 1, "candidate_product_id": P[3], "score": 1.0,
             "source": "item_knn"},
            {"product_id": P[0], "rank": 2, "candidate_product_id": P[4], "score": 0.5,
             "source": "fbt"},
        ],
        schema=contract.ITEM_CANDIDATES_SCHEMA,
    )  # fmt: skip
    similar = pa.Table.from_pylist(
        [
            {"product_id": P[0], "rank": 1, "similar_product_id": similar_to_p0, "score": 0.9,
             "model": "text_tfidf", "is_default": True},
            {"product_id": P[0], "rank": 1, "similar_product_id": P[2], "score": 0.8,
             "model": "fashion_clip", "is_default": False},
        ],
        schema=contract.SIMILAR_PRODUCTS_SCHEMA,
    )  # fmt: skip
    fbt = pa.Table.from_pylist(
        [
            {"product_id": P[0], "rank": 1, "recommended_product_id": fbt_of_p0[0],
             "score": 0.7, "source": "rules"},
            {"product_id": P[0], "rank": 2, "recommended_product_id": fbt_of_p0[1],
             "score": 0.5, "source": "rules"},
            {"product_id": P[1], "rank": 1, "recommended_product_id": P[0], "score": 0.7,
             "source": "rules"},
            {"product_id": P[1], "rank": 2, "recommended_product_id": P[3], "score": 0.2,
             "source": "co_viewed"},
        ],
        schema=contract.FBT_RECOMMENDATIONS_SCHEMA,
    )  # fmt: skip
    return [
        TableSpec("products", products, ("product_id",)),
        TableSpec("popular_products", popular, ("segment_type",)),
        TableSpec("user_segments", users, ("user_id",)),
        TableSpec("user_recommendations", recs, ("user_id",)),
        TableSpec("item_candidates", candidates, ("product_id",)),
        TableSpec("similar_products", similar, ("product_id", "model")),
        TableSpec("fbt_recommendations", fbt, ("product_id",)),
    ]


def publish(engine, run_id: str, generation: int = 0) -> None:
    publish_run(
        engine, run_id=run_id, retailer="demo", tables=tables(generation), summary={},
        metrics=[], keep_runs=2,
    )  # fmt: skip


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    publish(engine, "run-1")
    with TestClient(create_app(engine)) as client:  # runs the lifespan: the database pool
        yield client


def test_existing_user_gets_the_published_list(client) -> None:
    body = client.get("/users/old/recommendations", params={"k": 2}).json()
    assert body["route"] == "existing" and body["strategy"] == "two_tower"
    assert [i["product_id"] for i in body["items"]] == P[:2]
    assert body["run_id"] == "run-1"


def test_new_users_get_segment_then_overall_popularity(client) -> None:
    surveyed = client.get("/users/surveyed/recommendations").json()
    assert surveyed["route"] == "new_without_events"
    assert surveyed["strategy"] == "popular_age_group_region"
    assert [i["product_id"] for i in surveyed["items"]] == P[2:5]
    stranger = client.get("/users/stranger/recommendations").json()
    assert stranger["strategy"] == "popular_overall"
    young = client.get("/users/stranger/recommendations", params={"age_group": "18-24"}).json()
    assert young["strategy"] == "popular_age_group"


def test_logged_interaction_routes_a_new_user_by_the_product(client) -> None:
    created = client.post(
        "/interactions",
        json={"user_id": "fresh", "product_id": P[0], "event_name": "purchase",
              "event_ts": "2026-11-02T10:00:00Z"},
    )  # fmt: skip
    assert created.status_code == 201 and created.json()["id"] >= 1
    body = client.get("/users/fresh/recommendations", params={"k": 4}).json()
    assert body["route"] == "new_with_events"
    products = [i["product_id"] for i in body["items"]]
    # Known items allowed (the default): the shopper's own product first, as route_users does,
    # then the product's candidates in their order, topped up from popularity.
    assert products[:3] == [P[0], P[3], P[4]] and len(products) == 4
    assert [i["source"] for i in body["items"][:2]] == ["own_items", "item_based_item_knn"]


def test_a_service_without_known_items_keeps_a_new_users_products_out(engine) -> None:
    publish(engine, "run-1")
    with TestClient(create_app(engine, own_items_first=False)) as client:
        client.post(
            "/interactions",
            json={"user_id": "fresher", "product_id": P[0], "event_name": "purchase",
                  "event_ts": "2026-11-02T10:00:00Z"},
        )  # fmt: skip
        body = client.get("/users/fresher/recommendations", params={"k": 4}).json()
    products = [i["product_id"] for i in body["items"]]
    assert products[:2] == [P[3], P[4]]  # the product's candidates, in their order
    assert P[0] not in products and len(products) == 4  # topped up from popularity
    assert body["items"][0]["source"] == "item_based_item_knn"


def test_similar_fbt_and_cart(client) -> None:
    default = client.get(f"/products/{P[0]}/similar").json()
    assert default["strategy"] == "text_tfidf" and default["items"][0]["product_id"] == P[1]
    clip = client.get(f"/products/{P[0]}/similar", params={"model": "fashion_clip"}).json()
    assert clip["items"][0]["product_id"] == P[2]
    missing_model = client.get(f"/products/{P[0]}/similar", params={"model": "nope"})
    assert missing_model.status_code == 404
    fbt = client.get(f"/products/{P[0]}/fbt").json()
    assert [i["product_id"] for i in fbt["items"]] == [P[1], P[2]]
    cart = client.post("/cart/fbt", json={"product_ids": [P[0], P[1]]}).json()
    assert [i["product_id"] for i in cart["items"]] == [P[2], P[3]]  # never the cart itself
    popular = client.get("/popular", params={"age_group": "25-34", "region": "North"}).json()
    assert popular["strategy"] == "popular_age_group_region"


def test_unknown_ids_are_404_and_bad_bodies_422(client) -> None:
    missing = client.get("/products/nope/fbt")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert client.post("/cart/fbt", json={"product_ids": [P[0], "nope"]}).status_code == 404
    assert client.post("/cart/fbt", json={"product_ids": []}).status_code == 422
    assert client.get("/users/old/recommendations", params={"k": 0}).status_code == 422
    assert client.post("/interactions", json={"user_id": "x"}).status_code == 422
    naive = {"user_id": "x", "product_id": P[0], "event_name": "purchase",
             "event_ts": "2026-11-02T10:00:00"}  # fmt: skip
    assert client.post("/interactions", json=naive).status_code == 422
    unknown = {"user_id": "x", "product_id": "nope", "event_name": "purchase"}
    assert client.post("/interactions", json=unknown).status_code == 404
    # A quote in an id is data, not SQL.
    assert client.get("/users/o'; DROP TABLE runs; --/recommendations").status_code == 200


def test_nothing_published_is_a_clear_503(engine) -> None:
    with TestClient(create_app(engine)) as client:
        response = client.get("/health")
    assert response.status_code == 503 and "nothing is published" in response.json()["detail"]


# What concurrent readers ask for: the one-statement answers and a new user's snapshot route.
READS = [
    ("GET", "/users/old/recommendations", None),
    ("GET", "/users/surveyed/recommendations", None),
    ("GET", f"/products/{P[0]}/similar", None),
    ("GET", f"/products/{P[0]}/fbt", None),
    ("POST", "/cart/fbt", {"product_ids": [P[0], P[1]]}),
    ("GET", "/popular?age_group=25-34&region=North", None),
]


def _items(body: dict) -> list[str]:
    return [i["product_id"] for i in body["items"]]


@pytest.mark.postgres
def test_readers_during_publishes_see_one_run_or_the_other(postgres_url) -> None:
    """Concurrent readers of every endpoint while runs are published back to back: no errors,
    and every answer is entirely the run it names."""
    engine = make_engine(postgres_url)
    app = create_app(engine)
    expected: dict[int, dict[str, list[str]]] = {}
    for generation in (0, 1):
        publish(engine, f"run-{generation}", generation)
        with TestClient(app) as client:
            expected[generation] = {
                path: _items(client.request(method, path, json=body).json())
                for method, path, body in READS
            }
    for _, path, _ in READS:  # each answer tells the two runs apart
        assert expected[0][path] != expected[1][path], path
    errors: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read(offset: int) -> None:
        with TestClient(app) as client:
            n = offset
            while not stop.is_set():
                method, path, body = READS[n % len(READS)]
                n += 1
                response = client.request(method, path, json=body)
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code} {response.text}")
                    continue
                answer = response.json()
                seen.add(answer["run_id"])
                generation = int(answer["run_id"].split("-")[1]) % 2
                if _items(answer) != expected[generation][path]:
                    errors.append(f"{path}: mixed answer from {answer['run_id']}: {answer}")

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    try:
        for n in range(2, 8):
            publish(engine, f"run-{n}", n % 2)
    finally:
        stop.set()
        for t in readers:
            t.join()
        engine.dispose()
    assert errors == []
    assert len(seen) >= 2  # the readers really straddled publishes


@pytest.mark.postgres
def test_one_statement_takes_current_run_first(postgres_url) -> None:
    """The one-statement reads are safe only because PostgreSQL locks `current_run` (their
    first FROM item) before any other view: while a switch holds the other views, a reader
    must already hold `current_run`, or reader and switch would deadlock. Checked when the
    statement is parsed, when its prepared plan is reused, and after a publish re-created the
    views under it."""
    import asyncio

    import asyncpg

    from fashion_recs.personal.routing import segment_level_keys
    from fashion_recs.service import CART, FBT, SERVER_SETTINGS, SIMILAR, USER_LIST
    from fashion_recs.service import _popular_query as popular_query

    engine = make_engine(postgres_url)
    publish(engine, "run-1")
    statements = {
        "user": (USER_LIST, ("old", 12)),
        "similar": (SIMILAR[False], (P[0], 12)),
        "similar by model": (SIMILAR[True], (P[0], 12, "fashion_clip")),
        "fbt": (FBT, (P[0], 12)),
        "cart": (CART, ([P[0], P[1]],)),
    }
    for name, keys in {
        "popular": segment_level_keys(None, None, "unknown"),
        "popular by segment": segment_level_keys("25-34", "North", "unknown"),
    }.items():
        query, args = popular_query(keys, 12, with_run=True)
        statements[name] = (query, tuple(args))
    views = [t.name for t in tables()]

    async def locks_while_blocked(reader, holder, query, args) -> list[tuple[str, bool]]:
        pid = await reader.fetchval("SELECT pg_backend_pid()")
        await holder.execute(
            f"BEGIN; LOCK TABLE {', '.join(views)} IN ACCESS EXCLUSIVE MODE"
        )  # fmt: skip
        task = asyncio.ensure_future(reader.fetch(query.postgres, *args))

        async def reader_locks() -> list[tuple[str, bool]]:
            rows = await holder.fetch(
                "SELECT relation::regclass::text AS rel, granted FROM pg_locks "
                "WHERE pid = $1 AND locktype = 'relation'",
                pid,
            )
            return [(rel, granted) for rel, granted in rows]

        try:
            for _ in range(500):
                if any(not granted for _, granted in await reader_locks()):
                    # pg_locks reads each backend's fast-path locks (the reader's share lock
                    # on current_run is one) before the main lock table, so a look taken while
                    # the reader was still parsing can miss a lock it took just before it began
                    # to wait. Now that it waits, a second look sees all it holds.
                    return await reader_locks()
                await asyncio.sleep(0.01)
            raise AssertionError("the reader never waited for the switched views")
        finally:
            await holder.execute("ROLLBACK")
            await task

    async def check() -> None:
        dsn = postgres_url
        reader = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
        holder = await asyncpg.connect(dsn)
        try:
            for when in ("parsed", "prepared", "after a publish"):
                if when == "after a publish":
                    publish(engine, "run-2", 1)
                for name, (query, args) in statements.items():
                    locks = await locks_while_blocked(reader, holder, query, args)
                    assert (CURRENT_RUN_VIEW, True) in locks, (name, when, locks)
        finally:
            await reader.close()
            await holder.close()

    try:
        asyncio.run(check())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_dead_connection_is_replaced(postgres_url) -> None:
    """A pooled connection the server ended (a restart, an administrator) costs no request:
    the read runs again on a fresh one."""
    import psycopg

    engine = make_engine(postgres_url)
    publish(engine, "run-1")
    try:
        with TestClient(create_app(engine)) as client:
            assert client.get("/users/old/recommendations").status_code == 200
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'fashion-recs serve'"
                ).fetchall()
            assert ended
            for path in ("/users/old/recommendations", "/users/surveyed/recommendations"):
                assert client.get(path).status_code == 200, path
    finally:
        engine.dispose()


def test_statements_are_written_once_for_both_databases() -> None:
    query = sql("SELECT a FROM t WHERE b = ANY($1) AND c = $2 LIMIT $2")
    assert query.postgres == "SELECT a FROM t WHERE b = ANY($1) AND c = $2 LIMIT $2"
    assert query.sqlite == (
        "SELECT a FROM t WHERE b IN (SELECT value FROM json_each(?1)) AND c = ?2 LIMIT ?2"
    )


def test_the_app_opens_its_database_in_its_lifespan(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    publish(engine, "run-1")
    with pytest.raises(RuntimeError, match="lifespan"):
        TestClient(create_app(engine)).get("/health")
    with TestClient(create_app(engine)) as client:
        assert client.get("/health").json() == {"status": "ok", "run_id": "run-1"}
    engine.dispose()


def test_log_timestamps_keep_their_zone(client, engine) -> None:
    client.post(
        "/interactions",
        json={"user_id": "zone", "product_id": P[1], "event_name": "purchase",
              "event_ts": "2026-11-02T12:00:00+01:00"},
    )  # fmt: skip
    from fashion_recs.interaction_log import read_interaction_log

    table = read_interaction_log(
        engine, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)
    )
    assert table.column("event_ts").to_pylist() == [datetime(2026, 11, 2, 11, tzinfo=UTC)]


def test_serve_command_answers_over_http(tmp_path) -> None:
    """`fashion-recs serve` starts uvicorn on the given port over the given database."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from tests.postgres_server import free_port

    db = tmp_path / "results.db"
    engine = make_engine(f"sqlite:///{db}")
    publish(engine, "run-served")
    engine.dispose()
    port = free_port()
    cli = Path(sys.executable).parent / "fashion-recs"
    proc = subprocess.Popen(
        [str(cli), "serve", "--db", f"sqlite:///{db}", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert response.json() == {"status": "ok", "run_id": "run-served"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
