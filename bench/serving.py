"""The reference service under a bounded load on 127.0.0.1, backed by PostgreSQL, during
publishes.

A throwaway PostgreSQL server gets a published run the size of the demo retailer (20,000 users
x 12 recommendations, 5,000 products with 12 similar, 12 FBT and 20 candidate products each);
`fashion-recs serve` runs with uvicorn; an open-loop load generator (asyncio + httpx, requests
sent on a fixed schedule whatever the latency, so slow answers cannot hide by slowing the
load) spreads `--rate` requests/s over the endpoints for `--seconds`, while a thread publishes
a new run every few seconds. Per endpoint: requests/s, p50/p99 latency and errors (non-2xx,
timeouts, or an answer whose items do not belong to the run it names). The generator shares
the machine's two cores with the service and PostgreSQL.

    python bench/serving.py [--rate 500] [--seconds 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from machine import machine, now, write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
N_USERS, N_PRODUCTS, K = 20_000, 5_000, 12


def tables(generation: int):
    """Published tables; user lists differ by generation so answers can be checked."""
    import pyarrow as pa

    from fashion_recs import contract
    from fashion_recs.publish import TableSpec

    rng = np.random.default_rng(generation)
    products = [f"{i:024x}" for i in range(N_PRODUCTS)]
    ids = np.asarray(products, dtype=object)
    users = np.asarray([f"U{u:07d}" for u in range(N_USERS)], dtype=object)

    def lists(n_keys: int, width: int) -> np.ndarray:
        return rng.integers(0, N_PRODUCTS, (n_keys, width))

    own = (np.arange(N_USERS)[:, None] * 7 + np.arange(K) + generation * 5) % N_PRODUCTS
    user_recs = pa.table(
        {
            "user_id": np.repeat(users, K),
            "rank": np.tile(np.arange(1, K + 1, dtype=np.int32), N_USERS),
            "product_id": ids[own.ravel()],
            "score": np.tile(np.linspace(1, 0.1, K), N_USERS),
            "strategy": np.full(N_USERS * K, f"gen{generation}", dtype=object),
        },
        schema=contract.USER_RECOMMENDATIONS_SCHEMA,
    )

    def per_product(width: int, other: str, extra: dict) -> dict:
        return {
            "product_id": np.repeat(ids, width),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), N_PRODUCTS),
            other: ids[lists(N_PRODUCTS, width).ravel()],
            "score": np.tile(np.linspace(1, 0.1, width), N_PRODUCTS),
            **{k: np.full(N_PRODUCTS * width, v, dtype=object) for k, v in extra.items()},
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


def request_mix(rng: np.random.Generator, n: int) -> list[tuple[str, str, str, dict | None]]:
    """(endpoint, method, path, body) in the proportions a shop front-end would send."""
    out = []
    for r in rng.random(n):
        u = f"U{rng.integers(0, N_USERS):07d}"
        p = f"{rng.integers(0, N_PRODUCTS):024x}"
        if r < 0.45:
            out.append(("user_recommendations", "GET", f"/users/{u}/recommendations", None))
        elif r < 0.65:
            out.append(("similar", "GET", f"/products/{p}/similar", None))
        elif r < 0.80:
            out.append(("fbt", "GET", f"/products/{p}/fbt", None))
        elif r < 0.88:
            q = f"{rng.integers(0, N_PRODUCTS):024x}"
            out.append(("cart_fbt", "POST", "/cart/fbt", {"product_ids": [p, q]}))
        elif r < 0.95:
            out.append(("popular", "GET", "/popular", None))
        else:
            body = {"user_id": f"new-{u}", "product_id": p, "event_name": "purchase"}
            out.append(("interactions", "POST", "/interactions", body))
    return out


async def load(base: str, rate: float, seconds: float) -> dict:
    import httpx

    plan = request_mix(np.random.default_rng(0), int(rate * seconds))
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, timeout=5.0, limits=limits) as client:

        async def one(i: int, name: str, method: str, path: str, body: dict | None) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                ok = response.status_code < 300
                if ok and name == "user_recommendations":
                    data = response.json()
                    generation = int(data["run_id"].split("-")[1])
                    ok = data["strategy"] == f"gen{generation}"  # one run, never a mix
            except httpx.HTTPError:
                ok = False
            latencies.setdefault(name, []).append(time.perf_counter() - sent)
            if not ok:
                errors[name] = errors.get(name, 0) + 1

        start = time.perf_counter() + 0.5
        await asyncio.gather(*(one(i, *req) for i, req in enumerate(plan)))
        elapsed = time.perf_counter() - start
    per = {}
    for name, values in sorted(latencies.items()):
        ms = np.asarray(values) * 1000
        per[name] = {
            "requests": len(values),
            "requests_per_s": round(len(values) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": errors.get(name, 0),
        }
    every = np.concatenate([np.asarray(v) for v in latencies.values()]) * 1000
    return {
        "endpoints": per,
        "requests": len(every),
        "requests_per_s": round(len(every) / elapsed, 1),
        "p50_ms": round(float(np.percentile(every, 50)), 2),
        "p99_ms": round(float(np.percentile(every, 99)), 2),
        "errors": int(sum(errors.values())),
    }


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
    from tests.postgres_server import start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--publish-every", type=float, default=5.0)
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--generation", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        print(publish(args.publish, args.generation))
        return 0

    server = start_server()
    url = server.create_database("serving")
    publish_seconds = [publish(url, 0)]
    port = 18_000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).parent / "fashion-recs"
    proc = subprocess.Popen(
        [str(cli), "serve", "--db", url, "--port", str(port), "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()

    def publisher() -> None:
        # In a process of its own: building and loading a run must not slow the load loop.
        generation = 1
        while not stop.wait(args.publish_every):
            cmd = [sys.executable, __file__, "--publish", url, "--generation", str(generation)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            publish_seconds.append(float(done.stdout.strip().splitlines()[-1]))
            generation += 1

    try:
        wait_until_up(base, proc)
        asyncio.run(load(base, 50, 2))  # warm connections and caches
        thread = threading.Thread(target=publisher)
        thread.start()
        try:
            result = asyncio.run(load(base, args.rate, args.seconds))
        finally:
            stop.set()
            thread.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.stop()
    print(json.dumps(result["endpoints"], indent=1))
    import fastapi
    import uvicorn

    report = {
        "summary": {
            "requests_per_s": result["requests_per_s"],
            "p99_ms": result["p99_ms"],
            "p50_ms": result["p50_ms"],
            "errors": result["errors"],
            "target_rate": args.rate,
            "publishes_during_load": len(publish_seconds) - 1,
        },
        "endpoints": result["endpoints"],
        "publish_seconds": [round(s, 2) for s in publish_seconds],
        "parameters": {
            "users": N_USERS,
            "products": N_PRODUCTS,
            "k": K,
            "seconds": args.seconds,
            "uvicorn_workers": args.workers,
            "publish_every_s": args.publish_every,
            "load": "open loop, asyncio + httpx on the same machine",
        },
        "machine": machine(),
        "versions": {"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__},
        "date": now(),
    }
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
