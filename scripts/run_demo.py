"""Run the fashion_recs DAG once with Airflow (`airflow dags test`) and print what it published.

Used by `make demo`, which sets AIRFLOW_HOME, the DAGs folder and the results connection.
No scheduler is needed: `airflow dags test` runs every task in this process, in order.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lines worth echoing: each stage's one-line summary, task ends and failures.
PROGRESS = re.compile(
    r"\[fashion_recs\.(stages|publish|pipeline|quality\.checks)|\[DAG TEST\] end task|"
    r"Task failed|Marking run|DagRun Finished"
)
NOISE = re.compile(r"\s+(\[[\w.]+\]\s+)?loc=\S+.*$")


def results_url() -> str:
    """The SQLAlchemy URL of the results connection the DAG will use (sqlite or postgres)."""
    from fashion_recs.publish import connection_url

    raw = os.environ.get("AIRFLOW_CONN_FASHION_RECS_RESULTS", "")
    if raw.startswith("{"):
        conn = json.loads(raw)
        return connection_url(
            conn["conn_type"], conn.get("host"), conn.get("login"), conn.get("password"),
            conn.get("port"), conn.get("schema"),
        )  # fmt: skip
    return raw or f"sqlite:///{ROOT / 'data' / 'results.db'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logical-date", required=True)
    args = parser.parse_args()
    airflow = Path(sys.executable).parent / "airflow"
    log_dir = ROOT / "data" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"demo-{args.logical_date}.log"
    print(f"running DAG fashion_recs for {args.logical_date} (full Airflow log: {log_file})")
    started = time.monotonic()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [str(airflow), "dags", "test", "fashion_recs", args.logical_date],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        finished = ""
        for line in proc.stdout:
            log.write(line)
            if "DagRun Finished" in line:
                finished = line
            if PROGRESS.search(line):
                print("  " + NOISE.sub("", line.rstrip())[:240], flush=True)
        code = proc.wait()
    elapsed = time.monotonic() - started
    from fashion_recs.cli import main as cli

    if code != 0 or "state=success" not in finished:
        print(f"the DAG run did not succeed (exit {code}); see {log_file}", file=sys.stderr)
        return code or 1
    print(f"\nDAG run finished in {elapsed:.0f} s\n")
    return cli(["show", "--db", results_url()])


if __name__ == "__main__":
    raise SystemExit(main())
