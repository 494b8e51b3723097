"""The catalog: every artifact the pipeline writes, named once, with its layer and schema.

Stages write through these schemas (explicit pyarrow types, never inferred), so a column that
changes type is a loud error at write time, not a surprise three tasks later. The layer
prefixes follow kedro's convention: 02_intermediate for parsed raw data, 03_primary for
clean domain tables, 06_models for model outputs, 08_reporting for metrics and checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Artifact:
    """A named Parquet artifact inside a run directory."""

    name: str
    layer: str
    schema: pa.Schema | None

    @property
    def relpath(self) -> str:
        return f"{self.layer}/{self.name}.parquet"


TS = pa.timestamp("us", tz="UTC")

# What a clean product id looks like in each source format: the seed retailer's ObjectIds
# (24 hex digits) and H&M's article ids (10 digits, leading zero kept).
PRODUCT_ID_PATTERNS = {"seed": r"^[0-9a-f]{24}$", "hm": r"^[0-9]{10}$"}

PRODUCTS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("target_audience", pa.string()),
        pa.field("department", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("original_price", pa.float64()),
        pa.field("is_discounted", pa.bool_()),
        pa.field("discount_pct", pa.float64()),
        pa.field("retailer_product_id", pa.string()),
        pa.field("sku", pa.string()),
        pa.field("product_url", pa.string()),
        pa.field("review_rating", pa.float64()),
        pa.field("review_count", pa.int64()),
        pa.field("color", pa.string()),
        # The design a product is a variant of (colour variants share it); a product with no
        # group in its source is a group of its own (its product_id). config products.group_key.
        pa.field("group_key", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.string())),
        pa.field("measurements", pa.string()),
        pa.field("availability", pa.string()),
        pa.field("care_instructions", pa.string()),
        pa.field("original_description", pa.string()),
    ]
)

PRICE_HISTORY_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("period", pa.int32(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("original", pa.bool_()),
        pa.field("valid_from", pa.date32()),
        pa.field("valid_to", pa.date32()),
        pa.field("is_current", pa.bool_()),
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_name", pa.string(), nullable=False),
        pa.field("button_name", pa.string()),
        pa.field("event_ts", TS, nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        # Which raw product column the id came from: the seed's product_id_cleaned / ..2.
        pa.field("product_slot", pa.string(), nullable=False),
    ]
)

EVENT_PRODUCT_IDS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("n_events", pa.int64(), nullable=False),
        pa.field("in_catalogue", pa.bool_(), nullable=False),
    ]
)

USERS_BASE_FIELDS = [
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("birth_date", pa.date32()),
    pa.field("age", pa.float64()),
    # answer | user_fill | regression: how the age was obtained (seed's Model 3 preprocessing).
    pa.field("age_source", pa.string(), nullable=False),
    pa.field("age_group", pa.string(), nullable=False),
    pa.field("city", pa.string(), nullable=False),
    pa.field("region", pa.string(), nullable=False),
    # reported | user_fill | city_region_map | unknown
    pa.field("location_source", pa.string(), nullable=False),
]


def users_schema(extra_columns: list[str]) -> pa.Schema:
    """Users carry the configured extra demographic answers as strings after the base fields."""
    return pa.schema(USERS_BASE_FIELDS + [pa.field(c, pa.string()) for c in extra_columns])


INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("event_ts", TS, nullable=False),
        pa.field("event_name", pa.string(), nullable=False),
        pa.field("button_name", pa.string()),
        pa.field("category", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)

USER_ITEMS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("n_events", pa.int64(), nullable=False),
        pa.field("weight_sum", pa.float64(), nullable=False),
        pa.field("decayed_weight", pa.float64(), nullable=False),
        pa.field("strongest_category", pa.string(), nullable=False),
        pa.field("first_ts", TS, nullable=False),
        pa.field("last_ts", TS, nullable=False),
    ]
)

POPULAR_SCHEMA = pa.schema(
    [
        # overall | age_group | region | age_group_region
        pa.field("segment_type", pa.string(), nullable=False),
        pa.field("age_group", pa.string()),
        pa.field("region", pa.string()),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("n_users", pa.int64(), nullable=False),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("k", pa.int32()),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("n_users", pa.int64(), nullable=False),
    ]
)

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("local_path", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("fetched", pa.bool_(), nullable=False),
    ]
)

BASKETS_SCHEMA = pa.schema(
    [
        pa.field("basket_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("basket_start", TS, nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("first_category", pa.string(), nullable=False),
    ]
)

FBT_RULES_SCHEMA = pa.schema(
    [
        pa.field("antecedent", pa.string(), nullable=False),
        pa.field("consequent", pa.string(), nullable=False),
        pa.field("antecedent_len", pa.int32(), nullable=False),
        pa.field("consequent_len", pa.int32(), nullable=False),
        pa.field("n_antecedent", pa.int64(), nullable=False),
        pa.field("n_consequent", pa.int64(), nullable=False),
        pa.field("n_both", pa.int64(), nullable=False),
        pa.field("n_baskets", pa.int64(), nullable=False),
        pa.field("antecedent_support", pa.float64(), nullable=False),
        pa.field("consequent_support", pa.float64(), nullable=False),
        pa.field("support", pa.float64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("lift", pa.float64(), nullable=False),
        pa.field("leverage", pa.float64(), nullable=False),
        # Infinite when confidence is 1 (the rule never fails): stored as null.
        pa.field("conviction", pa.float64()),
        pa.field("engine", pa.string(), nullable=False),
    ]
)

FBT_RECOMMENDATIONS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("recommended_product_id", pa.string(), nullable=False),
        # Confidence shrunk toward popularity (fbt.recommend); plain popularity lists: the
        # share of baskets holding the product.
        pa.field("score", pa.float64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("support", pa.float64()),
        pa.field("confidence", pa.float64()),
        pa.field("lift", pa.float64()),
    ]
)

SIMILAR_PRODUCTS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("similar_product_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),  # cosine similarity
        pa.field("model", pa.string(), nullable=False),
        # The model readers use by default (config similar.default_model).
        pa.field("is_default", pa.bool_(), nullable=False),
    ]
)

# Timings stay in the task summary: the artifact is identical when a run is repeated.
FBT_CROSSCHECK_SCHEMA = pa.schema(
    [
        pa.field("engine", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | skipped
        pa.field("detail", pa.string()),
        pa.field("n_baskets", pa.int64(), nullable=False),
        pa.field("n_items", pa.int64(), nullable=False),
        pa.field("min_count", pa.int64(), nullable=False),
        pa.field("n_itemsets", pa.int64()),
        pa.field("n_rules", pa.int64()),
        pa.field("identical_to_reference", pa.bool_()),
    ]
)

# One model's ranked lists: for hold-out users from the train fit (personal_eval_*) or for
# every known user from the full fit (personal_lists_*).
PERSONAL_LISTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        # Where a blended row came from (recent | similar | model | segment_popularity).
        pa.field("source", pa.string()),
    ]
)

# The quality gate: every candidate model and baseline on the run's hold-out, against the bar
# (the best baseline times 1 + margin); `chosen` marks the list that serves existing users.
PERSONAL_GATE_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # candidate | baseline
        pa.field("metric", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("baseline", pa.string(), nullable=False),
        pa.field("baseline_value", pa.float64(), nullable=False),
        pa.field("required_value", pa.float64(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("chosen", pa.bool_(), nullable=False),
    ]
)

# The learned ranker's features by importance (gain), for the run report.
RANKER_IMPORTANCE_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string(), nullable=False),
        pa.field("gain", pa.float64(), nullable=False),
        pa.field("gain_share", pa.float64(), nullable=False),
        pa.field("splits", pa.int64(), nullable=False),
    ]
)

# What readers serve: one ranked list per user the run knows (events or demographics).
USER_RECOMMENDATIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        # The model or fallback that produced the row (a blend names its source).
        pa.field("strategy", pa.string(), nullable=False),
    ]
)

# The seed's process_user, materialised: which route and strategy each user gets.
USER_ROUTES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        # existing | new_with_events | new_without_events
        pa.field("route", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("n_items", pa.int64(), nullable=False),
        pa.field("age_group", pa.string()),
        pa.field("region", pa.string()),
    ]
)

# For shoppers the run has not seen: per product, what to show someone who touched it
# (item-kNN co-interactions, FBT, similar products), merged in that priority.
ITEM_CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("candidate_product_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# interaction_log rows (results database) taken in by this run, in the events schema.
INTERACTION_LOG_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_name", pa.string(), nullable=False),
        pa.field("button_name", pa.string()),
        pa.field("event_ts", TS, nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("product_slot", pa.string(), nullable=False),
    ]
)

SOURCES = Artifact("sources", "01_raw", SOURCES_SCHEMA)
PRODUCTS = Artifact("products", "03_primary", PRODUCTS_SCHEMA)
PRICE_HISTORY = Artifact("price_history", "03_primary", PRICE_HISTORY_SCHEMA)
EVENTS = Artifact("events", "02_intermediate", EVENTS_SCHEMA)
EVENT_PRODUCT_IDS = Artifact("event_product_ids", "02_intermediate", EVENT_PRODUCT_IDS_SCHEMA)
USERS = Artifact("users", "03_primary", None)  # schema depends on configured extra columns
INTERACTIONS = Artifact("interactions", "03_primary", INTERACTIONS_SCHEMA)
USER_ITEMS = Artifact("user_items", "03_primary", USER_ITEMS_SCHEMA)
POPULAR = Artifact("popular_products", "06_models", POPULAR_SCHEMA)
METRICS = Artifact("metrics", "08_reporting", METRICS_SCHEMA)
BASKETS = Artifact("baskets", "05_model_input", BASKETS_SCHEMA)
FBT_RULES = Artifact("fbt_rules", "06_models", FBT_RULES_SCHEMA)
FBT_RECOMMENDATIONS = Artifact("fbt_recommendations", "06_models", FBT_RECOMMENDATIONS_SCHEMA)
FBT_CROSSCHECK = Artifact("fbt_crosscheck", "08_reporting", FBT_CROSSCHECK_SCHEMA)
FBT_METRICS = Artifact("fbt_metrics", "08_reporting", METRICS_SCHEMA)
# The FBT gate's held-out scores and decision, written by the lists step.
FBT_GATE_METRICS = Artifact("fbt_metrics_gate", "08_reporting", METRICS_SCHEMA)


def similar_products(model: str) -> Artifact:
    """One model's similar-product lists (the publish step concatenates the models)."""
    return Artifact(f"similar_products_{model}", "06_models", SIMILAR_PRODUCTS_SCHEMA)


