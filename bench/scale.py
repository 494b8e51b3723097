"""Benchmark: the whole pipeline on the synthetic retailer at 1x, 3x and 10x the demo.

For each size (1x = 5,000 products, 20,000 users, 2M event rows) the retailer is generated
once under `--data`, a config is written that points the demo's `config/retailer.yaml` at it,
and `fashion-recs run` runs the whole pipeline (every DAG task, ranker included) in a child
process. Per-task seconds and peak RSS come from the run's `tasks/*.json`, the wall time and
peak RSS from the child (`wait4`'s `ru_maxrss`, the child's own high-water mark, which each
task resets), and every stretch over 30 s in which the run's log said nothing
(`log_silences_over_30s`). Results merge into `bench/results/scale.json` by size, so sizes
can be run one at a time; the `summary` compares 10x with 1x, and a larger size (30x) with
1x too when one was run:

    python bench/scale.py --sizes 1 3 [--data /tmp/fashion-recs-bench-scale] [--keep]
    python bench/scale.py --sizes 10

`--source DIR` runs another checkout's `include/` (the code before a change) on the same data.
`--repeats N` runs each size N times on the same data and keeps each task's median seconds
(and the median wall time): a task of one or two seconds at 1x moves by a third between runs
on a shared machine, which is the whole margin of a growth bound. Generated data and run
directories are deleted afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from machine import machine, now, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.json"
DEMO = {"products": 5_000, "users": 20_000, "events": 2_000_000}
AS_OF = "2026-11-01"


def generate(size: float, data: Path, source: Path) -> float:
    """Write the retailer at `size` times the demo (skipped when already there)."""
    if (data / "truth" / "summary.json").exists():
        return 0.0
    files = 4 if size >= 10 else 2
    cmd = [sys.executable, "-m", "fashion_recs.synthetic", "--out", str(data)]
    cmd += ["--products", str(round(DEMO["products"] * size))]
    cmd += ["--users", str(round(DEMO["users"] * size))]
    cmd += ["--events", str(round(DEMO["events"] * size)), "--event-files", str(files)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(source), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def write_config(data: Path, run_root: Path, path: Path) -> Path:
    """The demo config with its sources, data root and truth pointed at `data`."""
    config = yaml.safe_load((ROOT / "config" / "retailer.yaml").read_text())
    config["data_root"] = str(run_root)
    sources = config["sources"]
    sources["product_data"]["uri"] = str(data / "product_data.csv")
    sources["user_answers"]["uri"] = str(data / "user_answers.csv")
    sources["events"] = [{"uri": str(p)} for p in sorted(data.glob("events_*.csv"))]
    config["evaluation"]["truth_dir"] = str(data / "truth")
    config["base_dir"] = str(ROOT)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _env(source: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(source / "include")}


def run_pipeline(config: Path, db: Path, log_path: Path, source: Path) -> dict[str, Any]:
    """`fashion-recs run` in a child process: wall seconds, peak RSS, exit status."""
    cmd = [sys.executable, "-m", "fashion_recs.cli", "run", "--config", str(config)]
    cmd += ["--logical-date", AS_OF, "--run-id", "scale", "--db", f"sqlite:///{db}"]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=_env(source), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "exit_status": os.waitstatus_to_exitcode(status),
    }


def task_records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "tasks").glob("*.json"))]


def task_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each task's seconds, longest first."""
    seconds = {r["task_id"]: round(float(r.get("seconds") or 0.0), 2) for r in records}
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def task_peak_rss(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each task's own peak RSS (MiB) from its record, largest first: which task sets the
    run's peak."""
    peaks = {
        r["task_id"]: float(r["peak_rss_mib"]) for r in records if r.get("peak_rss_mib") is not None
    }
    return dict(sorted(peaks.items(), key=lambda kv: -kv[1]))


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_silences(log_path: Path, longer_than_s: float = 30.0) -> list[dict[str, Any]]:
    """Stretches of the run's log longer than `longer_than_s` without a line, longest first:
    where a data engineer watching the task log would see nothing happen."""
    silences = []
    previous: tuple[datetime, str] | None = None
    for line in log_path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if previous and (at - previous[0]).total_seconds() > longer_than_s:
            silences.append(
                {
                    "seconds": round((at - previous[0]).total_seconds(), 1),
                    "after": previous[1][24:160],
                }
            )
        previous = (at, line)
    return sorted(silences, key=lambda s: -s["seconds"])


def personal_metrics(run_dir: Path) -> dict[str, float]:
    """map@k of every personal model of the run (the speed-ups must not move them)."""
    values: dict[str, float] = {}
    for path in sorted((run_dir / "summaries").glob("*.json")):
        summary = json.loads(path.read_text())
        if isinstance(summary, dict) and isinstance(summary.get("values"), dict):
            values |= {k: v for k, v in summary["values"].items() if "/map@" in k}
    return values


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's figures from its runs: the median wall time and each task's median
    seconds; the largest peak RSS and every run's log silences (the worst case is what a
    bound is about); the personal metrics of the first run (seeded, the same every run)."""
    tasks = {t: float(np.median([r["tasks"].get(t, 0.0) for r in runs])) for t in runs[0]["tasks"]}
    peaks: dict[str, float] = {}
    for run in runs:
        for task, mib in run["task_peak_rss_mib"].items():
            peaks[task] = max(peaks.get(task, 0.0), mib)
    return {
        "seconds": round(float(np.median([r["seconds"] for r in runs])), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "exit_status": max((r["exit_status"] for r in runs), key=abs),
        "tasks": dict(sorted(((t, round(v, 2)) for t, v in tasks.items()), key=lambda kv: -kv[1])),
        "task_peak_rss_mib": dict(sorted(peaks.items(), key=lambda kv: -kv[1])),
        "personal_map": runs[0]["personal_map"],
        "log_silences_over_30s": sorted(
            (s for r in runs for s in r["log_silences_over_30s"]), key=lambda s: -s["seconds"]
        ),
    }


def summarise(sizes: dict[str, Any]) -> dict[str, Any]:
    """1x against 10x (the issue's figures, unsuffixed task growth) and, when a larger size
    was run, against that size too (its keys suffixed with the size)."""
    base = sizes.get("1x")
    if base is None:
        return {}
    largest = max(sizes, key=lambda s: float(s.rstrip("x")))
    main_tag = "10x" if "10x" in sizes else largest
    summary = {
        "largest_size": largest,
        "seconds_1x": base["seconds"],
        "runs_1x": base.get("runs", 1),
        **against_1x(base, sizes[main_tag], main_tag),
    }
    if largest != main_tag:
        summary.update(against_1x(base, sizes[largest], largest, suffix=True))
    return summary


def against_1x(
    base: dict[str, Any], top: dict[str, Any], tag: str, suffix: bool = False
) -> dict[str, Any]:
    """One size's wall time, growth, worst task, peak RSS and log silence against 1x."""
    growth = {
        task: round(top["tasks"][task] / max(seconds, 0.01), 2)
        for task, seconds in base["tasks"].items()
        if task in top["tasks"] and seconds >= 1.0
    }
    worst = max(growth, key=growth.get) if growth else None
    own = f"_{tag}" if suffix else ""
    return {
        f"runs_{tag}": top.get("runs", 1),
        f"seconds_{tag}": top["seconds"],
        f"growth_{tag}": round(top["seconds"] / base["seconds"], 2),
        f"worst_task{own}": worst,
        f"worst_task_growth_{tag}": growth.get(worst) if worst else None,
        # Tasks reset the process's high-water mark, so the run's peak is the largest of
        # the child's mark and every task's own peak.
        f"peak_rss_mib_{tag}": max(
            [top["peak_rss_mib"], *(top.get("task_peak_rss_mib") or {}).values()]
        ),
        f"peak_rss_task_{tag}": next(iter(top.get("task_peak_rss_mib") or {}), None),
        f"longest_log_silence_s_{tag}": max(
            (s["seconds"] for s in top.get("log_silences_over_30s", [])), default=0.0
        ),
        f"task_growth{own}": dict(sorted(growth.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 3, 10])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion-recs-bench-scale"))
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep generated data and runs")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (medians kept)")
    args = parser.parse_args()

    report = json.loads(args.results.read_text()) if args.results.exists() else {}
    sizes: dict[str, Any] = report.get("sizes", {})
    for size in args.sizes:
        tag = f"{size:g}x"
        data = args.data / f"data_{tag}"
        run_root = args.data / f"run_{tag}"
        print(f"{tag}: generating ...", flush=True)
        generate_seconds = generate(size, data, args.source)
        runs = []
        for attempt in range(args.repeats):
            shutil.rmtree(run_root, ignore_errors=True)
            run_root.mkdir(parents=True)
            config = write_config(data, run_root, run_root / "retailer.yaml")
            print(
                f"{tag}: running the pipeline, run {attempt + 1} of {args.repeats} "
                f"(log: {run_root / 'run.log'}) ...",
                flush=True,
            )
            figures = run_pipeline(
                config, run_root / "results.db", run_root / "run.log", args.source
            )
            run_dir = run_root / "runs" / "demo" / "scale"
            records = task_records(run_dir)
            runs.append(
                {
                    **figures,
                    "tasks": task_seconds(records),
                    "task_peak_rss_mib": task_peak_rss(records),
                    "personal_map": personal_metrics(run_dir),
                    "log_silences_over_30s": log_silences(run_root / "run.log"),
                }
            )
            print(f"{tag}: run {attempt + 1}: {figures}", flush=True)
        figures = median_run(runs)
        sizes[tag] = {
            **figures,
            "generate_seconds": round(generate_seconds, 1),
            "products": round(DEMO["products"] * size),
            "users": round(DEMO["users"] * size),
            "events": round(DEMO["events"] * size),
            "runs": len(runs),
            "run_seconds": [r["seconds"] for r in runs],
            "measured_at": now(),
        }
        print(f"{tag}: median of {len(runs)} run(s): {figures['seconds']} s", flush=True)
        if not args.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
        report = {
            "summary": summarise(sizes),
            "sizes": dict(sorted(sizes.items(), key=lambda kv: float(kv[0].rstrip("x")))),
            "parameters": {"demo": DEMO, "as_of": AS_OF, "config": "config/retailer.yaml"},
            "machine": machine(),
        }
        write_report(args.results, report)


if __name__ == "__main__":
    main()
