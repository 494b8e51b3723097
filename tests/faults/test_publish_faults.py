"""The results database misbehaving: a stopped publisher, a database down or frozen, bad text."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from fashion_recs.errors import DatabaseUnavailable, PublishError, PublishLockTimeout
from fashion_recs.publish import TableSpec, make_engine, publish_run

ROOT = Path(__file__).resolve().parents[2]
HOLD_LOCK = """
import sys, time
from fashion_recs.publish import _publish_lock, make_engine
with _publish_lock(make_engine(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def one_table(value: str = "p1") -> list[TableSpec]:
    return [TableSpec("popular_products", pa.table({"product_id": [value], "rank": [1]}))]


def test_a_stopped_publisher_makes_the_next_publish_fail_naming_it(engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, url], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)  # a frozen publisher keeps its lock
        started = time.monotonic()
        with pytest.raises(PublishLockTimeout, match=r"held by .*pid \d+ since \d{4}-") as info:
            publish_run(
                engine,
                run_id="r1",
                retailer="demo",
                tables=one_table(),
                summary={},
                metrics=[],
                lock_timeout_s=1.0,
            )
        assert time.monotonic() - started < 15
        if engine.dialect.name == "sqlite":
            assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.kill()
        holder.wait(30)
    # Once the holder is gone, publishing works again.
    publish_run(engine, run_id="r1", retailer="demo", tables=one_table(), summary={}, metrics=[])


def test_a_database_that_is_down_gives_a_retryable_error_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(f"postgresql://recs:s3cret@127.0.0.1:{port}/results", connect_timeout_s=2)
    with pytest.raises(DatabaseUnavailable, match=r"recs:\*\*\*@127\.0\.0\.1") as info:
        publish_run(
            engine, run_id="r1", retailer="demo", tables=one_table(), summary={}, metrics=[]
        )
    assert "s3cret" not in str(info.value)
    assert info.value.retryable


def test_a_frozen_database_fails_fast_instead_of_hanging() -> None:
    with socket.socket() as frozen:  # accepts connections, never answers
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(8)
        port = frozen.getsockname()[1]
        engine = make_engine(f"postgresql://recs:pw@127.0.0.1:{port}/results", connect_timeout_s=1)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            publish_run(
                engine, run_id="r1", retailer="demo", tables=one_table(), summary={}, metrics=[]
            )
        assert time.monotonic() - started < 10


def test_a_nul_in_a_text_column_fails_before_anything_is_loaded(engine) -> None:
    with pytest.raises(PublishError, match=r"'popular_products', column 'product_id'.*NUL"):
        publish_run(
            engine, run_id="r1", retailer="demo", tables=one_table("p\x001"), summary={}, metrics=[]
        )
    assert "runs" not in sa.inspect(engine).get_table_names()
