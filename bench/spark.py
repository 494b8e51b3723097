"""Benchmark: the stages with a Spark implementation, local engine against Spark, 1x and 10x.

For each size the synthetic retailer is generated (as `bench/scale.py` does: 1x = 5,000
products, 20,000 users, 2M event rows), the local pipeline runs up to and through every stage
that has a Spark implementation (`fashion_recs.pipeline.ENGINE_STAGES`), and then each of
those stages runs again on Spark (`local[2]` here: the machine's two cores) on the very same
input artifacts, in a run directory of its own. Every step runs in a process of its own, as
`fashion-recs run` runs it, so each figure is the step's own seconds (`tasks/*.json`) and a
Spark step's figure includes starting its session (a JVM) and reading its inputs. Each Spark
step also logs its events, and `spark_tasks` sums its tasks' metrics: executor seconds (the
work without the driver's start-up and planning), input, shuffle and spill bytes, the largest
execution memory of a task; `docs/scaling.md` plans a cluster from them.

Item-kNN's co-occurrence (the `item_knn` engine stage, which runs inside the personal steps)
is measured on its own: the local run's whole user x item matrix, the local neighbour search
against `SparkItemNeighbours` (its figure includes the session's start), both from the same
unit item vectors to the neighbour table the model scores with.

Parity: each Spark artifact is compared with the local one (rows sorted by every
non-float column, floats to 1e-9, same Arrow schema), except the columns the engines name
differently by design (`IGNORED`); item-kNN's neighbour tables must be identical. Results go
to `bench/results/spark.json`:

    python bench/spark.py --sizes 1 10 [--data /tmp/fashion-recs-bench-spark] [--keep] [--merge]
        [--stages item_knn ...]

`--merge` keeps the sizes of the existing results file that this run does not measure, and
with `--stages` (only those stages, and the local steps they need) the other stages of a size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from machine import machine, now, write_report
from scale import AS_OF, DEMO, generate, write_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "spark.json"
DRIVER_MEMORY = "6g"
# Each Spark step logs its events (uncompressed JSON lines) for `task_metrics`.
EVENT_LOG = {"spark.eventLog.enabled": "true", "spark.eventLog.compress": "false"}
# The Spark rules name their miner; every other column must match.
IGNORED = {"fbt_rules": {"engine"}}
# step -> (task id, the summaries it takes, in order)
PREFIX = [
    ("download", "download_files", []),
    ("products", "clean_products", ["download"]),
    ("events", "filter_events", ["download", "products"]),
    ("demographics", "preprocess_demographics", ["download"]),
    ("interactions", "map_interactions", ["events"]),
    ("popular", "popular_items", ["interactions", "demographics"]),
    ("baskets", "build_baskets", ["interactions", "products"]),
    ("fbt_rules", "mine_fbt_rules", ["baskets"]),
    ("fbt_recommendations", "fbt_recommendations", ["fbt_rules", "baskets", "products"]),
]


def run_steps(ctx: Any, runner: Any, steps: list[str], inputs: dict[str, dict]) -> dict[str, dict]:
    """Run `steps` (pipeline step names) with their input summaries; return the summaries."""
    out = {}
    for step, task_id, needs in PREFIX:
        if step not in steps:
            continue
        out[step] = runner(ctx, task_id, step, *[{**inputs, **out}[n] for n in needs])
    return out


def seconds_of(ctx: Any, step: str) -> float:
    task_id = next(t for s, t, _ in PREFIX if s == step)
    return json.loads(ctx.paths.file("tasks", f"{task_id}.json").read_text())["seconds"]


def artifact_paths(summary: dict[str, Any]) -> dict[str, Path]:
    """The Parquet artifacts a summary points at (files or dataset directories)."""
    found = {}
    for key, value in summary.items():
        if isinstance(value, str) and value.endswith(".parquet") and Path(value).exists():
            found[key] = Path(value)
    return found


def _sorted(table: pa.Table, ignore: set[str]) -> pa.Table:
    table = table.drop_columns([c for c in table.column_names if c in ignore])
    keys = [
        (f.name, "ascending")
        for f in table.schema
        if not pa.types.is_floating(f.type) and not pa.types.is_nested(f.type)
    ]
    return table.sort_by(keys) if keys else table


def same_table(local: Path, spark: Path, ignore: set[str]) -> tuple[bool, str]:
    """Equal schemas, rows (sorted) and floats to 1e-9; a reason when not."""
    a, b = pq.read_table(local), pq.read_table(spark)
    if a.schema != b.schema:
        return False, f"schemas differ: {a.schema} vs {b.schema}"
    if a.num_rows != b.num_rows:
        return False, f"{a.num_rows} vs {b.num_rows} rows"
    a, b = _sorted(a, ignore), _sorted(b, ignore)
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            xs = x.to_numpy(zero_copy_only=False)
            ys = y.to_numpy(zero_copy_only=False)
            if not np.allclose(xs, ys, rtol=0, atol=1e-9, equal_nan=True):
                return False, f"{name}: floats differ by more than 1e-9"
        elif not x.equals(y):
            return False, f"{name}: values differ"
    return True, ""


def task_metrics(log_dir: Path) -> dict[str, float]:
    """What the Spark tasks of the applications logged in `log_dir` did, summed over tasks
    (from each `SparkListenerTaskEnd` event): task seconds on the executors (wall and CPU),
    bytes read from input, shuffle bytes and records written, bytes spilled, and the largest
    execution memory one task held. Task seconds exclude the driver (session start, planning,
    collecting results), so they give the per-core cost of the work itself."""
    totals = dict.fromkeys(
        [
            "tasks",
            "run_seconds",
            "cpu_seconds",
            "input_bytes",
            "shuffle_write_bytes",
            "shuffle_write_records",
            "spill_disk_bytes",
        ],
        0.0,
    )
    peak = 0
    # Spark 4 writes each application's log as a folder of `events_<n>_<app>` files.
    for path in sorted(log_dir.rglob("events_*")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if '"SparkListenerTaskEnd"' not in line:
                    continue
                metrics = json.loads(line).get("Task Metrics") or {}
                write = metrics.get("Shuffle Write Metrics") or {}
                totals["tasks"] += 1
                totals["run_seconds"] += metrics.get("Executor Run Time", 0) / 1e3
                totals["cpu_seconds"] += metrics.get("Executor CPU Time", 0) / 1e9
                totals["input_bytes"] += (metrics.get("Input Metrics") or {}).get("Bytes Read", 0)
                totals["shuffle_write_bytes"] += write.get("Shuffle Bytes Written", 0)
                totals["shuffle_write_records"] += write.get("Shuffle Records Written", 0)
                totals["spill_disk_bytes"] += metrics.get("Disk Bytes Spilled", 0)
                peak = max(peak, metrics.get("Peak Execution Memory", 0))
    result = {k: round(v, 1) if "seconds" in k else int(v) for k, v in totals.items()}
    return {**result, "peak_task_execution_memory_bytes": int(peak)}


def needed(stages: list[str]) -> list[str]:
    """The PREFIX steps `stages` read, directly or through other steps, in PREFIX order."""
    needs = {step: wanted for step, _, wanted in PREFIX}
    todo, found = list(stages), set()
    while todo:
        step = todo.pop()
        if step in needs and step not in found:
            found.add(step)
            todo += needs[step]
    return [step for step, _, _ in PREFIX if step in found]


def bench_item_knn(local: Any, interactions: dict[str, Any], conf: dict[str, str]) -> dict:
    """Item-kNN's neighbour search on the local run's whole matrix: local, then on Spark."""
    from fashion_recs.personal.item_knn import item_unit_vectors, local_item_neighbours
    from fashion_recs.spark.item_knn import SparkItemNeighbours
    from fashion_recs.spark.session import spark_session
    from fashion_recs.stages.personal import load_inputs

    config = local.config
    matrix = load_inputs(config, local.paths, Path(interactions["interactions"]), local.as_of).full
    n = config.personal.item_knn_neighbours
    vectors = item_unit_vectors(matrix, config.personal.user_cf.weighting)
    started = time.perf_counter()
    mine = local_item_neighbours(vectors, n)
    seconds_local = time.perf_counter() - started
    started = time.perf_counter()
    spark_config = config.spark.model_copy(update={"master": "local[2]", "conf": conf})
    with spark_session(spark_config) as spark:
        theirs = SparkItemNeighbours(spark)(vectors, n)
    seconds_spark = time.perf_counter() - started
    return {
        "seconds_local": round(seconds_local, 1),
        "seconds_spark": round(seconds_spark, 1),
        "matrix": {"users": matrix.n_users, "items": matrix.n_items, "entries": vectors.nnz},
        "co_touched_pairs": int((np.diff(matrix.values.indptr).astype(np.int64) ** 2).sum()),
        "n_neighbours": n,
        "artifacts": {
            "item_similarity": {
                "equal": bool(mine.shape == theirs.shape and (mine != theirs).nnz == 0),
                "entries": int(mine.nnz),
            }
        },
    }


def bench_size(
    size: float, data: Path, keep: bool, only: list[str] | None = None
) -> dict[str, Any]:
    from fashion_recs.config import SPARK_STAGES
    from fashion_recs.pipeline import make_context
    from fashion_recs.task_processes import TaskProcesses

    generated = generate(size, data / "retailer", ROOT)
    config = write_config(data / "retailer", data / "runs", data / "retailer.yaml")
    from fashion_recs.config import SparkConfig

    # The defaults' 2 GiB driver (in local mode also the executor) spills at 20M events.
    conf = {**SparkConfig().conf, "spark.driver.memory": DRIVER_MEMORY}
    day = date.fromisoformat(AS_OF)
    local = make_context("bench_local", day, config)

    def spark_context(stage: str) -> Any:
        """The Spark run's context for `stage`, its session logging events to a folder of its
        own (for `task_metrics`)."""
        logs = data / "event_logs" / stage
        logs.mkdir(parents=True, exist_ok=True)
        logged = {**conf, **EVENT_LOG, "spark.eventLog.dir": f"file://{logs}"}
        overrides = {"engine": "spark", "spark": {"master": "local[2]", "conf": logged}}
        return make_context("bench_spark", day, config, overrides)

    stages = [s for s, _, _ in PREFIX if s in SPARK_STAGES and (only is None or s in only)]
    knn = only is None or "item_knn" in only
    spark = {stage: spark_context(stage) for stage in stages}
    started = time.perf_counter()
    with TaskProcesses() as runner:
        steps = needed(stages + (["interactions"] if knn else []))
        local_summaries = run_steps(local, runner, steps, {})
        spark_summaries = {}
        for stage in stages:
            spark_summaries.update(run_steps(spark[stage], runner, [stage], local_summaries))
    per_stage = {}
    for stage in stages:
        compared = {}
        spark_paths = artifact_paths(spark_summaries[stage])
        for key, path in artifact_paths(local_summaries[stage]).items():
            if key in spark_paths:
                ok, why = same_table(path, spark_paths[key], IGNORED.get(stage, set()))
                compared[key] = {"equal": ok, **({"difference": why} if why else {})}
        per_stage[stage] = {
            "seconds_local": seconds_of(local, stage),
            "seconds_spark": seconds_of(spark[stage], stage),
            "spark_tasks": task_metrics(data / "event_logs" / stage),
            "artifacts": compared,
        }
        print(stage, per_stage[stage], flush=True)
    if knn:
        logs = data / "event_logs" / "item_knn"
        logs.mkdir(parents=True, exist_ok=True)
        logged = {**conf, **EVENT_LOG, "spark.eventLog.dir": f"file://{logs}"}
        per_stage["item_knn"] = bench_item_knn(local, local_summaries["interactions"], logged)
        per_stage["item_knn"]["spark_tasks"] = task_metrics(logs)
        print("item_knn", per_stage["item_knn"], flush=True)
    result = {
        "products": round(DEMO["products"] * size),
        "users": round(DEMO["users"] * size),
        "events": round(DEMO["events"] * size),
        "generate_seconds": round(generated, 1),
        "bench_seconds": round(time.perf_counter() - started, 1),
        "stages": per_stage,
        "measured_at": now(),
    }
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return result


def summarise(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    largest = max(sizes, key=lambda s: float(s.rstrip("x")))
    stages = sizes[largest]["stages"]
    matched = [
        a["equal"]
        for size in sizes.values()
        for s in size["stages"].values()
        for a in s["artifacts"].values()
    ]
    summary: dict[str, Any] = {
        "largest_size": largest,
        "parity": bool(matched) and all(matched),
        "artifacts_compared": len(matched),
        "stages_on_spark": sorted(stages),
        f"seconds_local_{largest}": round(sum(s["seconds_local"] for s in stages.values()), 1),
        f"seconds_spark_{largest}": round(sum(s["seconds_spark"] for s in stages.values()), 1),
    }
    if "1x" in sizes and largest != "1x":
        small = sizes["1x"]["stages"]
        summary[f"growth_{largest}"] = {
            stage: {
                engine: round(
                    stages[stage][f"seconds_{engine}"] / small[stage][f"seconds_{engine}"], 2
                )
                for engine in ("local", "spark")
            }
            for stage in stages
            if stage in small
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion-recs-bench-spark"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--stages", nargs="+", help="only these stages (ENGINE_STAGES, item_knn)")
    args = parser.parse_args()
    import pyspark

    sizes = {}
    if args.merge and RESULTS.exists():
        sizes = json.loads(RESULTS.read_text())["sizes"]
    for size in args.sizes:
        label = f"{size:g}x"
        result = bench_size(size, args.data / label, args.keep, args.stages)
        if args.stages and label in sizes:
            for stage in result["stages"].values():
                stage["measured_at"] = result["measured_at"]
            sizes[label]["stages"].update(result["stages"])
        else:
            sizes[label] = result
    sizes = dict(sorted(sizes.items(), key=lambda kv: float(kv[0].rstrip("x"))))
    write_report(
        RESULTS,
        {
            "summary": summarise(sizes),
            "machine": machine(),
            "versions": {"pyspark": pyspark.__version__},
            "parameters": {
                "master": "local[2]",
                "driver_memory": DRIVER_MEMORY,
                "ignored_columns": {k: sorted(v) for k, v in IGNORED.items()},
            },
            "sizes": sizes,
        },
    )


if __name__ == "__main__":
    main()
