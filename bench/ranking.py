"""Ranking: the published personal lists against every baseline the same run computes.

Each retailer runs the pipeline's steps up to and including the personalisation stages (the
baselines, user-CF, the ranker, the blend, the quality gate and the routing; the two-tower and
embedding-profile steps are left out to keep the run short: they are candidates of the gate,
never its bar) in a child process of its own, on:

- `demo`: the demo-size planted retailer (5,000 products, 20,000 users, 2M events): the
  ranker stage's seconds at the size `make demo` runs (goal: at most 60 s on 2 cores);
- `planted_50k`: the planted retailer at 2.5x (12,500 products, 50,000 users, 5M events),
  large enough for stable numbers, and the second point of the ranker's growth in users;
- `hm_fixture`: the small H&M-schema export under tests/fixtures/hm with
  config/hm_example.yaml (two hold-out days, as on the real retailer's evaluation);
- `demo_two_tower` (only with `--only demo_two_tower`): the demo retailer with the ranker's
  two-tower candidate source turned on (12 items), to measure what it adds and costs.

`summary` is the 50k retailer's: `map_at_12_published` (the hold-out MAP@12 of the list the
gate serves to existing users), `map_at_12_best_baseline` and `best_baseline` (the best of
repurchase, popularity, segment popularity and item-kNN in the same run),
`lift_vs_best_baseline` (goal at least 1.10) and `ranker_seconds`; per retailer the same
figures, every model's MAP@12, the ranker's timings and its top features.

    python bench/ranking.py                 # all three
    python bench/ranking.py --only demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from machine import machine, now, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ranking.json"
WORK = Path("/tmp/fashion-recs-bench-ranking")
RETAILERS = {
    "demo": {"n_products": 5_000, "n_users": 20_000, "n_events": 2_000_000},
    "planted_50k": {"n_products": 12_500, "n_users": 50_000, "n_events": 5_000_000},
    "hm_fixture": {},
}
# Variants: the retailer they run on and the personal.ranker settings they change.
VARIANTS = {
    "demo_two_tower": (
        "demo",
        {
            "sources": {
                "own": 20, "siblings": 10, "item_knn": 12, "user_cf": 12, "two_tower": 12,
                "basket": 8, "lookalike": 4, "segment_popularity": 12, "trending": 6,
                "popular": 6,
            }
        },
    ),
}  # fmt: skip
DEFAULT = ("demo", "planted_50k", "hm_fixture")
STEPS = ("personal_baselines", "user_cf", "ranker", "blend")


def _overrides(name: str, work: Path) -> tuple[Path | None, dict[str, Any], date]:
    """The config file and overrides of one retailer, generating it when planted."""
    if name == "hm_fixture":
        fixture = ROOT / "tests" / "fixtures" / "hm"
        overrides = {
            "data_root": str(work / "data"),
            "as_of": "2020-09-15",
            "sources": {
                "articles": {"uri": str(fixture / "articles.csv")},
                "customers": {"uri": str(fixture / "customers.csv")},
                "transactions": [{"uri": str(fixture / "transactions_train.csv")}],
            },
            "evaluation": {"holdout_days": 2},
        }
        return ROOT / "config" / "hm_example.yaml", overrides, date(2020, 9, 15)
    from fashion_recs.synthetic import SyntheticSpec, generate

    size = RETAILERS[name]
    spec = SyntheticSpec(**size, n_answers=size["n_users"] * 5 // 4, images=False)
    raw = WORK / name / "raw"
    if not (raw / "truth" / "summary.json").exists():
        generate(spec, raw)
    overrides = {
        "data_root": str(work / "data"),
        "sources": {
            "product_data": {"uri": str(raw / "product_data.csv")},
            "events": [{"uri": str(p)} for p in sorted(raw.glob("events_*.csv"))],
            "user_answers": {"uri": str(raw / "user_answers.csv")},
        },
        "evaluation": {"truth_dir": str(raw / "truth")},
    }
    return None, overrides, spec.end_date


def run_one(name: str) -> dict[str, Any]:
    """The steps of one retailer, in this process; returns its figures."""
    import pandas as pd

    from fashion_recs import pipeline
    from fashion_recs.contract import METRICS, PERSONAL_GATE, USER_ROUTES, personal_metrics

    work = WORK / name
    retailer, ranker = VARIANTS.get(name, (name, {}))
    config_path, overrides, as_of = _overrides(retailer, work)
    if ranker:
        overrides["personal"] = {"ranker": ranker}
    ctx = pipeline.make_context(
        "bench", as_of, str(config_path) if config_path else None, overrides
    )
    seconds: dict[str, float] = {}

    def timed(step: str, fn, *args):
        started = time.perf_counter()
        out = fn(ctx, *args)
        seconds[step] = round(time.perf_counter() - started, 2)
        return out

    dl = timed("download", pipeline.download)
    prod = timed("products", pipeline.products, dl)
    ev = timed("events", pipeline.events, dl, prod)
    demo = timed("demographics", pipeline.demographics, dl)
    inter = timed("interactions", pipeline.interactions, ev)
    timed("popular", pipeline.popular, inter, demo)
    timed("evaluate", pipeline.evaluate, inter, demo, prod)
    timed("similar_text", pipeline.similar_text, prod, inter)
    summaries = {}
    for step in STEPS:
        summaries[step] = timed(step, pipeline.personal_model, step, inter)
    gate = timed("quality_gate", pipeline.quality_gate)
    bask = timed("baskets", pipeline.baskets, inter, prod)
    rules = timed("fbt_rules", pipeline.fbt_rules, bask)
    timed("fbt_recommendations", pipeline.fbt_recommendations, rules, bask, prod)
    routes = timed("route_users", pipeline.route_users, inter, gate)

    metrics = pd.concat(
        [
            pd.read_parquet(ctx.paths.path(a))
            for a in (
                METRICS,
                *[personal_metrics(s) for s in ("baselines", "user_cf", "ranker", "blend")],
            )
        ]
    )
    map12 = metrics[(metrics["metric"] == "map") & (metrics["k"] == 12)]
    table = pd.read_parquet(ctx.paths.path(PERSONAL_GATE))
    served = table[table["chosen"]]
    published = float(served["value"].iloc[0])
    best = float(table["baseline_value"].iloc[0])
    ranker = summaries["ranker"]
    return {
        "users": len(pd.read_parquet(ctx.paths.path(USER_ROUTES), columns=["user_id"])),
        "holdout_users": int(map12["n_users"].max()),
        "served_by": gate["served"],
        "map_at_12_published": round(published, 5),
        "map_at_12_best_baseline": round(best, 5),
        "best_baseline": gate["baseline"],
        "lift_vs_best_baseline": round(published / best, 4) if best else None,
        "ranker_seconds": seconds["ranker"],
        "ranker_cpu_seconds": (ranker.get("timings") or {}).get("cpu"),
        "ranker_timings": ranker.get("timings"),
        "ranker_candidate_recall": ranker.get("holdout_candidate_recall"),
        "ranker_top_features": ranker.get("importance"),
        "map_at_12": {r.model: round(float(r.value), 5) for r in map12.itertuples()},
        "routes": routes.get("routes"),
        "step_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names_known = [*RETAILERS, *VARIANTS]
    parser.add_argument("--only", choices=names_known, action="append")
    parser.add_argument("--child", choices=names_known, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child)))
        return
    names = args.only or list(DEFAULT)
    results: dict[str, Any] = {}
    if args.only and RESULTS.exists():
        # Rerunning some retailers keeps the others' last figures.
        results = json.loads(RESULTS.read_text()).get("results", {})
    for name in names:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{name}: the run failed (exit {proc.returncode})")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results[name] = json.loads(line.removeprefix("RESULT "))
        results[name]["wall_seconds"] = round(time.perf_counter() - started, 1)
        # Timings on a shared machine: what else ran shows in the load (1, 5, 15 min).
        results[name]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        shown = ("served_by", "map_at_12_published", "best_baseline", "lift_vs_best_baseline")
        print(name, json.dumps({k: results[name][k] for k in (*shown, "ranker_seconds")}))
    head = results.get("planted_50k") or next(iter(results.values()))
    summary = {
        key: head[key]
        for key in (
            "map_at_12_published",
            "map_at_12_best_baseline",
            "best_baseline",
            "lift_vs_best_baseline",
            "ranker_seconds",
        )
    }
    if "demo" in results:
        summary["ranker_seconds_demo"] = results["demo"]["ranker_seconds"]
        summary["ranker_cpu_seconds_demo"] = results["demo"]["ranker_cpu_seconds"]
    if "demo" in results and "planted_50k" in results:
        summary["ranker_growth_users_2_5x"] = round(
            results["planted_50k"]["ranker_seconds"] / results["demo"]["ranker_seconds"], 2
        )
    if "hm_fixture" in results:
        summary["lift_vs_best_baseline_hm_fixture"] = results["hm_fixture"]["lift_vs_best_baseline"]
    if "demo" in results and "demo_two_tower" in results:
        with_towers = results["demo_two_tower"]
        summary["two_tower_source_map_at_12_change"] = round(
            with_towers["map_at_12"]["ranker"] - results["demo"]["map_at_12"]["ranker"], 5
        )
        summary["two_tower_source_extra_seconds"] = round(
            with_towers["ranker_seconds"] - results["demo"]["ranker_seconds"], 1
        )
    write_report(
        RESULTS,
        {
            "benchmark": "ranking",
            "when": now(),
            "machine": machine(),
            "parameters": {
                "retailers": {n: RETAILERS[n] for n in results if n in RETAILERS},
                "variants": {n: VARIANTS[n] for n in results if n in VARIANTS},
                "steps": list(STEPS),
            },
            "summary": summary,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
