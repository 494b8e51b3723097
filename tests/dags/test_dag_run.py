"""End to end: the real DAG, run by Airflow (`dag.test()`), on a small synthetic retailer.

Checks the published tables against the generator's planted truth, once on SQLite and once on
the real PostgreSQL server, and that a run whose data fails its threshold publishes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from fashion_recs.artifacts import run_key
from fashion_recs.publish import make_engine
from tests.conftest import SMALL_SPEC as SPEC
from tests.conftest import retailer_overrides as overrides

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
LOGICAL_DATE = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def airflow_db() -> None:
    """A migrated Airflow metadata database in the session's AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags["fashion_recs"]


def run_dag(dag, monkeypatch, connection: dict, conf: dict, logical_date=LOGICAL_DATE):
    monkeypatch.setenv("AIRFLOW_CONN_FASHION_RECS_RESULTS", json.dumps(connection))
    return dag.test(logical_date=logical_date, run_conf={"overrides": conf})


def pg_connection(url: str) -> dict:
    parsed = sa.engine.make_url(url)
    return {
        "conn_type": "postgres",
        "host": parsed.host,
        "port": parsed.port,
        "login": parsed.username,
        "schema": parsed.database,
    }


def check_published(url: str, retailer: Path, data_root: Path) -> None:
    truth = json.loads((retailer / "truth" / "malformed.json").read_text())
    engine = make_engine(url)
    with engine.connect() as conn:
        run = conn.exec_driver_sql("SELECT run_id, summary, metrics FROM current_run").one()
        products = pd.read_sql("SELECT * FROM products", conn)
        popular = pd.read_sql("SELECT * FROM popular_products", conn)
        segments = pd.read_sql("SELECT * FROM user_segments", conn)
        rules = pd.read_sql("SELECT * FROM fbt_rules", conn)
        fbt = pd.read_sql("SELECT * FROM fbt_recommendations", conn)
        similar = pd.read_sql("SELECT * FROM similar_products", conn)
        user_lists = pd.read_sql("SELECT * FROM user_recommendations", conn)
        routes = pd.read_sql("SELECT * FROM user_routes", conn)
        models = pd.read_sql("SELECT * FROM personal_models", conn)
        candidates = pd.read_sql("SELECT * FROM item_candidates", conn)
    engine.dispose()
    summary = json.loads(run.summary)
    stages = summary["stages"]

    # Products: every clean catalogue row is published, every malformed one quarantined.
    catalogue_defects = dict(truth["product_data.csv"])
    catalogue_defects.pop("bad_review_rating")  # a field issue: the product stays
    assert len(products) == SPEC.n_products - sum(catalogue_defects.values())
    assert stages["products"]["reasons"] == catalogue_defects
    true_products = pd.read_parquet(retailer / "truth" / "products.parquet")
    usable = true_products["defect"].isna() | (true_products["defect"] == "bad_review_rating")
    assert set(products["product_id"]) == set(true_products.loc[usable, "product_id"])

    # Events: each injected defect lands in quarantine with the matching reason.
    event_defects: dict[str, int] = {}
    for name, counts in truth.items():
        if name.startswith("events_"):
            for defect, n in counts.items():
                event_defects[defect] = event_defects.get(defect, 0) + n
    reasons = stages["events"]["reasons"]
    assert reasons["bad_timestamp"] == event_defects["bad_timestamp"]
    assert reasons["missing_user_id"] == event_defects["missing_user_id"]
    bad_ids = event_defects["unknown_product_id"] + event_defects["garbage_product_cell"]
    assert reasons["unknown_product_id"] + reasons["no_product_id"] == (
        bad_ids + event_defects["empty_product_cell"]
    )
    assert stages["demographics"]["reasons"] == truth["user_answers.csv"]

    # Popularity: the planted most popular products come out on top.
    planted = pd.read_parquet(retailer / "truth" / "popular.parquet").sort_values("rank")
    overall = popular[popular["segment_type"] == "overall"].sort_values("rank")
    top_planted = set(planted["product_id"].head(10))
    # On this small sample (300 products, 40k events) a random top 20 would hold < 1 of them.
    assert len(top_planted & set(overall["product_id"].head(20))) >= 6
    assert overall["product_id"].iloc[0] in set(planted["product_id"].head(5))
    assert {"age_group", "region", "age_group_region"} <= set(popular["segment_type"])

    # Users: one row per surveyed user, every age group a configured label.
    assert segments["user_id"].is_unique and len(segments) > 0
    metrics = {(m["model"], m["metric"]): m["value"] for m in json.loads(run.metrics)}
    assert metrics[("popularity", "map")] > 0
    assert Path(summary["data_docs"]).is_file()

    # Frequently bought together: the planted bundles come back as rules, every catalogue
    # product has a full list, and the lists beat popularity at completing held-out baskets.
    assert len(rules) > 0 and (rules["lift"] >= 2.0).all()
    assert set(fbt["product_id"]) == set(products["product_id"])
    assert fbt.groupby("product_id").size().eq(12).all()
    assert metrics[("fbt_rules", "bundle_pair_precision")] >= 0.9
    assert metrics[("fbt_rules", "bundle_pair_recall")] >= 0.9
    assert metrics[("fbt", "map")] > metrics[("fbt_popularity", "map")]

    # Similar products: every product has its neighbours; the planted look-alikes are found.
    default = similar[similar["is_default"].astype(bool)]
    assert set(default["product_id"]) == set(products["product_id"])
    assert (default["product_id"] != default["similar_product_id"]).all()
    assert metrics[("text_tfidf", "lookalike_recall")] >= 0.9
    assert metrics[("text_tfidf", "same_department")] > 0.5  # random lists: ~0.1
    assert Path(summary["artifacts"]).is_relative_to(data_root)

    # Personalisation: every model and baseline scored, the gate recorded, one route and one
    # full list per user, and the run says which model serves existing users (or that none
    # passed and popularity does).
    for model in (
        "user_cf_cosine",
        "user_cf_pearson",
        "item_knn",
        "repurchase",
        "two_tower",
        "two_tower_mse",
        "embedding_profile_text_tfidf",
        "blend",
        "ranker",
        "candidates_fixed_order",
        "source_own",
        "popularity",
        "segment_popularity",
    ):
        assert "map" in {m for (name, m) in metrics if name == model}, model
    assert set(models["model"]) >= {"user_cf_cosine", "two_tower", "blend", "ranker"}
    # The served list never scores below the run's best baseline.
    served = models[models["chosen"].astype(bool)]
    assert len(served) == 1
    assert served["value"].item() >= models["baseline_value"].max()
    assert routes["user_id"].is_unique
    assert set(user_lists["user_id"]) == set(routes["user_id"])
    assert set(segments["user_id"]) <= set(routes["user_id"])
    assert user_lists.groupby("user_id").size().eq(12).all()
    personal = summary["personal"]
    chosen = models.loc[models["chosen"].astype(bool), ["model", "role"]]
    assert chosen["model"].tolist() == [personal["existing_users_model"]]
    assert personal["fallback"] == (chosen["role"].item() == "baseline")
    assert set(candidates["source"]) <= {"item_knn", "fbt", "similar"}


