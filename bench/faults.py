"""The robustness matrix: broken inputs, killed publishes, a database down or frozen, and the
service under attack. Everything runs on 127.0.0.1; PostgreSQL is a throwaway server.

- input cases: every case of `tests/faults/cases.py` (`input_cases(big=...)`), run through
  its stage and checked (outcome, reasons, accounting by records and lines);
- kill points: a child process publishes a run and is killed with SIGKILL at `--kill-points`
  offsets spread over a measured publish, on SQLite and on PostgreSQL; afterwards readers
  must see the old run or the new one, never a mix, and the next publish must succeed;
- the database stopped (a closed port) and frozen (a server that accepts and never answers):
  publishes and service requests must fail within 15 s, the service with a 503;
- the service attacked: oversized bodies, long ids, NUL and broken Unicode, future events,
  unknown ids; no answer may be a 500 and none may take 15 s.

Writes bench/results/faults.json with a top-level `summary`.

    python bench/faults.py [--kill-points 20] [--big 2097152]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include")]

import pyarrow as pa  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from tests.faults.cases import check_case, input_cases, rows_unaccounted, run_case  # noqa: E402
from tests.faults.servers import SilentServer, closed_port  # noqa: E402
from tests.postgres_server import start_server  # noqa: E402
from tests.test_service import P  # noqa: E402
from tests.test_service import publish as publish_small  # noqa: E402

from fashion_recs.publish import TableSpec, make_engine, publish_run  # noqa: E402
from fashion_recs.service import ServiceLimits, create_app  # noqa: E402

HANG_S = 15.0
ROWS = 200_000
PUBLISH_CHILD = """
import sys
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/include"]
from bench.faults import publish_generation
from fashion_recs.publish import make_engine
publish_generation(make_engine(sys.argv[1]), int(sys.argv[2]))
print("done", flush=True)
"""


def generation_tables(generation: int, rows: int = ROWS) -> list[TableSpec]:
    """Two tables whose every row names its generation: a mix of two runs shows."""
    tag = f"g{generation}"
    popular = pa.table(
        {"product_id": [f"{tag}-{i}" for i in range(rows)], "rank": list(range(1, rows + 1))}
    )
    similar = pa.table(
        {
            "product_id": [f"{tag}-{i % 1000}" for i in range(rows)],
            "similar_product_id": [f"{tag}-s{i}" for i in range(rows)],
            "rank": [i // 1000 + 1 for i in range(rows)],
        }
    )
    return [
        TableSpec("popular_products", popular, ("product_id",)),
        TableSpec("similar_products", similar, ("product_id",)),
    ]


def publish_generation(engine: Any, generation: int) -> None:
    publish_run(
        engine, run_id=f"g{generation}", retailer="demo", tables=generation_tables(generation),
        summary={}, metrics=[], keep_runs=2, lock_timeout_s=30,
    )  # fmt: skip


def served_generations(engine: Any) -> tuple[str | None, set[str]]:
    """(current run id, the generation tags every published table's rows carry)."""
    with engine.connect() as conn:
        run = conn.exec_driver_sql("SELECT run_id FROM current_run").scalar()
        tags = set()
        for table in ("popular_products", "similar_products"):
            column = "product_id"
            rows = conn.exec_driver_sql(
                f"SELECT DISTINCT substr({column}, 1, instr({column}, '-') - 1) FROM {table}"
                if engine.dialect.name == "sqlite"
                else f"SELECT DISTINCT split_part({column}, '-', 1) FROM {table}"
            ).all()
            tags |= {r[0] for r in rows}
            n = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
            if n != ROWS:
                tags.add(f"{table}:{n} rows")
    return run, tags


def kill_points(url: str, points: int) -> dict[str, Any]:
    engine = make_engine(url)
    publish_generation(engine, 0)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}"}
    command = [sys.executable, "-c", PUBLISH_CHILD, url, "1", str(ROOT)]
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    whole = time.monotonic() - started
    survived, details, generation = 0, [], 1
    for i in range(1, points + 1):
        generation += 1
        offset = whole * i / (points + 1)
        child = subprocess.Popen([*command[:4], str(generation), str(ROOT)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(offset)
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        before_run, tags = served_generations(engine)
        one_run = len(tags) == 1 and before_run == next(iter(tags))
        # The next publish succeeds and is served whole.
        generation += 1
        try:
            publish_generation(engine, generation)
            after_run, after_tags = served_generations(engine)
            next_ok = after_run == f"g{generation}" and after_tags == {f"g{generation}"}
        except Exception as exc:  # the point of the bench is to count these
            next_ok, after_run = False, f"{type(exc).__name__}: {exc}"[:300]
        ok = one_run and next_ok
        survived += ok
        details.append({"offset_s": round(offset, 3), "served": before_run, "tags": sorted(tags),
                        "next_publish": after_run, "ok": ok})  # fmt: skip
    engine.dispose()
    return {"publish_s": round(whole, 3), "points": points, "survived": survived,
            "details": details}  # fmt: skip


def timed(fn: Any) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


def database_states() -> list[dict[str, Any]]:
    """Publishes and service requests against a stopped and a frozen PostgreSQL."""
    frozen = SilentServer()
    results = []
    try:
        for state, port in (("stopped", closed_port()), ("frozen", frozen.port)):
            url = f"postgresql://recs:pw@127.0.0.1:{port}/recs"
            engine = make_engine(url, connect_timeout_s=3, statement_timeout_s=5)
            took, got = timed(lambda e=engine: publish_generation(e, 1))
            results.append({"state": state, "what": "publish", "seconds": round(took, 2),
                            "result": type(got).__name__})  # fmt: skip
            with TestClient(create_app(engine, limits=ServiceLimits())) as client:
                for path in ("/health", "/users/u/recommendations", f"/products/{P[0]}/fbt"):
                    took, got = timed(lambda c=client, p=path: c.get(p))
                    results.append({"state": state, "what": f"GET {path}",
                                    "seconds": round(took, 2),
                                    "status": getattr(got, "status_code", None)})  # fmt: skip
    finally:
        frozen.close()
    return results


def attacks(client: TestClient) -> list[tuple[str, str, Any]]:
    huge = "p" * (1 << 20)
    body = {"user_id": "u", "product_id": P[0], "event_name": "purchase"}
    return [
        ("POST", "/cart/fbt", {"content": b'{"product_ids": ["' + b"a" * (50 << 20) + b'"]}'}),
        ("POST", "/cart/fbt", {"json": {"product_ids": [P[0]] * 10_000}}),
        ("POST", "/cart/fbt", {"json": {"product_ids": [huge[:900_000]]}}),
        ("POST", "/cart/fbt", {"json": {"product_ids": ["a\x00b"]}}),
        (
            "POST",
            "/cart/fbt",
            {
                "content": b'{"product_ids": ["\\ud800"]}',
                "headers": {"content-type": "application/json"},
            },
        ),
        ("POST", "/cart/fbt", {"content": b"{not json"}),
        ("POST", "/cart/fbt", {"json": {"product_ids": ["nope"] * 50}}),
        ("POST", "/interactions", {"json": {**body, "user_id": "u\x00"}}),
        ("POST", "/interactions", {"json": {**body, "product_id": "\x00"}}),
        ("POST", "/interactions", {"json": {**body, "event_ts": "9999-12-31T23:59:59Z"}}),
        ("POST", "/interactions", {"json": {**body, "event_ts": "2026-01-01T00:00:00"}}),
        ("POST", "/interactions", {"json": {**body, "user_id": huge[:900_000]}}),
        ("POST", "/interactions", {"json": [1, 2, 3]}),
        ("GET", "/users/a%00b/recommendations", {}),
        ("GET", f"/users/{'u' * 20_000}/recommendations", {}),
        ("GET", "/users/u/recommendations?k=100000", {}),
        ("GET", "/users/u/recommendations?k=-1", {}),
        ("GET", "/products/%00/fbt", {}),
        ("GET", "/products/%ED%A0%80/similar", {}),
        ("GET", f"/products/{P[0]}/similar?model=%00", {}),
        ("GET", f"/products/{P[0]}/similar?model={'m' * 20_000}", {}),
        ("GET", "/popular?age_group=%00&region=x", {}),
        ("GET", "/users/o'; DROP TABLE runs; --/recommendations", {}),
    ]


def service_attacks(engine: Any) -> list[dict[str, Any]]:
    publish_small(engine, "run-1")
    results = []
    with TestClient(create_app(engine)) as client:
        for method, path, kwargs in attacks(client):
            took, got = timed(lambda m=method, p=path, k=kwargs: client.request(m, p, **k))
            results.append({"request": f"{method} {path[:60]}", "seconds": round(took, 2),
                            "status": getattr(got, "status_code", type(got).__name__),
                            "answer_bytes": len(getattr(got, "content", b""))})  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-points", type=int, default=20)
    parser.add_argument("--big", type=int, default=2 << 20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fashion-recs-faults-"))
    report: dict[str, Any] = {}

    cases, ok, unaccounted = [], 0, 0
    for i, case in enumerate(input_cases(big=args.big)):
        got = run_case(case, work / "inputs" / f"{i:03d}")
        problems = check_case(case, got)
        ok += not problems
        unaccounted += rows_unaccounted(case, got)
        cases.append({"case": case.name, "outcome": got.outcome, "problems": problems})
    report["input_cases"] = cases
    print(f"input cases: {ok}/{len(cases)} ok, {unaccounted} rows unaccounted", flush=True)

    server = start_server()
    try:
        sqlite_url = f"sqlite:///{work / 'kill.db'}"
        report["kill_sqlite"] = kill_points(sqlite_url, args.kill_points)
        report["kill_postgres"] = kill_points(server.create_database("kill"), args.kill_points)
        for name in ("kill_sqlite", "kill_postgres"):
            r = report[name]
            print(f"{name}: {r['survived']}/{r['points']} survived", flush=True)
        report["database_states"] = database_states()
        report["attacks_sqlite"] = service_attacks(make_engine(f"sqlite:///{work / 'svc.db'}"))
        report["attacks_postgres"] = service_attacks(make_engine(server.create_database("svc")))
    finally:
        server.stop()

    answers = [
        *report["database_states"], *report["attacks_sqlite"], *report["attacks_postgres"]
    ]  # fmt: skip
    kills = [report["kill_sqlite"], report["kill_postgres"]]
    report["summary"] = {
        "input_cases": len(cases),
        "input_cases_ok": ok,
        "rows_unaccounted": unaccounted,
        "kill_points": sum(k["points"] for k in kills),
        "kill_points_survived": sum(k["survived"] for k in kills),
        "hangs": sum(a["seconds"] >= HANG_S for a in answers),
        "server_errors": sum(a.get("status") == 500 for a in answers),
        "database_down_not_503": sum(
            a["what"].startswith("GET") and a["status"] != 503 for a in report["database_states"]
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
