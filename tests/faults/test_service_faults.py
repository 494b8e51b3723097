"""The service under attack and with its database gone: short 4xx answers for bad requests,
a JSON 503 for a database that is down or frozen, never a 500 and never a wait without end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from fashion_recs.publish import make_engine
from fashion_recs.service import ServiceLimits, create_app
from tests.faults.servers import SilentServer, closed_port
from tests.test_service import P, publish

MiB = 1 << 20


def serve(engine, **limits) -> TestClient:
    return TestClient(create_app(engine, limits=ServiceLimits(**limits)))


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    publish(engine, "run-1")
    with serve(engine) as client:
        yield client


def interaction(**changes) -> dict:
    return {"user_id": "u1", "product_id": P[0], "event_name": "purchase", **changes}


def test_a_body_over_the_limit_is_refused_before_it_is_read(engine) -> None:
    publish(engine, "run-1")
    with serve(engine, max_body_bytes=10_000) as client:
        big = b'{"product_ids": ["' + b"a" * 20_000 + b'"]}'
        declared = client.post("/cart/fbt", content=big, headers={"content-type": "json"})
        assert declared.status_code == 413 and len(declared.content) < 200

        def chunks() -> Iterator[bytes]:  # no Content-Length: the stream is counted
            for _ in range(100):
                yield b" " * 1000

        streamed = client.post("/cart/fbt", content=chunks())
        assert streamed.status_code == 413
        # Under the limit everything works as before.
        ok = client.post("/cart/fbt", json={"product_ids": [P[0]]})
        assert ok.status_code == 200
    # The default limit is 1 MiB.
    with serve(engine) as client:
        response = client.post("/interactions", content=b"x" * (2 * MiB))
        assert response.status_code == 413 and "1048576 bytes" in response.json()["detail"]


def test_a_cart_over_the_limit_is_a_short_422(client) -> None:
    response = client.post("/cart/fbt", json={"product_ids": [P[0]] * 101})
    assert response.status_code == 422 and len(response.content) < 1000


def test_422_answers_never_echo_the_input(engine) -> None:
    publish(engine, "run-1")
    huge = "p" * MiB
    with serve(engine, max_body_bytes=4 * MiB) as client:
        answers = [
            client.post("/cart/fbt", json={"product_ids": [huge]}),
            client.post("/interactions", json=interaction(user_id=huge)),
            client.post("/interactions", json={huge[:5000]: 1}),
            client.post("/interactions", content=b"{" + b"x" * 5000, headers={"content-type": "a"}),
            client.get(f"/products/{huge[:20_000]}/fbt"),
            client.get("/popular", params={"region": huge[:20_000]}),
            client.get(f"/products/{P[0]}/similar", params={"model": huge[:20_000]}),
        ]
    for answer in answers:
        assert answer.status_code == 422, answer.text[:300]
        assert len(answer.content) < 2000
        assert "ppppp" * 20 not in answer.text


def test_nul_and_broken_text_anywhere_are_4xx_not_500(client) -> None:
    answers = {
        "user path": client.get("/users/a%00b/recommendations"),
        "product path": client.get("/products/%00/fbt"),
        "similar path": client.get(f"/products/{P[0]}%00/similar"),
        "query": client.get("/popular", params={"age_group": "25\x0034"}),
        "cart": client.post("/cart/fbt", json={"product_ids": [P[0], "a\x00"]}),
        "interaction": client.post("/interactions", json=interaction(user_id="u\x00")),
        "interaction product": client.post("/interactions", json=interaction(product_id="\x00")),
        "lone surrogate": client.post(
            "/cart/fbt",
            content=b'{"product_ids": ["\\ud800"]}',
            headers={"content-type": "application/json"},
        ),
    }
    for name, answer in answers.items():
        assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:200])
        assert len(answer.content) < 2000


def test_an_event_from_the_future_is_refused(engine) -> None:
    publish(engine, "run-1")
    with serve(engine, max_clock_skew_s=60) as client:
        far = client.post("/interactions", json=interaction(event_ts="9999-12-31T23:59:59Z"))
        assert far.status_code == 422 and "future" in far.json()["detail"]
        soon = datetime.now(UTC) + timedelta(minutes=5)
        ahead = client.post("/interactions", json=interaction(event_ts=soon.isoformat()))
        assert ahead.status_code == 422
        skewed = datetime.now(UTC) + timedelta(seconds=30)  # within the allowed skew
        assert (
            client.post("/interactions", json=interaction(event_ts=skewed.isoformat())).status_code
            == 201
        )


def test_writes_need_the_api_key_when_one_is_set(engine) -> None:
    publish(engine, "run-1")
    with serve(engine, api_key="s3cret") as client:
        assert client.post("/interactions", json=interaction()).status_code == 401
        wrong = client.post("/interactions", json=interaction(), headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["detail"]
        right = client.post("/interactions", json=interaction(), headers={"X-API-Key": "s3cret"})
        assert right.status_code == 201
        assert client.get("/users/old/recommendations").status_code == 200  # reads stay open


def test_limits_come_from_the_environment() -> None:
    limits = ServiceLimits.from_env(
        {"FASHION_RECS_SERVICE_MAX_BODY_BYTES": "2048", "FASHION_RECS_API_KEY": "k",
         "FASHION_RECS_SERVICE_STATEMENT_TIMEOUT_S": "2.5"}
    )  # fmt: skip
    assert (limits.max_body_bytes, limits.statement_timeout_s, limits.api_key) == (2048, 2.5, "k")
    assert ServiceLimits.from_env({}) == ServiceLimits()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_that_is_down_is_a_json_503(kind, tmp_path) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'missing' / 'results.db'}"
    else:
        url = f"postgresql://recs:pw@127.0.0.1:{closed_port()}/recs"
    with serve(make_engine(url), connect_timeout_s=1) as client:
        for path in ("/health", "/users/old/recommendations", f"/products/{P[0]}/fbt"):
            answer = client.get(path)
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert "not available" in body["detail"] and body["reason"]
            assert answer.headers["retry-after"] == "5" and "pw" not in answer.text
        assert client.post("/interactions", json=interaction()).status_code == 503


def test_a_frozen_database_is_a_503_within_seconds() -> None:
    frozen = SilentServer()
    try:
        engine = make_engine(f"postgresql://recs:pw@127.0.0.1:{frozen.port}/recs")
        with serve(engine, connect_timeout_s=1) as client:
            started = time.monotonic()
            answer = client.get("/health")
            assert answer.status_code == 503
            assert time.monotonic() - started < 5
    finally:
        frozen.close()


@pytest.mark.postgres
def test_a_statement_stuck_behind_a_lock_is_a_503_within_seconds(postgres_url) -> None:
    engine = make_engine(postgres_url)
    publish(engine, "run-1")
    blocker = engine.connect()
    try:
        blocker.execute(sa.text("LOCK TABLE current_run IN ACCESS EXCLUSIVE MODE"))
        with serve(engine, statement_timeout_s=1) as client:
            started = time.monotonic()
            answer = client.get("/users/old/recommendations")
            assert answer.status_code == 503, answer.text
            assert time.monotonic() - started < 5
            blocker.rollback()
            # The database answers again: so does the service.
            assert client.get("/users/old/recommendations").status_code == 200
    finally:
        blocker.close()
        engine.dispose()
