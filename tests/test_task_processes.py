"""`fashion-recs run` runs each task in a process of its own, as Airflow does: memory a task
leaves behind is given back, failures come back with their type and a task record, and a
task that dies without an answer is a failed task, not a hung run."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashion_recs.contract import TASKS_DIR
from fashion_recs.memory import peak_rss_mib, reset_peak_rss
from fashion_recs.pipeline import RunContext, make_context, run_step
from fashion_recs.task_processes import TaskProcessDied, TaskProcesses
from tests.conftest import retailer_overrides

_KEPT: list[np.ndarray] = []


def _leaky_task(ctx: RunContext, task_id: str, step: str, args: tuple, *_: Any) -> dict:
    """A task that keeps 300 MiB referenced after it returns (a cache, an allocator's arena)."""
    reset_peak_rss()
    before = peak_rss_mib()
    _KEPT.append(np.ones(300 * 2**20 // 8))
    return {"pid": os.getpid(), "held_at_start_mib": before, "peak_mib": peak_rss_mib()}


def _environment_task(ctx: RunContext, task_id: str, step: str, args: tuple, environ, *_) -> dict:
    os.environ.clear()
    os.environ.update(environ)
    return {"value": os.environ.get("FASHION_RECS_TASK_PROCESS_PROBE")}


def _threads_task(*_: Any) -> dict:
    """The threads a task process has once polars has done some work."""
    import glob

    import polars as pl

    pl.Series(np.arange(1_000_000)[::-1]).sort()
    names = [Path(p).read_text().strip() for p in glob.glob("/proc/self/task/*/comm")]
    return {"names": names, "pool": pl.thread_pool_size()}


def _killed_task(*_: Any) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


class _Runner(TaskProcesses):
    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target


@pytest.fixture
def ctx(retailer, tmp_path) -> RunContext:
    return make_context(
        "processes", date(2026, 11, 1), None, retailer_overrides(retailer, tmp_path / "data")
    )


def test_each_task_starts_in_a_new_process_without_what_the_last_one_kept(ctx) -> None:
    with _Runner(_leaky_task) as run:
        first = run(ctx, "a", "unused")
        second = run(ctx, "b", "unused")
    assert len({first["pid"], second["pid"], os.getpid()}) == 3
    assert first["peak_mib"] >= first["held_at_start_mib"] + 290
    # The first task's 300 MiB went with its process.
    assert second["held_at_start_mib"] < first["held_at_start_mib"] + 100
    assert _KEPT == []  # and this process never held it


def test_a_task_sees_the_callers_environment_of_the_moment(ctx, monkeypatch) -> None:
    with _Runner(_environment_task) as run:
        monkeypatch.setenv("FASHION_RECS_TASK_PROCESS_PROBE", "first")
        assert run(ctx, "a", "unused") == {"value": "first"}
        monkeypatch.setenv("FASHION_RECS_TASK_PROCESS_PROBE", "second")
        assert run(ctx, "b", "unused") == {"value": "second"}


def test_a_failing_step_raises_its_own_error_here_and_leaves_its_record(ctx) -> None:
    # Filtering events without the products stage's summary: it fails inside its process.
    with TaskProcesses() as run, pytest.raises(Exception) as in_child:
        run(ctx, "filter_events", "events", {"files": {}}, {"counts": {}})
    with pytest.raises(Exception) as here:
        run_step(ctx, "filter_events", "events", {"files": {}}, {"counts": {}})
    assert type(in_child.value) is type(here.value)
    assert str(in_child.value) == str(here.value)
    record = json.loads(ctx.paths.file(TASKS_DIR, "filter_events.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith(type(here.value).__name__)


def test_a_task_process_that_dies_is_a_failed_task_with_a_record(ctx) -> None:
    with _Runner(_killed_task) as run, pytest.raises(TaskProcessDied, match="out-of-memory"):
        run(ctx, "two_tower", "personal_model")
    record = json.loads(ctx.paths.file(TASKS_DIR, "two_tower.json").read_text())
    assert record["status"] == "failed"
    assert "TaskProcessDied" in record["error"]
    assert record["step"] == "personal_model"


def test_polars_in_a_task_process_has_its_whole_thread_pool_and_allocator_threads(ctx) -> None:
    """Polars is loaded in the task's process, not in the fork server: loaded before the fork,
    a child came up with one of its worker threads and without its allocator's purging
    thread, and polars-heavy tasks ran 15-35 % slower."""
    with _Runner(_threads_task) as run:
        threads = run(ctx, "probe", "probe")
    workers = [n for n in threads["names"] if re.fullmatch(r"polars-\d+", n)]
    assert len(workers) == threads["pool"]
    assert "jemalloc_bg_thd" in threads["names"]
