"""DAG integrity: every DAG imports cleanly, is tagged, retries, and keeps its top level light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
HEAVY = ("pandas", "polars", "pyarrow", "torch", "transformers", "sklearn", "great_expectations")
EXPECTED_TASKS = {
    "download_files",
    "clean_products",
    "check_products",
    "filter_events",
    "check_events",
    "preprocess_demographics",
    "check_users",
    "map_interactions",
    "check_interactions",
    "popular_items",
    "check_popular",
    "evaluate_baselines",
    "build_baskets",
    "check_baskets",
    "mine_fbt_rules",
    "crosscheck_apriori_fpgrowth",
    "fbt_recommendations",
    "check_fbt",
    "evaluate_fbt",
    "similar_products_text",
    "similar_products_encoders",
    "check_similar",
    "ingest_interaction_log",
    "personal_baselines",
    "user_cf",
    "embedding_profiles",
    "two_tower",
    "ranker",
    "als",
    "blend",
    "quality_gate",
    "route_users",
    "check_personal",
    "build_data_docs",
    "publish_tables",
    "run_report",
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "fashion_recs" in dagbag.dags


def test_every_dag_is_tagged_and_retries(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries {task.retries}"


def test_tasks_are_the_seed_stages_in_order(dagbag) -> None:
    dag = dagbag.dags["fashion_recs"]
    assert set(dag.task_ids) == EXPECTED_TASKS
    upstream = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    assert upstream["download_files"] == set()
    assert {"clean_products", "check_products", "download_files"} <= upstream["filter_events"]
    assert {"check_events", "filter_events", "ingest_interaction_log"} <= upstream[
        "map_interactions"
    ]
    assert upstream["ingest_interaction_log"] == {"clean_products"}
    # Look-alikes learn their attribute weights from the run's similar-item clicks.
    assert {"clean_products", "map_interactions", "check_interactions"} <= upstream[
        "similar_products_text"
    ]
    assert upstream["publish_tables"] >= {
        "build_data_docs",
        "evaluate_baselines",
        "check_products",
        "check_events",
        "check_users",
        "check_interactions",
        "check_popular",
        "check_baskets",
        "check_fbt",
        "evaluate_fbt",
        "crosscheck_apriori_fpgrowth",
        "check_similar",
        "check_personal",
    }
    models = ("personal_baselines", "user_cf", "embedding_profiles", "two_tower", "ranker", "als")
    for model in models:
        assert {"map_interactions", "check_interactions", "check_similar"} <= upstream[model]
    assert set(models) <= upstream["blend"]
    assert {"evaluate_baselines", "check_popular"} <= upstream["blend"]
    assert upstream["quality_gate"] == {"blend"}
    assert {"quality_gate", "check_fbt", "map_interactions"} <= upstream["route_users"]
    assert {"map_interactions", "check_interactions"} <= upstream["build_baskets"]
    assert {"build_baskets", "check_baskets"} <= upstream["mine_fbt_rules"]
    assert {"mine_fbt_rules", "build_baskets", "clean_products"} <= upstream["fbt_recommendations"]
    # The report is last, waits for every task and runs after failures too.
    assert upstream["run_report"] == EXPECTED_TASKS - {"run_report"}
    assert dag.get_task("run_report").trigger_rule == "all_done"
    assert dag.tasks[0].dag.params["overrides"] == {}


def test_dag_file_imports_no_heavy_library_at_top_level() -> None:
    """Parsing the DAG (every few seconds in the dag-processor) must not pull in pandas & co."""
    probe = (
        "import sys, importlib.util\n"
        "import airflow.sdk\n"
        "before = set(sys.modules)\n"
        f"path = {str(DAGS_DIR / 'fashion_recs_daily.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('d', path)\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_dag_file_shadows_the_library() -> None:
    """Airflow puts dags/ on sys.path: a `fashion_recs.py` there would hide the package."""
    shadowing = {p.stem for p in DAGS_DIR.glob("*.py")} & {"fashion_recs", "include"}
    assert shadowing == set()


def test_tasks_import_the_library_from_a_fresh_process() -> None:
    """What a worker does: dags/ first on sys.path, then the task imports the pipeline."""
    probe = (
        "import sys\n"
        f"sys.path.insert(0, {str(DAGS_DIR)!r})\n"
        "import fashion_recs.pipeline, fashion_recs.stages.events\n"
        "print(fashion_recs.pipeline.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "fashion_recs.pipeline"
