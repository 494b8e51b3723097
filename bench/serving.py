"""The reference service under an open-loop load on 127.0.0.1, backed by PostgreSQL, during
publishes.

A throwaway PostgreSQL server gets a published run the size of the demo retailer (20,000 users
x 12 recommendations, 5,000 products with 12 similar, 12 FBT and 20 candidate products each);
`fashion-recs serve` runs with uvicorn; a load generator spreads `--rate` requests/s over the
endpoints for `--seconds` while a separate process publishes a new run every `--publish-every`
seconds. Per endpoint: requests/s, p50/p99 latency and errors (non-2xx, timeouts, broken
connections, or a user's list that is not exactly the list of the run the answer names).

The generator is open loop: request i is due at start + i / rate whatever happened before, and
its latency is measured from that due time, so an answer that is late because the service (or
the generator) fell behind counts in full (no coordinated omission). It shares the machine's
cores with the service and PostgreSQL, so it is built to be cheap: one asyncio (uvloop)
process, keep-alive HTTP/1.1 connections with one request in flight each, requests written as
prepared bytes, answers parsed by httptools. Requests that find every connection busy queue in
the generator (and that wait counts in their latency).

CPU is accounted over the measured window: the service's processes, the PostgreSQL backends
that serve it (by application_name), the rest of PostgreSQL (the publishes' COPY and index
builds, autovacuum), the generator, the publisher, and the whole machine (what none of these
used is someone else's); per request, with the kernel's share, and how long the service, its
backends and the generator were ready to run but waited for a CPU. The service and the
publisher each run in a session of their own, as daemons do (with autogroup scheduling a
session shares CPU as one group). `--pin` puts the service on one core and the generator on
the other (PostgreSQL and the publisher float); `--publisher-nice` lowers the publisher's
priority. On 2 cores one uvicorn worker did better than two, and pinning did not help.

    python bench/serving.py [--rate 500] [--seconds 30] [--workers 1] [--publish-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine, now, write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT)]  # this checkout's library and tests
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
N_USERS, N_PRODUCTS, K = 20_000, 5_000, 12
SERVICE_APP_NAME = "fashion-recs serve"  # the service's PostgreSQL application_name
TIMEOUT_S = 5.0
# uvicorn closes a connection after 5 s without a request; never reuse one idle that long.
MAX_IDLE_S = 2.0


def tables(generation: int):
    """Published tables; user lists differ by generation so answers can be checked.

    Built with Arrow's `take` from id arrays (no Python object per row): the publisher builds
    a run before each publish, and that is data making for the benchmark, not the publish
    whose effect on the service is being measured."""
    import pyarrow as pa

    from fashion_recs import contract
    from fashion_recs.publish import TableSpec

    rng = np.random.default_rng(generation)
    ids = pa.array([f"{i:024x}" for i in range(N_PRODUCTS)])
    users = pa.array([f"U{u:07d}" for u in range(N_USERS)])

    def lists(n_keys: int, width: int) -> np.ndarray:
        return rng.integers(0, N_PRODUCTS, (n_keys, width))

    def constant(value: str, n: int) -> pa.Array:
        return pa.array([value]).take(np.zeros(n, dtype=np.int64))

    own = (np.arange(N_USERS)[:, None] * 7 + np.arange(K) + generation * 5) % N_PRODUCTS
    user_recs = pa.table(
        {
            "user_id": users.take(np.repeat(np.arange(N_USERS), K)),
            "rank": np.tile(np.arange(1, K + 1, dtype=np.int32), N_USERS),
            "product_id": ids.take(own.ravel()),
            "score": np.tile(np.linspace(1, 0.1, K), N_USERS),
            "strategy": constant(f"gen{generation}", N_USERS * K),
        },
        schema=contract.USER_RECOMMENDATIONS_SCHEMA,
    )

    def per_product(width: int, other: str, extra: dict) -> dict:
        return {
            "product_id": ids.take(np.repeat(np.arange(N_PRODUCTS), width)),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), N_PRODUCTS),
            other: ids.take(lists(N_PRODUCTS, width).ravel()),
            "score": np.tile(np.linspace(1, 0.1, width), N_PRODUCTS),
            **{k: constant(v, N_PRODUCTS * width) for k, v in extra.items()},
        }

    similar = per_product(K, "similar_product_id", {"model": "text_tfidf"})
    similar["is_default"] = np.ones(N_PRODUCTS * K, dtype=bool)
    popular = pa.table(
        {
            "segment_type": ["overall"] * 50,
            "age_group": [None] * 50,
            "region": [None] * 50,
            "rank": np.arange(1, 51, dtype=np.int32),
            "product_id": ids[:50],
            "score": np.linspace(50, 1, 50),
            "n_users": np.full(50, 100),
        },
        schema=contract.POPULAR_SCHEMA,
    )
    return [
        TableSpec("products", pa.table({"product_id": ids}), ("product_id",)),
        TableSpec("popular_products", popular, ("segment_type",)),
        TableSpec(
            "user_segments",
            pa.table(
                {"user_id": users, "age_group": [None] * N_USERS, "region": [None] * N_USERS},
                schema=pa.schema(
                    [("user_id", pa.string()), ("age_group", pa.string()), ("region", pa.string())]
                ),
            ),
            ("user_id",),
        ),
        TableSpec("user_recommendations", user_recs, ("user_id",)),
        TableSpec(
            "similar_products",
            pa.table(similar, schema=contract.SIMILAR_PRODUCTS_SCHEMA),
            ("product_id", "model"),
        ),
        TableSpec(
            "fbt_recommendations",
            pa.table(
                per_product(K, "recommended_product_id", {"source": "rules"}),
                schema=contract.FBT_RECOMMENDATIONS_SCHEMA.remove(5).remove(5).remove(5),
            ),
            ("product_id",),
        ),
        TableSpec(
            "item_candidates",
            pa.table(
                per_product(20, "candidate_product_id", {"source": "item_knn"}),
                schema=contract.ITEM_CANDIDATES_SCHEMA,
            ),
            ("product_id",),
        ),
    ]


def expected_user_list(user: int, generation: int) -> list[str]:
    """The products `tables(generation)` lists for user `user`, in rank order."""
    return [f"{(user * 7 + j + generation * 5) % N_PRODUCTS:024x}" for j in range(K)]


def publisher_loop(url: str, every: float) -> None:
    """Publish generation 1, 2, ... every `every` seconds until stdin says stop (or closes);
    print each publish's seconds. One long-lived process: a fresh one per publish would add
    the imports' CPU to every publish, which no real publisher pays every few seconds.
    Each line: the publish's start and end (wall clock) and its seconds."""
    import select

    generation = 1
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], every)
        if ready:
            return
        started = time.time()
        seconds = publish(url, generation)
        print(started, time.time(), seconds, flush=True)
        generation += 1


