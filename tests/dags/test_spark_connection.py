"""The DAG's `spark_default` connection → the library's SparkConfig.

A deployment points the Spark stages at a cluster through Airflow's connection (the Spark
provider's own `spark_default`), not through the retailer's config; the library never sees
Airflow, only the `SparkConfig` the DAG hands it. These check that hand-over on its own (no
Spark, no Java): the connection's master and `spark.*` extras when it is defined, the config's
`spark:` section when it is not, and no lookup at all when every stage is local. The whole DAG
on Spark with the connection set is tests/dags/test_dag_spark.py.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fashion_recs.pipeline import RunContext, make_context

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "fashion_recs_daily.py"
CONN_VAR = "AIRFLOW_CONN_SPARK_DEFAULT"


@pytest.fixture(scope="module")
def dag_module() -> ModuleType:
    """dags/fashion_recs_daily.py as a module (dags/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fashion_recs_daily_under_test", DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_context(tmp_path: Path, **overrides: Any) -> RunContext:
    config = {"data_root": str(tmp_path / "data"), "spark": {"master": "local[3]"}, **overrides}
    return make_context("manual__test", date(2026, 11, 1), None, config)


@pytest.mark.parametrize(
    ("conn_type", "host", "port", "master"),
    [
        # AIRFLOW_CONN_SPARK_DEFAULT=spark://spark-master:7077 (docker-compose.yaml)
        ("spark", "spark-master", 7077, "spark://spark-master:7077"),
        # Made in the UI: the URL in the host, the port apart.
        ("spark", "spark://spark-master", 7077, "spark://spark-master:7077"),
        ("spark", "local[4]", None, "local[4]"),
        ("spark", "yarn", None, "yarn"),
        ("spark", "k8s://https://kube.example:6443", None, "k8s://https://kube.example:6443"),
        # A connection that only carries conf leaves the master to the config.
        ("spark", None, None, None),
        ("spark", "", 7077, None),
    ],
)
def test_master_is_read_like_the_spark_provider_reads_it(
    dag_module: ModuleType, conn_type: str, host: str | None, port: int | None, master: str | None
) -> None:
    assert dag_module.spark_master(conn_type, host, port) == master


def test_only_spark_properties_of_the_extras_become_session_conf(dag_module: ModuleType) -> None:
    extra = {
        "spark.executor.memory": "4g",
        "spark.executor.cores": 2,
        "spark.dynamicAllocation.enabled": True,
        "deploy-mode": "client",
        "queue": "root.default",
        "spark-binary": "spark-submit",
    }
    assert dag_module.spark_conf(extra) == {
        "spark.executor.memory": "4g",
        "spark.executor.cores": "2",
        "spark.dynamicAllocation.enabled": "true",
    }


def test_the_connection_overrides_the_configs_master_and_conf(
    dag_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        CONN_VAR, "spark://spark-master:7077?spark.executor.memory=4g&deploy-mode=client"
    )
    ctx = run_context(tmp_path, engines={"fbt_rules": "spark"})
    spark = dag_module._with_spark_connection(ctx).config.spark
    assert spark.master == "spark://spark-master:7077"
    assert spark.conf == {**ctx.config.spark.conf, "spark.executor.memory": "4g"}
    assert spark.app_name == ctx.config.spark.app_name
    # Nothing else of the run changes.
    handed = dag_module._with_spark_connection(ctx)
    assert handed.paths == ctx.paths and handed.as_of == ctx.as_of
    assert handed.config.model_dump(exclude={"spark"}) == ctx.config.model_dump(exclude={"spark"})


def test_a_connection_made_in_the_ui_with_conf_only_keeps_the_configs_master(
    dag_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        CONN_VAR,
        json.dumps({"conn_type": "spark", "extra": {"spark.sql.shuffle.partitions": "64"}}),
    )
    spark = dag_module._with_spark_connection(run_context(tmp_path, engine="spark")).config.spark
    assert spark.master == "local[3]"
    assert spark.conf["spark.sql.shuffle.partitions"] == "64"


def test_without_the_connection_the_configs_spark_section_stands(
    dag_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONN_VAR, raising=False)
    ctx = run_context(tmp_path, engine="spark")
    assert dag_module._with_spark_connection(ctx) is ctx
    assert ctx.config.spark.master == "local[3]"
    default = make_context("manual__test", date(2026, 11, 1), None, {"engine": "spark"})
    assert dag_module._with_spark_connection(default).config.spark.master == "local[*]"


def test_an_all_local_run_never_looks_the_connection_up(
    dag_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection that could not even be parsed: looking it up would raise.
    monkeypatch.setenv(CONN_VAR, "{not json")
    ctx = run_context(tmp_path)
    assert dag_module._with_spark_connection(ctx) is ctx
