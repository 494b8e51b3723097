"""
### fashion_recs: a retailer's raw exports to published recommendation tables

Daily. Each task calls one step of `fashion_recs.pipeline` and passes on only paths and counts:

* **download_files** – fetch/fingerprint `product_data.csv`, `events*.csv`, `user_answers.csv`
* **clean_products** – ObjectId → hex, price periods → current/original price, attributes
* **filter_events** – chunked regex id extraction, explode, events/buttons of interest
* **preprocess_demographics** – birth dates → ages and groups, imputation, city/region fill
* **ingest_interaction_log** – interactions logged in the results database since the last run
  (the seed's `log_user_interaction`), up to the run's as-of time
* **map_interactions** – (event, button) → category and weight, user × product aggregate
* **popular_items** – time-decayed popularity overall and per age group × region
* **evaluate_baselines** – temporal hold-out metrics of the popularity baselines
* **build_baskets** – sessions (or days, or orders) of interactions → baskets
* **mine_fbt_rules** – frequent itemsets and association rules (support, confidence, lift)
* **crosscheck_apriori_fpgrowth** – the seed's mlxtend Apriori and FP-Growth on a sample,
  held identical to the production engine
* **fbt_recommendations** – every product's complementary list, with labelled fallbacks
* **evaluate_fbt** – planted-bundle recovery and held-out basket completion vs popularity
* **similar_products_text** – the seed's TF-IDF + one-hot model (attribute blocks weighted
  apart, weights learned from similar-item clicks when the run has enough): neighbours of
  every product, recall against exact search, look-alike precision, consistency on every
  attribute, robustness to noised text
* **similar_products_encoders** – the seed's encoders (MobileNetV2, CLIP, FashionCLIP, ALIGN,
  RoBERTa + EfficientNet) whose weights are available, through the embedding cache, and the
  fused TF-IDF + MobileNet model; skipped encoders are listed with the reason
* **personal_baselines** – repurchase (the user's own recent items) and item-kNN, scored on
  the hold-out beside popularity; item-kNN's per-product lists for new shoppers
* **user_cf** – the seed's user-based CF, cosine and Pearson, neighbours found sparsely in blocks
* **embedding_profiles** – users as weighted means of item vectors (TF-IDF, or an encoder's)
* **two_tower** – user and item towers in torch, sampled softmax with popularity correction
  (the seed's MSE trained beside it for comparison), early stopping on a temporal validation
* **ranker** – candidates from every source (own items, colour variants, item-kNN, user-CF,
  same-day complements, look-alikes, segment popularity, trending), features from the history
  before each window, LightGBM learning-to-rank on rolling label windows; refit on the
  newest windows for the published lists
* **blend** – recent items → their look-alikes → the best model → segment popularity
* **quality_gate** – every model against the run's best baseline (repurchase, popularity,
  segment popularity, item-kNN) times 1 + margin; the best that passes serves existing users,
  else that baseline does, and the run says so
* **route_users** – the seed's routing materialised: existing users, new users with events,
  new users with nothing → `user_recommendations`, `user_routes`, `item_candidates`
* **check_*** – Great Expectations suites between stages; **build_data_docs** renders them
* **publish_tables** – atomic switch of the results database's stable views to this run
* **run_report** – the run's HTML report (`report.html` in the run directory, and in the
  Airflow UI under *Fashion recs reports* and each run's *Run report* tab): tasks with row
  counts and timings, quarantine samples, checks, model metrics vs baselines, examples; runs
  after failures too, and fails the run when nothing was published

Bad rows are quarantined under `<data_root>/runs/<retailer>/<run>/09_quarantine/`; a stage
whose reject rate passes `quality.max_reject_rate` fails without retries, naming the file,
column and reason. Params: `config_path` (YAML) and `overrides` (nested keys of the config).

Stages the config puts on Spark (`engine: spark`, or per stage in `engines`) run on the master
of the `spark_default` connection when it is defined (its `spark.*` extras as session conf),
else on the config's `spark.master` (default `local[*]`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

DEFAULT_CONFIG = os.environ.get("FASHION_RECS_CONFIG", "")
RESULTS = Asset("fashion_recs://results/recommendation_tables")
# The Spark provider's default connection: where `engine: spark` stages find their cluster.
SPARK_CONN_ID = "spark_default"


def _context() -> Any:
    """The run's `fashion_recs.pipeline.RunContext`, from the Airflow run and its params."""
    from fashion_recs.pipeline import make_context
    from fashion_recs.run_lock import airflow_owner

    ctx = get_current_context()
    params = ctx["params"]
    dag_run = ctx["dag_run"]
    when = ctx.get("logical_date") or dag_run.run_after
    run = make_context(
        run_id=dag_run.run_id,
        logical_date=when.date(),
        config_path=params.get("config_path") or None,
        overrides=params.get("overrides") or None,
        # Tasks, retries and reruns of this DAG run share its run directory; another run with
        # the same run id fails at once.
        owner=airflow_owner(ctx["dag"].dag_id, dag_run.run_id),
    )
    return _with_spark_connection(run)


