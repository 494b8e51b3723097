"""Each task of a `fashion-recs run` in a process of its own, as Airflow's executors run them.

Run in one process, tasks leave their memory behind: allocators (polars' jemalloc, glibc's
arenas, torch's) keep what a task freed for the next allocation instead of giving it back,
so at 10x the demo a two-second quality check sat on 7 GiB that earlier tasks had used, and
the run needed the sum of its tasks' leftovers rather than the memory of its largest task.
A process per task gives everything back when the task ends, and a task's recorded peak is
its own.

Processes come from a fork server that has imported the heavy libraries every task uses, so
a task starts in a fraction of a second, not after seconds of imports. Polars (and with it
this package, which imports it) is left to each task: its allocator's background purging
threads do not survive a fork, and a child forked with them gone purged memory inline: 15 %
slower on a plain polars sort and group-by, map_interactions 19-24 s at 10x the demo against
13-16 s in a process of its own. Importing polars and this package costs a task 0.2 s.

Each child takes the caller's current environment and logging level, runs `run_step` (which
writes the task's record), and sends back the step's summary; an exception comes back and is
raised here. A child that dies without an answer (killed, out of memory) gets a failed task
record naming that.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fashion_recs.errors import FashionRecsError

if TYPE_CHECKING:
    from fashion_recs.pipeline import RunContext

# Imported once by the fork server; every task process starts with them loaded. None of them
# may import polars (see above; a test holds to it).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "scipy.sparse",
    "sqlalchemy",
    "sklearn",
    "torch",
    "great_expectations",
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TaskProcessDied(FashionRecsError):
    """A task's process ended without a result (killed by a signal, out of memory)."""


def in_process(ctx: RunContext, task_id: str, step: str, *args: Any) -> dict[str, Any]:
    """Run the step here, in the caller's process (debugging, profilers)."""
    from fashion_recs.pipeline import run_step

    return run_step(ctx, task_id, step, *args)


class TaskProcesses:
    """A context manager that runs steps one at a time, each in a fresh process."""

    # What a task process runs; module level, so a child can import it by name.
    target: Callable[..., dict[str, Any]]

    def __init__(self) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)
        self.target = _child

    def __enter__(self) -> TaskProcesses:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, ctx: RunContext, task_id: str, step: str, *args: Any) -> dict[str, Any]:
        root = logging.getLogger()
        started = time.time()
        future = self._pool.submit(
            self.target, ctx, task_id, step, args, dict(os.environ), root.level, bool(root.handlers)
        )
        try:
            return future.result()
        except BrokenProcessPool as exc:
            from fashion_recs.pipeline import record_lost_task

            died = TaskProcessDied(
                f"task {task_id}: its process ended without a result (killed by a signal or "
                "by the out-of-memory killer; the system log says which)"
            )
            record_lost_task(ctx, task_id, step, died, started)
            raise died from exc


def _child(
    ctx: RunContext,
    task_id: str,
    step: str,
    args: tuple[Any, ...],
    environ: dict[str, str],
    level: int,
    configure_logging: bool,
) -> dict[str, Any]:
    from fashion_recs.pipeline import run_step

    os.environ.clear()
    os.environ.update(environ)
    if configure_logging:
        logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    else:
        logging.getLogger().setLevel(level)
    return run_step(ctx, task_id, step, *args)