def publish(url: str, generation: int) -> float:
    from fashion_recs.publish import make_engine, publish_run

    engine = make_engine(url)
    started = time.perf_counter()
    try:
        publish_run(
            engine, run_id=f"run-{generation}", retailer="demo", tables=tables(generation),
            summary={}, metrics=[], keep_runs=2,
        )  # fmt: skip
    finally:
        engine.dispose()
    return time.perf_counter() - started


@dataclass
class Job:
    """One planned request: its endpoint, the bytes to send and, for a user's list, the user."""

    name: str
    raw: bytes
    user: int | None = None
    due: float = 0.0


def request_mix(rng: np.random.Generator, n: int, host: str) -> list[Job]:
    """Requests in the proportions a shop front-end would send, as ready-to-write HTTP/1.1."""

    def get(name: str, path: str, user: int | None = None) -> Job:
        return Job(name, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), user)

    def post(name: str, path: str, body: dict) -> Job:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        return Job(name, head.encode() + data)

    out = []
    for r in rng.random(n):
        user = int(rng.integers(0, N_USERS))
        u = f"U{user:07d}"
        p = f"{rng.integers(0, N_PRODUCTS):024x}"
        if r < 0.45:
            out.append(get("user_recommendations", f"/users/{u}/recommendations", user))
        elif r < 0.65:
            out.append(get("similar", f"/products/{p}/similar"))
        elif r < 0.80:
            out.append(get("fbt", f"/products/{p}/fbt"))
        elif r < 0.88:
            q = f"{rng.integers(0, N_PRODUCTS):024x}"
            out.append(post("cart_fbt", "/cart/fbt", {"product_ids": [p, q]}))
        elif r < 0.95:
            out.append(get("popular", "/popular"))
        else:
            body = {"user_id": f"new-{u}", "product_id": p, "event_name": "purchase"}
            out.append(post("interactions", "/interactions", body))
    return out


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, load: Load) -> None:
        import httptools

        self.load = load
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.job: Job | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, job: Job) -> None:
        self.job = job
        self.body.clear()
        assert self.transport is not None
        self.transport.write(job.raw)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError: a broken answer
            if self.transport is not None:
                self.transport.close()
            self._fail(f"unparsable answer: {exc}")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            self.load.answered(self, job, self.parser.get_status_code(), b"".join(self.body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(f"connection lost: {exc}")
        self.load.lost(self)

    def _fail(self, why: str) -> None:
        job, self.job = self.job, None
        if job is not None:
            self.load.record(job, ok=False, why=why)


@dataclass
class Load:
    """Dispatches due jobs onto idle connections (opening up to `connections`), queues the rest,
    and records each answer's latency from its due time."""

    host: str
    port: int
    connections: int
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0
    queued: deque[Job] = field(default_factory=deque)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    why: dict[str, int] = field(default_factory=dict)
    outstanding: int = 0
    dispatch_lag: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (due, latency)
    opening: set[asyncio.Future] = field(default_factory=set)

    def submit(self, job: Job) -> None:
        self.outstanding += 1
        self.dispatch_lag.append(time.perf_counter() - job.due)
        self._place(job)

    def _place(self, job: Job) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is None:
                continue
            if time.perf_counter() - conn.idle_since > MAX_IDLE_S:
                conn.transport.close()
                continue
            conn.send(job)
            return
        if self.opened < self.connections:
            self.opened += 1
            task = asyncio.ensure_future(self._open(job))
            self.opening.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self.opening.discard)
        else:
            self.queued.append(job)

    async def _open(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError as exc:
            self.opened -= 1
            self.record(job, ok=False, why=f"connect: {exc}")
            return
        conn.send(job)

    def answered(self, conn: Connection, job: Job, status: int, body: bytes) -> None:
        ok = 200 <= status < 300
        why = f"HTTP {status}"
        if ok and job.user is not None:
            data = json.loads(body)
            generation = int(data["run_id"].split("-")[1])
            listed = [i["product_id"] for i in data["items"]]
            ok = data["strategy"] == f"gen{generation}" and listed == expected_user_list(
                job.user, generation
            )
            why = "an answer that is not the run it names"
        self.record(job, ok=ok, why=why)
        if self.queued:
            conn.send(self.queued.popleft())
        else:
            conn.idle_since = time.perf_counter()
            self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        self.opened -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.queued and self.opened < self.connections:  # a queued job needs a connection
            self._place(self.queued.popleft())

    def record(self, job: Job, *, ok: bool, why: str = "") -> None:
        self.outstanding -= 1
        latency = time.perf_counter() - job.due
        self.latencies.setdefault(job.name, []).append(latency)
        self.timeline.append((job.due, latency))
        if not ok:
            self.errors[job.name] = self.errors.get(job.name, 0) + 1
            self.why[why] = self.why.get(why, 0) + 1

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def load(host: str, port: int, rate: float, seconds: float, connections: int) -> dict:
    """Send `rate` requests/s for `seconds` on schedule; per-endpoint and overall figures."""
    plan = request_mix(np.random.default_rng(0), int(rate * seconds), f"{host}:{port}")
    state = Load(host, port, connections)
    # Nothing the run allocates outlives it: no collector pauses inside the measurement.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        start = time.perf_counter() + 0.2
        for i, job in enumerate(plan):
            job.due = start + i / rate
            delay = job.due - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            state.submit(job)
        deadline = plan[-1].due + TIMEOUT_S if plan else time.perf_counter()
        while state.outstanding and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        for job in state.queued:  # never sent: timed out in the generator's queue
            state.record(job, ok=False, why="timeout")
        timed_out = state.outstanding
        state.close()
    finally:
        gc.enable()
        gc.unfreeze()
    if timed_out:
        state.why["timeout"] = state.why.get("timeout", 0) + timed_out
    per = {}
    for name, values in sorted(state.latencies.items()):
        ms = np.asarray(values) * 1000
        per[name] = {
            "requests": len(values),
            "requests_per_s": round(len(values) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2),
            "errors": state.errors.get(name, 0),
        }
    every = np.concatenate([np.asarray(v) for v in state.latencies.values()]) * 1000
    lag = np.asarray(state.dispatch_lag) * 1000
    timeline = np.asarray(state.timeline).reshape(-1, 2)
    timeline[:, 0] += time.time() - time.perf_counter()  # due times on the wall clock
    return {
        "endpoints": per,
        "requests": len(every) + timed_out,
        "requests_per_s": round(len(every) / elapsed, 1),
        "p50_ms": round(float(np.percentile(every, 50)), 2),
        "p99_ms": round(float(np.percentile(every, 99)), 2),
        "p999_ms": round(float(np.percentile(every, 99.9)), 2),
        "max_ms": round(float(every.max()), 2),
        "errors": int(sum(state.errors.values())) + timed_out,
        "error_kinds": state.why,
        "elapsed_s": elapsed,
        "timeline": timeline,  # (due, wall clock; latency, s) per answered request
        "generator": {
            "connections_opened": state.opened,
            "dispatch_lag_p99_ms": round(float(np.percentile(lag, 99)), 2),
            "dispatch_lag_max_ms": round(float(lag.max()), 2),
        },
    }


def _run_load(host: str, port: int, rate: float, seconds: float, connections: int) -> dict:
    try:
        import uvloop

        return uvloop.run(load(host, port, rate, seconds, connections))
    except ImportError:
        return asyncio.run(load(host, port, rate, seconds, connections))


def _times(procs: list[Any]) -> tuple[float, float, float]:
    """(user, system, run-queue wait) seconds of processes: what they ran, and how long their
    threads were ready to run but waited for a CPU (/proc/<pid>/task/<tid>/schedstat)."""
    import psutil

    user = system = wait = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            user, system = user + t.user, system + t.system
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                schedstat = Path(f"/proc/{proc.pid}/task/{tid}/schedstat").read_text().split()
                wait += int(schedstat[1]) / 1e9
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            pass
    return user, system, wait


def _tree(pid: int) -> list[Any]:
    import psutil

    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _reaped_children_cpu(pid: int) -> float:
    """CPU seconds of a process's children that exited (PostgreSQL's finished backends)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.children_user + t.children_system


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU used by each party between `start()` and `stop()`, and how long each waited for a
    CPU while ready to run (the machine's contention, as each party felt it)."""

    service_pid: int
    postmaster_pid: int
    url: str
    marks: dict[str, Any] = field(default_factory=dict)

    def _serving_backends(self) -> list[Any]:
        import psutil
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (SERVICE_APP_NAME,)
            ).fetchall()
        return [psutil.Process(r[0]) for r in rows]

    def sample(self) -> dict[str, Any]:
        import psutil

        postgres = _tree(self.postmaster_pid)
        return {
            "service": _times(_tree(self.service_pid)),
            "postgres": sum(_times(postgres)[:2]) + _reaped_children_cpu(self.postmaster_pid),
            "backends": {p.pid: _times([p]) for p in self._serving_backends()},
            "generator": _times([psutil.Process()]),
            "machine": _machine_busy(),
            "wall": time.perf_counter(),
        }

    def start(self) -> None:
        self.marks["start"] = self.sample()

    def stop(self) -> None:
        self.marks["stop"] = self.sample()

    def report(self, requests: int, publisher_s: float) -> dict[str, Any]:
        a, b = self.marks["start"], self.marks["stop"]
        wall = b["wall"] - a["wall"]

        def delta(x: tuple[float, ...], y: tuple[float, ...]) -> list[float]:
            return [j - i for i, j in zip(x, y, strict=True)]

        zero = (0.0, 0.0, 0.0)
        service = delta(a["service"], b["service"])
        generator = delta(a["generator"], b["generator"])
        backends = [0.0, 0.0, 0.0]
        for pid, times in b["backends"].items():
            backends = [
                t + d
                for t, d in zip(backends, delta(a["backends"].get(pid, zero), times), strict=True)
            ]
        postgres = b["postgres"] - a["postgres"]
        busy = b["machine"] - a["machine"]
        cpu = {
            name: v[0] + v[1]
            for name, v in (("service", service), ("serving", backends), ("generator", generator))
        }
        per = 1000 / max(requests, 1)
        ours = cpu["service"] + postgres + cpu["generator"] + publisher_s
        return {
            "window_s": round(wall, 1),
            "ms_per_request": {
                "service": round(cpu["service"] * per, 3),
                "postgres_for_requests": round(cpu["serving"] * per, 3),
                "generator": round(cpu["generator"] * per, 3),
            },
            "kernel_share": {
                "service": round(service[1] / max(cpu["service"], 1e-9), 2),
                "generator": round(generator[1] / max(cpu["generator"], 1e-9), 2),
            },
            "cores_busy": {
                "service": round(cpu["service"] / wall, 3),
                "postgres_for_requests": round(cpu["serving"] / wall, 3),
                "postgres_other": round((postgres - cpu["serving"]) / wall, 3),
                "generator": round(cpu["generator"] / wall, 3),
                "publisher_processes": round(publisher_s / wall, 3),
                "machine": round(busy / wall, 3),
                "not_ours": round(max(busy - ours, 0.0) / wall, 3),
            },
            "runqueue_wait_ms_per_s": {
                "service": round(1000 * service[2] / wall, 1),
                "postgres_for_requests": round(1000 * backends[2] / wall, 1),
                "generator": round(1000 * generator[2] / wall, 1),
            },
        }


def split_by_publishes(
    timeline: np.ndarray, windows: list[tuple[float, float]]
) -> dict[str, float]:
    """p50/p99 of the requests due while a publish was running (from its start to its end)
    and of the rest: where the tail comes from."""
    due, latency = timeline[:, 0], timeline[:, 1] * 1000
    during = np.zeros(len(due), dtype=bool)
    for started, ended in windows:
        during |= (due >= started) & (due <= ended)
    out: dict[str, float] = {"share_due_during_publishes": round(float(during.mean()), 3)}
    for name, mask in (("during_publishes", during), ("outside_publishes", ~during)):
        if mask.any():
            out[f"p50_ms_{name}"] = round(float(np.percentile(latency[mask], 50)), 2)
            out[f"p99_ms_{name}"] = round(float(np.percentile(latency[mask], 99)), 2)
    return out


def wait_until_up(base: str, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(base + "/health", timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start") from None
            time.sleep(0.3)


def main() -> int:
    import psycopg
    from tests.postgres_server import start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="generator's at most")
    parser.add_argument("--publish-every", type=float, default=5.0)
    parser.add_argument("--pin", action="store_true", help="service on CPU 0, generator on 1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--publisher-nice", type=int, default=0, help="the publisher's CPU niceness (0-19)"
    )
    parser.add_argument("--publisher", help=argparse.SUPPRESS)
    parser.add_argument("--every", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        publisher_loop(args.publisher, args.every)
        return 0

    # The service and the publisher run this checkout's library, whatever is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT)])}
    server = start_server()
    url = server.create_database("serving")
    publish_seconds = [publish(url, 0)]
    port = 18_000 + os.getpid() % 1000
    host = "127.0.0.1"
    cli = Path(sys.executable).parent / "fashion-recs"
    serve = [str(cli), "serve", "--db", url, "--port", str(port), "--workers", str(args.workers)]
    if args.pin:
        serve = ["taskset", "-c", "0", *serve]
        os.sched_setaffinity(0, {1})
    # The service and the publisher each start a session of their own, as daemons do: with
    # the kernel's autogroup scheduling (on here) a session shares CPU as one group, so left in
    # this one they would split one share with the load generator. pg_ctl does the same.
    proc = subprocess.Popen(
        serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )  # fmt: skip
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    meter = CpuMeter(proc.pid, postmaster, url)
    # In a process of its own: building and loading a run must not slow the load loop.
    publisher_cmd = [
        sys.executable,
        __file__,
        "--publisher",
        url,
        "--every",
        str(args.publish_every),
    ]
    if args.publisher_nice:
        publisher_cmd = ["nice", "-n", str(args.publisher_nice), *publisher_cmd]
    if args.pin:
        publisher_cmd = ["taskset", "-c", "0,1", *publisher_cmd]

    windows: list[tuple[float, float]] = []

    def read_publishes(stream: Any) -> None:
        for line in stream:
            started, ended, seconds = (float(v) for v in line.split())
            windows.append((started, ended))
            publish_seconds.append(seconds)

    try:
        wait_until_up(f"http://{host}:{port}", proc)
        _run_load(host, port, 50, 2, args.connections)  # warm connections and caches
        children_before = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        meter.start()
        publisher = subprocess.Popen(
            publisher_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        if args.publisher_nice:
            # In a session of its own, niceness only ranks it against its own session: the
            # session's autogroup niceness is what ranks it against the service.
            with contextlib.suppress(OSError):
                Path(f"/proc/{publisher.pid}/autogroup").write_text(str(args.publisher_nice))
        reader = threading.Thread(target=read_publishes, args=(publisher.stdout,))
        reader.start()
        try:
            result = _run_load(host, port, args.rate, args.seconds, args.connections)
            meter.stop()
        finally:
            assert publisher.stdin is not None
            publisher.stdin.close()  # stop after the publish in progress, if any
            publisher.wait(timeout=120)
            reader.join()
        publisher_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - children_before
        with psycopg.connect(url) as conn:
            postgres_version = conn.execute("SHOW server_version").fetchone()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.stop()
    print(json.dumps(result["endpoints"], indent=1))
    import asyncpg
    import fastapi
    import httptools
    import msgspec
    import uvicorn
    import uvloop

    from fashion_recs.service import POOL_SIZE

    publishes = len(publish_seconds) - 1
    report = {
        "summary": {
            "requests_per_s": result["requests_per_s"],
            "p99_ms": result["p99_ms"],
            "p50_ms": result["p50_ms"],
            "p999_ms": result["p999_ms"],
            "max_ms": result["max_ms"],
            "errors": result["errors"],
            "target_rate": args.rate,
            "publishes_during_load": publishes,
            **split_by_publishes(result["timeline"], windows),
        },
        "endpoints": result["endpoints"],
        "error_kinds": result["error_kinds"],
        "cpu": meter.report(result["requests"], publisher_cpu),
        "generator": result["generator"],
        "publish_seconds": [round(s, 2) for s in publish_seconds],
        "parameters": {
            "users": N_USERS,
            "products": N_PRODUCTS,
            "k": K,
            "rate": args.rate,
            "seconds": args.seconds,
            "uvicorn_workers": args.workers,
            "generator_connections": args.connections,
            "publish_every_s": args.publish_every,
            "publisher": "one long-lived process, publishing a new run "
            f"{args.publish_every:g} s after the previous one finished, at niceness "
            f"{args.publisher_nice}",
            "pinned": "service on CPU 0, generator on CPU 1" if args.pin else "no",
            "sessions": "service, publisher and PostgreSQL each in a session of their own "
            "(autogroup scheduling), the generator in the bench's",
            "service_pool": f"asyncpg, {POOL_SIZE} connections per worker",
            "load": (
                "open loop on the same machine: one asyncio (uvloop) process, keep-alive "
                "HTTP/1.1, httptools parser; latency from each request's scheduled time"
            ),
            "command": "python bench/serving.py " + " ".join(sys.argv[1:]),
        },
        "machine": machine(),
        "versions": {
            "postgresql": postgres_version,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "asyncpg": asyncpg.__version__,
            "uvloop": uvloop.__version__,
            "httptools": httptools.__version__,
            "msgspec": msgspec.__version__,
        },
        "date": now(),
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
