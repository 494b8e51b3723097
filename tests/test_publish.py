"""Atomic publishing on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from fashion_recs import publish
from fashion_recs.errors import PublishError
from fashion_recs.publish import (
    TableSpec,
    connection_url,
    default_results_url,
    make_engine,
    physical_name,
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


def awkward_table() -> pa.Table:
    """Values a load may mangle: quotes, commas, line breaks, empty string against NULL,
    NaN, extreme doubles, booleans with NULL, lists."""
    return pa.table(
        {
            "product_id": ['a "quoted", text', "line\nbreak", "", None, "ünïcode ✓"],
            "rank": pa.array([1, 2, 3, 4, 2**40], pa.int64()),
            "score": [0.1, float("nan"), 1e-300, -1.7976931348623157e308, None],
            "flag": [True, False, None, True, False],
            "images": [["x,y.png"], [], None, ['q"uote.png', "b.png"], ["\\back"]],
        }
    )


def assert_awkward_rows(rows: list[dict]) -> None:
    """`awkward_table`'s rows as the database gives them back (lists as JSON text)."""
    assert [r["product_id"] for r in rows] == awkward_table().column("product_id").to_pylist()
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 2**40]
    assert [r["score"] for r in rows] == [0.1, None, 1e-300, -1.7976931348623157e308, None]
    assert [None if r["flag"] is None else bool(r["flag"]) for r in rows] == [
        True, False, None, True, False
    ]  # fmt: skip
    assert [r["images"] for r in rows] == [
        '["x,y.png"]',
        "[]",
        None,
        '["q\\"uote.png", "b.png"]',
        '["\\\\back"]',
    ]


def published_rows(engine, table: pa.Table) -> list[dict]:
    """`table` published as run r1's popular_products, read back in rank order."""
    publish_run(
        engine,
        run_id="r1",
        retailer="demo",
        tables=[TableSpec("popular_products", table, ("product_id",))],
        summary={},
        metrics=[],
    )
    return sorted(read_table(engine, "popular_products"), key=lambda r: r["rank"])


def test_every_value_survives_the_load_exactly(engine) -> None:
    """PostgreSQL loads Arrow-written CSV through COPY, SQLite takes rows: both must store
    the same values, including the awkward ones (quotes, commas, line breaks, empty string
    against NULL, NaN, extreme doubles, time zones, lists)."""
    when = datetime(2026, 11, 1, 9, 30, 15, 123456, tzinfo=UTC)
    awkward = awkward_table().append_column(
        "at", pa.array([when, None, when, when, when], pa.timestamp("us", tz="UTC"))
    )
    rows = published_rows(engine, awkward)
    assert_awkward_rows(rows)
    stamps = [r["at"] for r in rows]
    assert stamps[1] is None
    for stamp in (stamps[0], stamps[2]):
        parsed = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
        assert parsed.replace(tzinfo=parsed.tzinfo or UTC) == when


def test_a_table_loaded_in_batches_is_the_table_loaded_at_once(engine, monkeypatch, caplog) -> None:
    """Text and numbers go to SQLite's driver in batches (to PostgreSQL in COPY blocks),
    with a progress line between them: cut into batches of two rows, the awkward values
    are stored as they are, and the log says how far the load is."""
    awkward = awkward_table()
    monkeypatch.setattr(publish, "SQLITE_ROWS_PER_BATCH", 2)
    monkeypatch.setattr(publish, "CSV_ROWS_PER_BLOCK", 2)
    monkeypatch.setattr(publish, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="fashion_recs.publish"):
        rows = published_rows(engine, awkward)
    assert_awkward_rows(rows)
    progress = [r.getMessage() for r in caplog.records if "publish: loading" in r.getMessage()]
    assert [re.sub(r" \(.*", "", m) for m in progress] == [
        f"publish: loading {physical_name('popular_products', 1)}: {n}/5 rows" for n in (2, 4)
    ]


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


# --- overlapping publishes, one retailer per database, republished metrics, killed loads -------


def shop_tables(run: int) -> list[TableSpec]:
    """The reader-facing set the pipeline publishes: products, popular_products, user_segments."""
    products = pa.table({"product_id": [f"p{run}_{i}" for i in range(5)], "name": ["x"] * 5})
    return [TableSpec("products", products, ("product_id",)), *tables(run)]