def test_dag_run_publishes_to_sqlite_matching_the_planted_truth(
    dag, retailer, tmp_path, monkeypatch
):
    db = tmp_path / "results.db"
    dagrun = run_dag(
        dag,
        monkeypatch,
        {"conn_type": "sqlite", "host": str(db)},
        overrides(retailer, tmp_path / "data"),
    )
    assert dagrun.state == "success"
    check_published(f"sqlite:///{db}", retailer, tmp_path / "data")
    check_report(tmp_path / "data" / "runs" / "demo" / run_key(dagrun.run_id), dag)


def check_report(run_dir: Path, dag) -> None:
    """The last task wrote the run's report: every task with its record, every section."""
    page = (run_dir / "report.html").read_text()
    for section in ("outcome", "tasks", "quarantine", "checks", "models", "fbt", "similar"):
        assert f'<section id="{section}">' in page, section
    assert "badge published" in page and "not published" not in page
    tasks = pd.read_parquet(run_dir / "08_reporting" / "run_tasks.parquet")
    assert set(tasks["task_id"]) == set(dag.task_ids) - {"run_report"}
    assert (tasks["status"] == "success").all() and (tasks["seconds"] >= 0).all()
    clean = tasks.set_index("task_id").loc["clean_products"]
    assert clean["rows_in"] == SPEC.n_products and clean["rows_quarantined"] > 0
    assert page.count('<div class="user">') >= 4  # existing and new users beside their lists
    assert page.count("data:image/png;base64,") >= 4  # charts; thumbnails: tests/browser
    # The ranker's section: every source alone, and the features by importance.
    assert "<h3>The learned ranker</h3>" in page
    assert "candidate source alone" in page and "ui_days_since_last" in page
    assert "gate bar: " in page or "Quality gate" in page


