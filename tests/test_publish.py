"""Atomic publishing on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from fashion_recs.errors import PublishError
from fashion_recs.publish import (
    TableSpec,
    connection_url,
    default_results_url,
    make_engine,
    publish_run,
    read_table,
)


def popular(run: int, n: int = 5) -> pa.Table:
    return pa.table(
        {
            "product_id": [f"p{run}_{i}" for i in range(n)],
            "rank": pa.array(range(1, n + 1), pa.int32()),
            "score": [float(n - i) for i in range(n)],
            "images": [[f"img{i}.png"] for i in range(n)],
        }
    )


def tables(run: int) -> list[TableSpec]:
    users = pa.table({"user_id": [f"U{run}"], "age_group": ["25-34"]})
    return [
        TableSpec("popular_products", popular(run), ("product_id",)),
        TableSpec("user_segments", users),
    ]


METRICS = [{"model": "popularity", "metric": "map_at_k", "k": 12, "value": 0.1, "n_users": 10}]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def current_products(engine) -> list[str]:
    return sorted(r["product_id"] for r in read_table(engine, "popular_products"))


def test_publish_switches_views_and_records_the_run(engine) -> None:
    first = publish_run(
        engine, run_id="r1", retailer="demo", tables=tables(1), summary={"a": 1}, metrics=METRICS
    )
    assert current_products(engine) == [f"p1_{i}" for i in range(5)]
    second = publish_run(
        engine, run_id="r2", retailer="demo", tables=tables(2), summary={}, metrics=[]
    )
    assert second["seq"] == first["seq"] + 1
    assert current_products(engine) == [f"p2_{i}" for i in range(5)]
    assert read_table(engine, "user_segments") == [{"user_id": "U2", "age_group": "25-34"}]
    current = read_table(engine, "current_run")
    assert [(r["run_id"], r["status"]) for r in current] == [("r2", "published")]
    metrics = read_table(engine, "run_metrics")
    assert [(m["run_id"], m["metric"], m["value"]) for m in metrics] == [("r1", "map_at_k", 0.1)]
    row = read_table(engine, "popular_products")[0]
    assert row["images"] == '["img0.png"]'  # lists travel as JSON text


def test_old_runs_beyond_keep_runs_are_dropped(engine) -> None:
    for run in range(1, 5):
        publish_run(
            engine,
            run_id=f"r{run}",
            retailer="demo",
            tables=tables(run),
            summary={},
            metrics=[],
            keep_runs=2,
        )
    names = set(sa.inspect(engine).get_table_names())
    physical = sorted(n for n in names if n.startswith("popular_products__"))
    assert physical == ["popular_products__r000003", "popular_products__r000004"]
    statuses = [(r["run_id"], r["status"]) for r in read_table(engine, "runs")]
    assert sorted(statuses) == [
        ("r1", "expired"),
        ("r2", "expired"),
        ("r3", "published"),
        ("r4", "published"),
    ]


def test_republishing_the_same_run_supersedes_its_earlier_copy(engine) -> None:
    publish_run(engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=[])
    publish_run(engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=[])
    statuses = sorted(r["status"] for r in read_table(engine, "runs"))
    assert statuses == ["expired", "published"]
    assert current_products(engine) == [f"p1_{i}" for i in range(5)]


def test_interrupted_publish_leaves_readers_on_the_previous_run(engine) -> None:
    publish_run(engine, run_id="good", retailer="demo", tables=tables(1), summary={}, metrics=[])
    broken = popular(2).set_column(
        0, pa.field("product_id", pa.string(), nullable=False), pa.array(["x", None, "y", "z", "w"])
    )
    specs = [
        TableSpec("user_segments", pa.table({"user_id": ["U9"], "age_group": ["18-24"]})),
        TableSpec("popular_products", broken),
    ]
    with pytest.raises(PublishError, match="readers still see the previous run"):
        publish_run(engine, run_id="bad", retailer="demo", tables=specs, summary={}, metrics=[])
    assert current_products(engine) == [f"p1_{i}" for i in range(5)]
    assert read_table(engine, "user_segments") == [{"user_id": "U1", "age_group": "25-34"}]
    leftovers = [n for n in sa.inspect(engine).get_table_names() if n.endswith("r000002")]
    assert leftovers == []
    failed = [r for r in read_table(engine, "runs") if r["run_id"] == "bad"]
    assert failed[0]["status"] == "failed" and failed[0]["error"]


def test_connection_url_builds_sqlite_and_postgres_urls(tmp_path) -> None:
    assert connection_url("sqlite", "/tmp/r.db") == "sqlite:////tmp/r.db"
    url = connection_url("postgres", "db", "recs", "p@ss", 5432, "recs")
    assert url == "postgresql+psycopg://recs:p%40ss@db:5432/recs"
    with pytest.raises(ValueError, match="sqlite or postgres"):
        connection_url("mysql", "h")
    assert (
        default_results_url("sqlite:///data/r.db", str(tmp_path))
        == f"sqlite:///{tmp_path}/data/r.db"
    )