def view_targets(engine) -> dict[str, set[str]]:
    """Every view in the database and the tables it selects from."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
            return {name: set(re.findall(r'FROM "(\w+)"', sql)) for name, sql in rows}
        rows = conn.exec_driver_sql(
            "SELECT view_name, table_name FROM information_schema.view_table_usage "
            "WHERE view_schema = current_schema()"
        )
        targets: dict[str, set[str]] = {}
        for view, table in rows:
            targets.setdefault(view, set()).add(table)
        return targets


def assert_views_sound(engine) -> None:
    """Every table a view references exists, and every view can be read."""
    existing = set(sa.inspect(engine).get_table_names())
    targets = view_targets(engine)
    assert targets, "no views"
    for view, used in targets.items():
        assert used and used <= existing, f"view {view} uses missing tables {used - existing}"
        read_table(engine, view)


def statuses(engine) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in sorted(read_table(engine, "runs"), key=lambda r: r["seq"]):
        out.setdefault(row["run_id"], []).append(row["status"])
    return out


def seqs(engine, run_id: str) -> list[int]:
    return sorted(r["seq"] for r in read_table(engine, "runs") if r["run_id"] == run_id)


def second_engine(engine):
    """Another engine on the same database, as another worker process would have."""
    return make_engine(engine.url.render_as_string(hide_password=False))


class Pause:
    """Replaces `_before_switch`: the first publish to reach it waits until released."""

    def __init__(self) -> None:
        self.paused = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def __call__(self, seq: int) -> None:
        self.calls.append(seq)
        if len(self.calls) == 1:
            self.paused.set()
            if not self.release.wait(60):
                raise RuntimeError("test never released the paused publish")


def publish_in_thread(engine, run_id: str, run: int, errors: list[BaseException]):
    def target() -> None:
        try:
            publish_run(
                engine,
                run_id=run_id,
                retailer="demo",
                tables=shop_tables(run),
                summary={},
                metrics=[],
                keep_runs=1,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"publish-{run_id}", daemon=True)
    thread.start()
    return thread


def test_overlapping_publishes_wait_for_each_other(engine, monkeypatch) -> None:
    publish_run(engine, run_id="r1", retailer="demo", tables=shop_tables(1), summary={}, metrics=[])
    pause = Pause()
    monkeypatch.setattr(publish, "_before_switch", pause)
    other = second_engine(engine)
    errors: list[BaseException] = []
    try:
        first = publish_in_thread(engine, "r2", 2, errors)
        assert pause.paused.wait(30), errors
        # r2 has loaded its tables and sits just before its view switch; r3 starts now.
        second = publish_in_thread(other, "r3", 3, errors)
        second.join(1.5)
        assert second.is_alive(), "the second publish did not wait for the first"
        assert seqs(engine, "r3") == []  # waiting before its seq is even allocated
        assert current_products(engine) == [f"p1_{i}" for i in range(5)]
    finally:
        pause.release.set()
        first.join(60)
        second.join(60)
        other.dispose()
    assert not first.is_alive() and not second.is_alive()
    assert errors == []
    (seq2,), (seq3,) = seqs(engine, "r2"), seqs(engine, "r3")
    assert seq3 > seq2 and pause.calls == [seq2, seq3]
    assert current_products(engine) == [f"p3_{i}" for i in range(5)]
    assert sorted(r["product_id"] for r in read_table(engine, "products")) == [
        f"p3_{i}" for i in range(5)
    ]
    assert view_targets(engine)["popular_products"] == {physical_name("popular_products", seq3)}
    assert_views_sound(engine)
    assert statuses(engine) == {"r1": ["expired"], "r2": ["expired"], "r3": ["published"]}
    physical = {n for n in sa.inspect(engine).get_table_names() if "__r" in n}
    assert physical == {physical_name(t.name, seq3) for t in shop_tables(3)}
    if engine.dialect.name == "sqlite":
        assert Path(f"{engine.url.database}.publish.lock").exists()


def test_a_publish_overtaken_by_a_newer_one_refuses_to_switch(engine, monkeypatch) -> None:
    """The check inside the switch transaction holds even when the lock is bypassed."""
    publish_run(engine, run_id="r1", retailer="demo", tables=shop_tables(1), summary={}, metrics=[])
    monkeypatch.setattr(publish, "_publish_lock", lambda *_: contextlib.nullcontext())
    pause = Pause()
    monkeypatch.setattr(publish, "_before_switch", pause)
    errors: list[BaseException] = []
    try:
        stale = publish_in_thread(engine, "r2", 2, errors)
        assert pause.paused.wait(30), errors
        publish_run(
            engine,
            run_id="r3",
            retailer="demo",
            tables=shop_tables(3),
            summary={},
            metrics=[],
            keep_runs=1,
        )
    finally:
        pause.release.set()
        stale.join(60)
    assert len(errors) == 1 and isinstance(errors[0], PublishError)
    assert "went live while this publish" in str(errors[0])
    assert "Readers stay on run 'r3'" in str(errors[0])
    assert current_products(engine) == [f"p3_{i}" for i in range(5)]
    assert_views_sound(engine)
    (seq2,) = seqs(engine, "r2")
    assert not [n for n in sa.inspect(engine).get_table_names() if n.endswith(f"{seq2:06d}")]
    assert statuses(engine) == {"r1": ["expired"], "r2": ["failed"], "r3": ["published"]}
    assert [r["run_id"] for r in read_table(engine, "current_run")] == ["r3"]


def test_a_database_holds_one_retailer(engine) -> None:
    broken = pa.table(
        [pa.array(["x", None])], schema=pa.schema([pa.field("product_id", pa.string(), False)])
    )
    with pytest.raises(PublishError, match="failed"):
        publish_run(
            engine,
            run_id="x1",
            retailer="never_live",
            tables=[TableSpec("popular_products", broken)],
            summary={},
            metrics=[],
        )
    # A retailer whose only run failed does not own the database.
    publish_run(engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=[])
    with pytest.raises(
        PublishError, match=r"separate database \(SQLite file\) or PostgreSQL schema per retailer"
    ) as info:
        publish_run(engine, run_id="o1", retailer="other", tables=tables(2), summary={}, metrics=[])
    assert "published runs of retailer 'demo'" in str(info.value)
    assert current_products(engine) == [f"p1_{i}" for i in range(5)]
    assert seqs(engine, "o1") == []  # a refused retailer records nothing
    assert not [n for n in sa.inspect(engine).get_table_names() if n.endswith("r000003")]
    publish_run(engine, run_id="r2", retailer="demo", tables=tables(2), summary={}, metrics=[])
    assert current_products(engine) == [f"p2_{i}" for i in range(5)]


def test_republishing_a_run_replaces_its_metrics(engine) -> None:
    two = [*METRICS, {**METRICS[0], "k": 6, "value": 0.2}]
    publish_run(engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=two)
    again = publish_run(
        engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=METRICS
    )
    publish_run(engine, run_id="r2", retailer="demo", tables=tables(2), summary={}, metrics=two)
    rows = sorted(
        (m["run_id"], m["seq"], m["k"], m["value"]) for m in read_table(engine, "run_metrics")
    )
    assert rows == [
        ("r1", again["seq"], 12, 0.1),
        ("r2", again["seq"] + 1, 6, 0.2),
        ("r2", again["seq"] + 1, 12, 0.1),
    ]


def test_leftovers_of_killed_and_failed_publishes_are_dropped(engine) -> None:
    publish_run(engine, run_id="r1", retailer="demo", tables=tables(1), summary={}, metrics=[])
    insert = sa.text(
        "INSERT INTO runs (run_id, retailer, status, created_at, error) "
        "VALUES (:run_id, 'demo', :status, :now, :error) RETURNING seq"
    )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        killed = conn.execute(
            insert, {"run_id": "killed", "status": "loading", "now": now, "error": None}
        ).scalar_one()
        failed = conn.execute(
            insert, {"run_id": "broke", "status": "failed", "now": now, "error": "disk full"}
        ).scalar_one()
        # The killed publish got as far as two tables, one of a name the next run lacks.
        leftovers = [
            physical_name("popular_products", killed),
            physical_name("products", killed),
            physical_name("user_segments", failed),
        ]
        for name in leftovers:
            conn.exec_driver_sql(f'CREATE TABLE "{name}" (product_id TEXT)')
            conn.exec_driver_sql(f"INSERT INTO \"{name}\" VALUES ('stale')")
    record = publish_run(
        engine, run_id="r2", retailer="demo", tables=tables(2), summary={}, metrics=[]
    )
    assert record["cleaned_up"] == [killed, failed] and record["expired"] == []
    names = set(sa.inspect(engine).get_table_names())
    assert not names & set(leftovers)
    assert {physical_name("popular_products", s) for s in (1, record["seq"])} <= names
    assert statuses(engine) == {
        "r1": ["published"],
        "killed": ["abandoned"],
        "broke": ["failed"],
        "r2": ["published"],
    }
    runs = {r["run_id"]: r for r in read_table(engine, "runs")}
    assert runs["broke"]["error"] == "disk full"
    assert "never finished loading" in runs["killed"]["error"]
    assert current_products(engine) == [f"p2_{i}" for i in range(5)]
    assert_views_sound(engine)


def test_publish_lock_location_and_keep_runs(tmp_path) -> None:
    lock_path = publish._sqlite_lock_path
    assert lock_path(make_engine("sqlite://")) is None
    assert lock_path(make_engine("sqlite:///:memory:")) is None
    db = tmp_path / "r.db"
    assert lock_path(make_engine(f"sqlite:///{db}")) == f"{db}.publish.lock"
    memory = make_engine("sqlite://")
    with pytest.raises(ValueError, match="keep_runs"):
        publish_run(
            memory, run_id="r", retailer="d", tables=tables(1), summary={}, metrics=[], keep_runs=0
        )
    publish_run(memory, run_id="r", retailer="d", tables=tables(1), summary={}, metrics=[])
    assert current_products(memory) == [f"p1_{i}" for i in range(5)]