@contextmanager
def _bad_data_fails_at_once() -> Iterator[None]:
    """Bad data fails the task at once, without retries (retrying cannot fix data); an
    unreachable database is left to the task's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from fashion_recs.errors import FashionRecsError

    try:
        yield
    except FashionRecsError as exc:
        if getattr(exc, "retryable", False):  # a database that is down may come back
            raise
        raise AirflowFailException(str(exc)) from None


def _step(name: str, *args: Any) -> dict[str, Any]:
    """Run a pipeline step as this task; the step's record (status, timing, counts) is kept
    for the run report.

    A callable argument is called with the run's config first (one config load per task).
    """
    from fashion_recs import pipeline

    ti = get_current_context()["ti"]
    with _bad_data_fails_at_once():
        ctx = _context()
        resolved = [a(ctx.config) if callable(a) else a for a in args]
        return pipeline.run_step(ctx, ti.task_id, name, *resolved, try_number=ti.try_number)


def _results_url(config: Any) -> str:
    """The results database from the Airflow Connection, else the config's default URL."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from fashion_recs.publish import connection_url, default_results_url

    try:
        conn = Connection.get(config.publish.conn_id)
    except AirflowNotFoundException:
        return default_results_url(config.publish.default_url, config.base_dir)
    return connection_url(
        conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema
    )


def spark_master(conn_type: str, host: str | None, port: int | None) -> str | None:
    """The Spark master URL a connection names, read the way the Spark provider's
    `SparkSubmitHook` reads `spark_default`, so one connection serves both.

    A URI such as `spark://spark-master:7077` arrives as type `spark`, host `spark-master`,
    port 7077; a connection made in the UI may hold the whole URL (`spark://spark-master`,
    `yarn`, `local[4]`) in its host, with the port apart. None when the connection names no
    host: it then only carries conf, and the config's master stands.
    """
    if not host:
        return None
    if conn_type == "spark" and ("://" in host or not port):
        master = host
    else:
        master = f"{conn_type}://{host}"
    return f"{master}:{port}" if port else master


