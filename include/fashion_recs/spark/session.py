"""The SparkSession a `spark` step runs on: handed in, or built from the config.

The library knows nothing of Airflow. A DAG task that already holds a session (the Spark
provider's `@task.pyspark`, built from the `spark_default` connection) leaves it active
while it calls the step, and the step uses it and leaves it running; otherwise the step
builds one from `spark.master` / `spark.conf` and stops it when done, so each task process
starts and ends its own JVM and nothing leaks from one task into the next.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from fashion_recs.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _pyspark_sql() -> ModuleType:
    """pyspark.sql, imported only when a step runs on Spark (the local engine needs no JVM)."""
    try:
        import pyspark.sql
    except ImportError as exc:  # pragma: no cover - pyspark is pinned in requirements.txt
        raise RuntimeError(
            "engine 'spark' needs pyspark (pinned in requirements.txt) and Java 17+ on PATH; "
            "install them, or set engine: local"
        ) from exc
    return pyspark.sql


def build_session(config: SparkConfig) -> SparkSession:
    """A session from the config's master, app name and conf.

    In local mode the Python workers run this interpreter (the virtual environment with
    pyarrow) rather than the first `python3` on PATH: PySpark reads that choice from
    PYSPARK_PYTHON only, so it is set for this process when unset. On a cluster the
    executors' Python is the cluster's (PYSPARK_PYTHON / `spark.pyspark.python`).
    """
    if config.master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # py4j logs every connection it closes at INFO, some from finalizers at interpreter exit
    # after logging has shut down (a "Logging error" traceback in the task log).
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = _pyspark_sql().SparkSession.builder.master(config.master).appName(config.app_name)
    for key, value in sorted(config.conf.items()):
        builder = builder.config(key, value)
    return builder.getOrCreate()


@contextmanager
def spark_session(config: SparkConfig) -> Iterator[SparkSession]:
    """The process's active session if it has one (left running: its owner stops it), else
    a new one from `config`, stopped when the block ends."""
    active = _pyspark_sql().SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    session = build_session(config)
    try:
        yield session
    finally:
        session.stop()
