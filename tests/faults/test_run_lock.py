"""Two runs with one run id: the second fails at once; tasks, retries and reruns of one run
share the run directory."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from fashion_recs import pipeline
from fashion_recs.artifacts import RunPaths
from fashion_recs.errors import RunDirectoryBusy
from fashion_recs.run_lock import airflow_owner, claim_run_dir, process_owner

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from fashion_recs.run_lock import RunOwner, claim_run_dir, process_owner
owner = RunOwner(sys.argv[2], float(sys.argv[3])) if len(sys.argv) > 2 and sys.argv[2] else None
with claim_run_dir(Path(sys.argv[1]), "r1", owner):
    print("held", time.time(), flush=True)
    time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 600)
    print("released", time.time(), flush=True)
"""


def hold(run_dir: Path, *owner: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), *owner],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("held")
    return proc


def context(tmp_path: Path, owner=None) -> pipeline.RunContext:
    return pipeline.RunContext(None, RunPaths(tmp_path, "demo", "r1"), date(2026, 11, 1), owner)  # type: ignore[arg-type]


@pytest.fixture
def noop_step(monkeypatch):
    calls: list[int] = []

    def noop(ctx: pipeline.RunContext) -> dict:
        calls.append(1)
        return {"counts": {"rows_in": 1}}

    monkeypatch.setattr(pipeline, "noop", noop, raising=False)
    return calls


def test_a_second_run_with_the_same_run_id_fails_at_once_naming_the_first(
    tmp_path, noop_step
) -> None:
    ctx = context(tmp_path)
    holder = hold(ctx.paths.run_dir)
    try:
        started = time.monotonic()
        with pytest.raises(RunDirectoryBusy, match=rf"pid {holder.pid}, since \d{{4}}-") as info:
            pipeline.run_step(ctx, "download_files", "noop")
        assert time.monotonic() - started < 5
        assert "another run id" in str(info.value) and "r1" in str(info.value)
        # Nothing of the refused run reached the directory: no step ran, no task record.
        assert noop_step == []
        assert not ctx.paths.file("tasks", "download_files.json").exists()
    finally:
        holder.kill()
        holder.wait(30)


def test_a_killed_run_frees_its_run_directory_at_once(tmp_path, noop_step) -> None:
    ctx = context(tmp_path)
    holder = hold(ctx.paths.run_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(30)
    assert pipeline.run_step(ctx, "download_files", "noop") == {"counts": {"rows_in": 1}}
    assert noop_step == [1]


def test_reruns_and_nested_steps_of_one_run_share_the_directory(tmp_path, noop_step) -> None:
    ctx = context(tmp_path)
    with claim_run_dir(ctx.paths.run_dir, "r1"):  # run_all holds it around its steps
        pipeline.run_step(ctx, "download_files", "noop")
        pipeline.run_step(ctx, "download_files", "noop", try_number=2)
    pipeline.run_step(ctx, "download_files", "noop")  # a rerun of the task later on
    assert noop_step == [1, 1, 1]
    # Parallel steps of one owner in threads of one process.
    errors: list[BaseException] = []

    def step() -> None:
        try:
            with claim_run_dir(ctx.paths.run_dir, "r1"):
                time.sleep(0.2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tasks_of_one_airflow_run_share_the_directory_with_a_retry_in_another_process(
    tmp_path, noop_step
) -> None:
    owner = airflow_owner("fashion_recs", "manual__2026-11-01")
    ctx = context(tmp_path, owner)
    # Another task of the same DAG run is running in its own process.
    other_task = hold(ctx.paths.run_dir, owner.name, str(owner.lease_s))
    try:
        pipeline.run_step(ctx, "clean_products", "noop", try_number=2)
        assert noop_step == [1]
        # A CLI run with the same run id is refused while the DAG run holds the directory.
        with pytest.raises(RunDirectoryBusy, match="airflow dag fashion_recs run manual__"):
            pipeline.run_step(context(tmp_path), "download_files", "noop")
    finally:
        other_task.kill()
        other_task.wait(30)


def test_an_airflow_runs_claim_lasts_between_its_tasks_until_its_report(tmp_path) -> None:
    owner = airflow_owner("fashion_recs", "manual__2026-11-01")
    run_dir = RunPaths(tmp_path, "demo", "r1").run_dir
    with claim_run_dir(run_dir, "r1", owner):
        pass
    # No task of the DAG run is running, but its next one may start any moment.
    with (
        pytest.raises(RunDirectoryBusy, match="between two of its tasks"),
        claim_run_dir(run_dir, "r1", process_owner()),
    ):
        pass
    # Its run report ends the claim: the directory is free for another run.
    with claim_run_dir(run_dir, "r1", owner, finishes=True):
        pass
    with claim_run_dir(run_dir, "r1", process_owner()):
        pass


def test_an_airflow_claim_lapses_after_its_lease(tmp_path) -> None:
    run_dir = RunPaths(tmp_path, "demo", "r1").run_dir
    with claim_run_dir(run_dir, "r1", airflow_owner("copy_of_dag", "r1", lease_s=0.5)):
        pass
    with pytest.raises(RunDirectoryBusy), claim_run_dir(run_dir, "r1", airflow_owner("a", "r1")):
        pass
    time.sleep(0.6)
    with claim_run_dir(run_dir, "r1", airflow_owner("fashion_recs", "r1")):
        pass


def test_two_runs_starting_together_never_both_run(tmp_path) -> None:
    run_dir = RunPaths(tmp_path, "demo", "r1").run_dir
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    for _ in range(4):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", HOLD, str(run_dir), "", "0", "1.5"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
        )
    outs = [p.communicate(timeout=60) for p in procs]
    spans = sorted(tuple(float(line.split()[1]) for line in o.splitlines()) for o, _ in outs if o)
    refused = [e for _, e in outs if "RunDirectoryBusy" in e]
    assert spans and len(spans) + len(refused) == 4
    # Whoever ran, ran alone.
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
