"""`fashion-recs`: generate a synthetic retailer, run the pipeline without Airflow, show results.

The Airflow DAG is the way to run the pipeline in production; `run` executes the same steps in
one process for a laptop or a debugger, and `show` prints what the results database serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fashion_recs.contract import REPORT_FILE
from fashion_recs.errors import FashionRecsError


def _show(url: str) -> int:
    from fashion_recs.publish import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            run = conn.exec_driver_sql(
                "SELECT seq, run_id, retailer, published_at, tables, summary, metrics "
                "FROM current_run"
            ).first()
            if run is None:
                print(f"no published run in {url}", file=sys.stderr)
                return 1
            tables = json.loads(run.tables)
            counts = {
                name: conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{name}"').scalar_one()
                for name in tables
            }
            history = conn.exec_driver_sql(
                "SELECT seq, run_id, status FROM runs ORDER BY seq DESC LIMIT 5"
            ).all()
    except sa.exc.OperationalError as exc:
        print(f"cannot read the results database {url}: {exc.orig}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    summary: dict[str, Any] = json.loads(run.summary)
    print(f"published run   {run.run_id}  (retailer {run.retailer}, seq {run.seq})")
    print(f"published at    {run.published_at}")
    print(f"as of           {summary.get('as_of')}")
    print("tables (stable views readers query):")
    for name, n in counts.items():
        print(f"  {name:<20} {n:>10,} rows")
    print("stages (rows in -> out, filtered, quarantined):")
    for stage, c in summary.get("stages", {}).items():
        reasons = ", ".join(f"{k}={v:,}" for k, v in c.get("reasons", {}).items()) or "-"
        print(
            f"  {stage:<14} {c['rows_in']:>10,} -> {c['rows_out']:>10,}  "
            f"filtered {c.get('rows_filtered', 0):>9,}  quarantined {c['rows_quarantined']:>7,}"
            f"  ({reasons})"
        )
    if summary.get("similar_models"):
        print(f"similar models  {', '.join(summary['similar_models'])}")
    for name, why in summary.get("similar_skipped", {}).items():
        print(f"  skipped {name}: {why.split('. To use it')[0]}")
    print("metrics:")
    for m in json.loads(run.metrics):
        at = f"@{m['k']}" if m["k"] is not None else ""
        print(f"  {m['model']:<20} {m['metric']:<22} {at:<4} {m['value']:.4f}")
    artifacts = Path(summary["artifacts"])
    print(f"artifacts       {artifacts}")
    print(f"quarantine      {artifacts / '09_quarantine'}")
    print(f"quality report  {summary.get('data_docs')}")
    print(f"run report      {artifacts / REPORT_FILE}")
    print("recent publishes: " + ", ".join(f"{s}:{r} ({st})" for s, r, st in history))
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run the FastAPI reference service with uvicorn."""
    import os

    import uvicorn

    from fashion_recs.service import DB_ENV

    # Worker processes build their own app (and engine) from the URL: an import string and a
    # factory, which is what uvicorn needs to start more than one worker. uvicorn picks uvloop
    # and httptools when they are installed (both are pinned); no access log, whose line per
    # request would cost more CPU than answering it.
    os.environ[DB_ENV] = args.db
    uvicorn.run(
        "fashion_recs.service:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from fashion_recs.pipeline import make_context, run_all
    from fashion_recs.publish import default_results_url

    run_id = args.run_id or f"cli__{args.logical_date.isoformat()}"
    ctx = make_context(run_id, args.logical_date, args.config)
    url = args.db or default_results_url(ctx.config.publish.default_url, ctx.config.base_dir)
    record = run_all(ctx, url, task_processes=not args.in_process)
    print(json.dumps(record["publish"], indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fashion-recs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="write a synthetic retailer (see --help of this command)")
    run = sub.add_parser("run", help="run every pipeline step, each in its own process, no Airflow")
    run.add_argument("--config", default=None, help="retailer YAML (default config/retailer.yaml)")
    run.add_argument("--run-id", default=None, help="default: cli__<logical date>")
    run.add_argument("--logical-date", type=date.fromisoformat, default=date.today())
    run.add_argument("--db", default=None, help="SQLAlchemy URL (default: the config's)")
    run.add_argument(
        "--in-process",
        action="store_true",
        help="run every task in this process (for a debugger or profiler); the default runs "
        "each task in a process of its own, as Airflow does, so memory is given back between",
    )
    show = sub.add_parser("show", help="print the run the results database currently serves")
    show.add_argument("--db", required=True, help="SQLAlchemy URL of the results database")
    serve = sub.add_parser("serve", help="the reference service over the published tables")
    serve.add_argument("--db", required=True, help="SQLAlchemy URL of the results database")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        from fashion_recs.synthetic import main as generate

        return generate(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "show":
            return _show(args.db)
        if args.command == "serve":
            return _serve(args)
        return _run(args)
    except FashionRecsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
