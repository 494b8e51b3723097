"""End to end on Spark: the real DAG, run by Airflow (`dag.test()`), with `engine: spark`.

The issue's promise is that the engine changes where the heavy stages run and nothing that
readers see: so the whole DAG runs twice on the small synthetic retailer, once with every stage
local and once with every stage that has a Spark implementation on Spark (local mode), and the
two results databases must hold the same published tables, row for row (floats to 1e-9).

The Spark run takes its master from Airflow's `spark_default` connection (set in the
environment, as docker-compose.yaml does), so it also shows the DAG handing the connection's
master and `spark.*` extras to the library; the connection's pieces themselves are checked in
tests/dags/test_spark_connection.py.

Spark needs Java: without it this skips with the reason, unless FASHION_RECS_REQUIRE_SPARK is set
(CI), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from fashion_recs.config import SPARK_STAGES
from fashion_recs.publish import CURRENT_RUN_VIEW, make_engine
from tests.conftest import retailer_overrides
from tests.spark.conftest import java_available

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
AS_OF = "2026-11-01"
# The Spark run is a second DAG run in the same Airflow database: another logical date, the
# same as-of day (the config's `as_of` wins over the logical date), so both see the same data.
LOCAL_DATE = datetime(2026, 11, 1, tzinfo=UTC)
SPARK_DATE = datetime(2026, 11, 2, tzinfo=UTC)
# What the `spark_default` connection hands the Spark run: a small local master and two
# properties; `deploy-mode` is a spark-submit option the DAG must leave out of the session.
SPARK_CONNECTION = {
    "conn_type": "spark",
    "host": "local[2]",
    "extra": {
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        # Tiny inputs: compiling whole-stage code and re-planning shuffles cost more than they
        # save (as in tests/spark/conftest.py).
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.adaptive.enabled": "false",
        "deploy-mode": "client",
    },
}
# The one published column that names the engine that made it (the local miner is `sparse`,
# Spark's is `spark_fpgrowth`); every other value must be the same.
ENGINE_COLUMNS = {"fbt_rules": "engine"}


@pytest.fixture(scope="module")
def dag() -> Any:
    """The `fashion_recs` DAG from dags/, with a migrated Airflow metadata database."""
    if not java_available():
        message = "Spark needs Java 17+ (`java` not on PATH, no JAVA_HOME)"
        if os.environ.get("FASHION_RECS_REQUIRE_SPARK"):
            pytest.fail(message + "; FASHION_RECS_REQUIRE_SPARK is set")
        pytest.skip(message + "; set FASHION_RECS_REQUIRE_SPARK=1 to fail instead")
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags["fashion_recs"]


def published(db: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Every table readers see (the stable views), by name, and the live run's summary."""
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            names = sorted(set(sa.inspect(conn).get_view_names()) - {CURRENT_RUN_VIEW})
            tables = {name: pd.read_sql(f'SELECT * FROM "{name}"', conn) for name in names}
            summary = conn.exec_driver_sql(f"SELECT summary FROM {CURRENT_RUN_VIEW}").scalar_one()
    finally:
        engine.dispose()
    return tables, json.loads(summary)


def stage_counts(run: dict[str, Any]) -> dict[str, Any]:
    """The run's per-stage accounting, with paths into its own run directory made relative."""
    return json.loads(json.dumps(run["stages"]).replace(run["artifacts"], "<run>"))


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in one order whatever order a stage wrote them in: sorted by every column, the
    exact ones first, so that floats equal to 1e-9 cannot reorder rows."""
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    keys = [c for c in frame.columns if c not in floats] + floats
    return frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def test_spark_engine_publishes_the_same_tables_as_the_local_engine(
    dag, retailer, tmp_path, monkeypatch
) -> None:
    from fashion_recs.spark import session

    masters: list[dict[str, Any]] = []
    build_session = session.build_session

    def recording(config: Any) -> Any:
        masters.append({"master": config.master, "conf": dict(config.conf)})
        return build_session(config)

    monkeypatch.setattr(session, "build_session", recording)

    def run(name: str, logical_date: datetime, **extra: Any) -> tuple[Any, Path]:
        db = tmp_path / f"{name}.db"
        conf = retailer_overrides(retailer, tmp_path / name, as_of=AS_OF, **extra)
        monkeypatch.setenv(
            "AIRFLOW_CONN_FASHION_RECS_RESULTS",
            json.dumps({"conn_type": "sqlite", "host": str(db)}),
        )
        dagrun = dag.test(logical_date=logical_date, run_conf={"overrides": conf})
        states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
        assert dagrun.state == "success", (name, states)
        return dagrun, db

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps(SPARK_CONNECTION))
    _, local_db = run("local", LOCAL_DATE)
    # A run whose stages are all local never builds a session, connection or not.
    assert masters == []
    _, spark_db = run("spark", SPARK_DATE, engine="spark")

    # Each stage with a Spark implementation ran in its task on a session built from the
    # connection: its master, its `spark.*` extras over the config's conf, nothing else.
    assert len(masters) >= len(SPARK_STAGES)
    for seen in masters:
        assert seen["master"] == "local[2]"
        assert seen["conf"]["spark.sql.shuffle.partitions"] == "2"
        assert seen["conf"]["spark.sql.session.timeZone"] == "UTC"  # the config's, kept
        assert "deploy-mode" not in seen["conf"]

    (local, local_run), (spark, spark_run) = published(local_db), published(spark_db)
    # Every stage's row accounting, quarantine reasons and counts included, is the same.
    assert stage_counts(spark_run) == stage_counts(local_run)
    assert local_run["stages"]["events"]["rows_quarantined"] > 0
    assert set(spark) == set(local)
    assert {"products", "popular_products", "fbt_rules", "user_recommendations"} <= set(local)
    for name, column in ENGINE_COLUMNS.items():
        assert set(local[name][column]) == {"sparse"}
        assert set(spark[name][column]) == {"spark_fpgrowth"}
        local[name], spark[name] = (
            local[name].drop(columns=column),
            spark[name].drop(columns=column),
        )
    for name in sorted(local):
        assert len(local[name]) > 0, name
        pd.testing.assert_frame_equal(
            canonical(spark[name]),
            canonical(local[name]),
            check_exact=False,
            rtol=1e-9,
            atol=0.0,
            obj=name,
        )