def spark_conf(extra: dict[str, Any]) -> dict[str, str]:
    """The Spark properties among a connection's extras (`spark.executor.memory`, ...).

    The provider's other extras (`deploy-mode`, `queue`, `spark-binary`, `keytab`, ...) are
    spark-submit options, not session properties, so they are left out; values become the
    strings Spark expects (`true`, not Python's `True`).
    """
    conf: dict[str, str] = {}
    for key, value in extra.items():
        if key.startswith("spark."):
            conf[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return conf


def _with_spark_connection(ctx: Any) -> Any:
    """The run context with `spark.master` / `spark.conf` taken from the `spark_default`
    Airflow connection, when the run's config puts a stage on Spark and the connection exists.

    This is how a deployment points the pipeline at a cluster without touching the retailer's
    config (docker-compose.yaml sets AIRFLOW_CONN_SPARK_DEFAULT to its master). The library
    never sees Airflow: it gets an ordinary `SparkConfig`. The connection's master replaces
    the config's, its `spark.*` extras override the config's conf key by key; with no
    connection the config's own `spark:` section (default `local[*]`) stands. Runs with every
    stage local never look the connection up.
    """
    import dataclasses
    import logging

    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from fashion_recs.config import SPARK_STAGES, SparkConfig

    config = ctx.config
    if all(config.engine_for(stage) == "local" for stage in SPARK_STAGES):
        return ctx
    try:
        conn = Connection.get(SPARK_CONN_ID)
    except AirflowNotFoundException:
        return ctx
    master = spark_master(conn.conn_type, conn.host, conn.port) or config.spark.master
    conf = {**config.spark.conf, **spark_conf(conn.extra_dejson)}
    spark = SparkConfig.model_validate(
        {**config.spark.model_dump(), "master": master, "conf": conf}
    )
    logging.getLogger(__name__).info(
        "Spark master %s from the %s connection (config: %s)",
        master,
        SPARK_CONN_ID,
        config.spark.master,
    )
    return dataclasses.replace(ctx, config=config.model_copy(update={"spark": spark}))


@dag(
    dag_id="fashion_recs",
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    tags=["fashion-recs", "recommendations"],
    doc_md=__doc__,
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
    },
    params={
        "config_path": Param(DEFAULT_CONFIG, type="string", description="Retailer config YAML"),
        "overrides": Param({}, type="object", description="Nested config keys for this run"),
    },
)
def fashion_recs() -> None:
    @task
    def download_files() -> dict:
        return _step("download")

    @task
    def clean_products(download: dict) -> dict:
        return _step("products", download)

    @task
    def check_products(products: dict) -> dict:
        return _step("check", "products", {"products": products["counts"]["rows_in"]})

    @task
    def filter_events(download: dict, products: dict) -> dict:
        return _step("events", download, products)

    @task
    def check_events(events: dict) -> dict:
        return _step("check", "events")

    @task
    def preprocess_demographics(download: dict) -> dict:
        return _step("demographics", download)

    @task
    def check_users(demographics: dict) -> dict:
        return _step("check", "users")

    @task
    def ingest_interaction_log(products: dict) -> dict:
        return _step("ingest_interaction_log", _results_url, products)

    @task
    def map_interactions(events: dict, logged: dict) -> dict:
        return _step("interactions", events, logged)

    @task
    def check_interactions(interactions: dict) -> dict:
        rows = interactions["counts"]["rows_in"]
        return _step("check", "interactions", {"interactions": rows, "user_items": rows})

    @task
    def popular_items(interactions: dict, demographics: dict) -> dict:
        return _step("popular", interactions, demographics)

    @task
    def check_popular(popular: dict) -> dict:
        return _step("check", "popular")

    @task
    def evaluate_baselines(interactions: dict, demographics: dict, products: dict) -> dict:
        return _step("evaluate", interactions, demographics, products)

    @task
    def build_baskets(interactions: dict, products: dict) -> dict:
        return _step("baskets", interactions, products)

    @task
    def check_baskets(baskets: dict) -> dict:
        return _step("check", "baskets", {"baskets": baskets["stats"]["rows_in"]})

    @task
    def mine_fbt_rules(baskets: dict) -> dict:
        return _step("fbt_rules", baskets)

    @task
    def crosscheck_apriori_fpgrowth(baskets: dict) -> dict:
        return _step("fbt_crosscheck", baskets)

    @task
    def fbt_recommendations(rules: dict, baskets: dict, products: dict) -> dict:
        return _step("fbt_recommendations", rules, baskets, products)

    @task
    def check_fbt(lists: dict) -> dict:
        return _step("check", "fbt")

    @task
    def evaluate_fbt(rules: dict, baskets: dict, products: dict) -> dict:
        return _step("fbt_evaluate", rules, baskets, products)

    @task
    def similar_products_text(products: dict, interactions: dict) -> dict:
        return _step("similar_text", products, interactions)

    @task
    def similar_products_encoders(download: dict, products: dict) -> dict:
        return _step("similar_encoders", download, products)

    @task
    def check_similar(text: dict, encoders: dict) -> dict:
        return _step("check", "similar")

    @task
    def personal_baselines(interactions: dict) -> dict:
        return _step("personal_model", "personal_baselines", interactions)

    @task
    def user_cf(interactions: dict) -> dict:
        return _step("personal_model", "user_cf", interactions)

    @task
    def embedding_profiles(interactions: dict) -> dict:
        return _step("personal_model", "embedding_profiles", interactions)

    @task
    def two_tower(interactions: dict) -> dict:
        return _step("personal_model", "two_tower", interactions)

    @task
    def ranker(interactions: dict) -> dict:
        return _step("personal_model", "ranker", interactions)

    @task
    def als(interactions: dict) -> dict:
        # MLlib ALS: on the local engine the step records itself as skipped and returns at
        # once (the DAG is parsed before a run's config is known, so the task always exists).
        return _step("personal_model", "als", interactions)

    @task
    def blend(interactions: dict) -> dict:
        return _step("personal_model", "blend", interactions)

    @task
    def quality_gate() -> dict:
        return _step("quality_gate")

    @task
    def route_users(interactions: dict, gate: dict) -> dict:
        return _step("route_users", interactions, gate)

    @task
    def check_personal(routes: dict) -> dict:
        return _step("check", "personal")

    @task(trigger_rule="all_done")
    def build_data_docs() -> dict:
        return _step("quality_report")

    @task(outlets=[RESULTS])
    def publish_tables() -> dict:
        return _step("publish", _results_url)

    @task(trigger_rule="all_done")
    def run_report() -> dict:
        from fashion_recs import pipeline

        task_ids = [t for t in get_current_context()["dag"].task_ids if t != "run_report"]
        with _bad_data_fails_at_once():
            return pipeline.run_report(_context(), task_ids)

    download = download_files()
    products = clean_products(download)
    products_ok = check_products(products)
    events = filter_events(download, products)
    products_ok >> events
    events_ok = check_events(events)
    demographics = preprocess_demographics(download)
    users_ok = check_users(demographics)
    logged = ingest_interaction_log(products)
    interactions = map_interactions(events, logged)
    events_ok >> interactions
    interactions_ok = check_interactions(interactions)
    popular = popular_items(interactions, demographics)
    [users_ok, interactions_ok] >> popular
    popular_ok = check_popular(popular)
    metrics = evaluate_baselines(interactions, demographics, products)
    interactions_ok >> metrics
    baskets = build_baskets(interactions, products)
    interactions_ok >> baskets
    baskets_ok = check_baskets(baskets)
    rules = mine_fbt_rules(baskets)
    baskets_ok >> rules
    crosscheck = crosscheck_apriori_fpgrowth(baskets)
    baskets_ok >> crosscheck
    lists = fbt_recommendations(rules, baskets, products)
    fbt_ok = check_fbt(lists)
    fbt_metrics = evaluate_fbt(rules, baskets, products)
    similar = similar_products_text(products, interactions)
    [products_ok, interactions_ok] >> similar
    encoders = similar_products_encoders(download, products)
    products_ok >> encoders
    similar_ok = check_similar(similar, encoders)
    models = [
        personal_baselines(interactions),
        user_cf(interactions),
        embedding_profiles(interactions),
        two_tower(interactions),
        ranker(interactions),
        als(interactions),
    ]
    for model in models:
        [interactions_ok, users_ok, similar_ok] >> model
    blended = blend(interactions)
    [*models, metrics, popular_ok] >> blended
    gate = quality_gate()
    blended >> gate
    routes = route_users(interactions, gate)
    fbt_ok >> routes
    personal_ok = check_personal(routes)
    checks = [
        products_ok,
        events_ok,
        users_ok,
        interactions_ok,
        popular_ok,
        baskets_ok,
        fbt_ok,
        similar_ok,
        personal_ok,
    ]
    docs = build_data_docs()
    checks >> docs
    published = publish_tables()
    [docs, metrics, fbt_metrics, crosscheck, *checks] >> published
    # The report waits for every other task, so it shows the whole run even after a failure.
    report = run_report().operator
    for other in report.dag.tasks:
        if other is not report:
            other >> report


fashion_recs()