def similar_metrics(model: str) -> Artifact:
    return Artifact(f"similar_metrics_{model}", "08_reporting", METRICS_SCHEMA)


def quarantine(stage: str) -> Artifact:
    """The quarantine file of a stage: the offending raw values as strings plus reason/column."""
    return Artifact(f"{stage}_quarantine", "09_quarantine", None)


PERSONAL_GATE = Artifact("personal_gate", "08_reporting", PERSONAL_GATE_SCHEMA)
RANKER_IMPORTANCE = Artifact("ranker_importance", "08_reporting", RANKER_IMPORTANCE_SCHEMA)
USER_RECOMMENDATIONS = Artifact(
    "user_recommendations", "07_model_output", USER_RECOMMENDATIONS_SCHEMA
)
USER_ROUTES = Artifact("user_routes", "07_model_output", USER_ROUTES_SCHEMA)
ITEM_CANDIDATES = Artifact("item_candidates", "07_model_output", ITEM_CANDIDATES_SCHEMA)
INTERACTION_LOG = Artifact("interaction_log", "01_raw", INTERACTION_LOG_SCHEMA)


# The run's other files (JSON and HTML beside the Parquet layers).
SUMMARY_DIR = "summaries"  # each step's small summary, `<step>.json`
TASKS_DIR = "tasks"  # each task's record (status, timing, counts), `<task_id>.json`
QUALITY_DIR = "quality"  # each Great Expectations result, `<artifact>.json`
REPORT_FILE = "report.html"  # the self-contained run report
RUN_SUMMARY_FILE = "run_summary.json"  # written by a publish: the run's published summary

RUN_TASKS_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("step", pa.string()),
        ("status", pa.string()),
        ("try_number", pa.int64()),
        ("started", TS),
        ("seconds", pa.float64()),
        ("rows_in", pa.int64()),
        ("rows_out", pa.int64()),
        ("rows_quarantined", pa.int64()),
        ("rows_filtered", pa.int64()),
        ("error", pa.string()),
    ]
)
RUN_TASKS = Artifact("run_tasks", "08_reporting", RUN_TASKS_SCHEMA)


def personal_eval(model: str) -> Artifact:
    """A model's lists for the hold-out users, fitted on the train part of the split."""
    return Artifact(f"personal_eval_{model}", "07_model_output", PERSONAL_LISTS_SCHEMA)


def personal_lists(model: str) -> Artifact:
    """A model's lists for every known user, fitted on all interactions."""
    return Artifact(f"personal_lists_{model}", "07_model_output", PERSONAL_LISTS_SCHEMA)


def personal_metrics(step: str) -> Artifact:
    return Artifact(f"personal_metrics_{step}", "08_reporting", METRICS_SCHEMA)