@pytest.mark.postgres
def test_dag_run_publishes_to_postgres(dag, retailer, tmp_path, monkeypatch, postgres_url):
    dagrun = run_dag(
        dag, monkeypatch, pg_connection(postgres_url), overrides(retailer, tmp_path / "data")
    )
    assert dagrun.state == "success"
    check_published(postgres_url, retailer, tmp_path / "data")


def test_failing_stage_fails_the_run_and_publishes_nothing(dag, retailer, tmp_path, monkeypatch):
    db = tmp_path / "results.db"
    conn = {"conn_type": "sqlite", "host": str(db)}
    good = run_dag(dag, monkeypatch, conn, overrides(retailer, tmp_path / "data"))
    assert good.state == "success"
    strict = overrides(
        retailer, tmp_path / "data", quality={"max_reject_rate": {"products": 0.001}}
    )
    failed = run_dag(dag, monkeypatch, conn, strict, logical_date=datetime(2026, 11, 2, tzinfo=UTC))
    assert failed.state == "failed"
    states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
    assert states["clean_products"] == "failed"
    assert states["publish_tables"] != "success"
    assert states["build_data_docs"] == "success"  # the report still renders what ran
    assert states["run_report"] == "failed"  # written, then fails: nothing was published
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as c:
        published = c.exec_driver_sql("SELECT run_id FROM current_run").scalar_one()
        statuses = c.exec_driver_sql("SELECT status FROM runs").scalars().all()
    engine.dispose()
    assert published == good.run_id and statuses == ["published"]

    run_dir = tmp_path / "data" / "runs" / "demo" / run_key(failed.run_id)
    assert (run_dir / "09_quarantine" / "products_quarantine.parquet").is_file()
    assert not (run_dir / "run_summary.json").exists()
    page = (run_dir / "report.html").read_text()
    assert "not published" in page and 'href="#task-clean_products"' in page
    assert "RejectRateExceeded" in page  # the failed task's error, in its row
    tasks = pd.read_parquet(run_dir / "08_reporting" / "run_tasks.parquet").set_index("task_id")
    assert tasks.loc["clean_products", "status"] == "failed"
    assert tasks.loc["publish_tables", "status"] == "not run"


