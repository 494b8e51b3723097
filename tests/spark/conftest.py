"""The Spark tests' session: one local SparkSession per test module, or a skip.

Spark needs Java. Without it these tests skip with the reason, unless
FASHION_RECS_REQUIRE_SPARK is set (CI sets it, `.ci/run` installs Java), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    return shutil.which("java") is not None or bool(home and (Path(home) / "bin/java").exists())


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """A small local session (2 cores, 2 shuffle partitions, no UI) for one test module."""
    if not java_available():
        message = "Spark needs Java 17+ (`java` not on PATH, no JAVA_HOME)"
        if os.environ.get("FASHION_RECS_REQUIRE_SPARK"):
            pytest.fail(message + "; FASHION_RECS_REQUIRE_SPARK is set")
        pytest.skip(message + "; set FASHION_RECS_REQUIRE_SPARK=1 to fail instead")
    from fashion_recs.config import SparkConfig
    from fashion_recs.spark.session import build_session

    session = build_session(
        SparkConfig(
            master="local[2]",
            app_name="fashion-recs-tests",
            conf={
                "spark.sql.shuffle.partitions": "2",
                "spark.default.parallelism": "2",
                "spark.ui.enabled": "false",
                "spark.sql.session.timeZone": "UTC",
                "spark.driver.memory": "1g",
                # Tiny inputs: compiling whole-stage code and re-planning shuffles cost more
                # than they save (the module ran in about half the time without them).
                "spark.sql.codegen.wholeStage": "false",
                "spark.sql.adaptive.enabled": "false",
            },
        )
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