@pytest.mark.postgres
def test_logged_interactions_reach_the_next_run(dag, retailer, tmp_path, monkeypatch, postgres_url):
    """The seed's log_user_interaction: a new shopper's clicks, logged between two runs into
    the results database, are taken in by the next run, which routes the shopper by them."""
    from fashion_recs.interaction_log import log_user_interaction

    connection = pg_connection(postgres_url)
    conf = overrides(retailer, tmp_path / "data", personal={"two_tower": {"enabled": False}})
    first = run_dag(dag, monkeypatch, connection, conf)
    assert first.state == "success"
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        products = conn.exec_driver_sql("SELECT product_id FROM products").scalars().all()
        known = conn.exec_driver_sql("SELECT user_id FROM user_routes").scalars().all()
    assert "shopper-new" not in known
    when = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    log_user_interaction(engine, "shopper-new", products[0], "purchase", event_ts=when)
    log_user_interaction(engine, "shopper-new", "not-in-the-catalogue", "purchase", event_ts=when)
    # A click after the next run's as-of belongs to the run after it.
    later = datetime(2026, 11, 5, tzinfo=UTC)
    log_user_interaction(engine, "shopper-later", products[1], "purchase", event_ts=later)

    second = run_dag(dag, monkeypatch, connection, conf, logical_date=LOGICAL_DATE.replace(day=2))
    assert second.state == "success"
    with engine.connect() as conn:
        route = conn.exec_driver_sql(
            "SELECT route, n_items FROM user_routes WHERE user_id = 'shopper-new'"
        ).one()
        items = pd.read_sql(
            "SELECT * FROM user_recommendations WHERE user_id = 'shopper-new' ORDER BY rank", conn
        )
        later_known = conn.exec_driver_sql(
            "SELECT count(*) FROM user_routes WHERE user_id = 'shopper-later'"
        ).scalar_one()
        summary = json.loads(conn.exec_driver_sql("SELECT summary FROM current_run").scalar_one())
    engine.dispose()
    # One logged purchase makes a known shopper (routing.min_items_for_model: 1), served by
    # the list the gate chose, like every shopper with history.
    assert tuple(route) == ("existing", 1)
    assert len(items) == 12
    assert items["strategy"].iloc[0].split(":")[0] == summary["personal"]["existing_users_model"]
    assert later_known == 0
    assert summary["stages"]["interaction_log"]["rows_in"] == 2
    assert summary["stages"]["interaction_log"]["reasons"] == {"unknown_product_id": 1}


def test_dag_runs_unchanged_on_an_hm_export(dag, tmp_path, monkeypatch):
    """The real-data adapter: the same DAG on a hand-written export in the public H&M schema
    (config/hm_example.yaml) builds all three models, evaluates them and publishes."""
    root = Path(__file__).resolve().parents[2]
    fixture = root / "tests" / "fixtures" / "hm"
    conf = {
        "data_root": str(tmp_path / "data"),
        "as_of": "2020-09-15",
        "sources": {
            "articles": {"uri": str(fixture / "articles.csv")},
            "customers": {"uri": str(fixture / "customers.csv")},
            "transactions": [{"uri": str(fixture / "transactions_train.csv")}],
        },
        # A few hundred baskets: keep pairs seen in at least three of them.
        "fbt": {"mining": {"min_support": 0.005, "min_count": 3}, "lists": {"min_pair_count": 3}},
    }
    db = tmp_path / "hm.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_FASHION_RECS_RESULTS", json.dumps({"conn_type": "sqlite", "host": str(db)})
    )
    dagrun = dag.test(
        logical_date=LOGICAL_DATE,  # the export is a snapshot: as_of (above) is its last day
        run_conf={"config_path": str(root / "config" / "hm_example.yaml"), "overrides": conf},
    )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "success", states
    assert set(states.values()) == {"success"}, states
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        run = conn.exec_driver_sql("SELECT retailer, summary, metrics FROM current_run").one()
        products = pd.read_sql("SELECT product_id FROM products", conn)
        similar = pd.read_sql("SELECT * FROM similar_products", conn)
        fbt = pd.read_sql("SELECT * FROM fbt_recommendations", conn)
        lists = pd.read_sql("SELECT * FROM user_recommendations", conn)
        routes = pd.read_sql("SELECT * FROM user_routes", conn)
    engine.dispose()
    assert run.retailer == "hm"
    assert products["product_id"].str.fullmatch(r"[0-9]{10}").all()  # leading zeros kept
    assert set(similar["product_id"]) == set(products["product_id"])
    assert set(fbt["product_id"]) == set(products["product_id"])
    assert routes["user_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert set(lists["user_id"]) == set(routes["user_id"])
    models = {m["model"] for m in json.loads(run.metrics)}
    assert {"popularity", "user_cf_cosine", "two_tower", "blend", "fbt", "text_tfidf"} <= models
    summary = json.loads(run.summary)
    assert summary["stages"]["events"]["rows_in"] > 0
