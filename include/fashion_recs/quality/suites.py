"""Expectation suites in code: one per artifact, built from the contract and a run's facts.

Each builder takes a `CheckContext` (facts learned by earlier stages, such as the catalogue's
product ids or the upstream row count, plus the configuration values the artifact was built
with) and returns a Great Expectations 1.x `ExpectationSuite`. Every suite starts from the
artifact's schema in `contract.py`: the exact column order, and not-null for every field the
contract declares non-nullable; the rest is what the stage promises about its output.

Catalogue membership uses `ExpectColumnValuesToBeInReferenceSet`, defined here, rather than
GX's `ExpectColumnValuesToBeInSet`. GX copies every expectation's keyword arguments through
pydantic hundreds of times per validation, so a 50,000-id `value_set` costs about 10 s per
suite whatever the row count (measured: 0.3 s for 1k ids, 2.4 s for 10k, 10-12 s for 50k) and
writes the whole catalogue into every validation result and Data Docs page. The reference-set
expectation keeps only a name, a content digest and the size in the suite; the ids live in a
small process-local registry keyed by that digest, filled when the suite is built. The check
itself is one Arrow `is_in`, about 0.5 s for 2M rows against 100k ids; the whole events suite
validates 2M rows in about 2.3 s.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

# GX logs hundreds of INFO lines while it imports (API-docs registration) and more on every
# context it creates; task logs should show the pipeline's progress, not that. Done before
# GX is imported, and only when nobody has configured that logger already.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)
from great_expectations.expectations.row_conditions import Column
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
from great_expectations.render.renderer.renderer import renderer

from fashion_recs import contract
from fashion_recs.config import (
    AnswerColumns,
    BasketConfig,
    DemographicsConfig,
    EventsConfig,
    FbtListsConfig,
    PersonalConfig,
    PopularityConfig,
    RetailerConfig,
    SimilarConfig,
)
from fashion_recs.stages.events import SLOT_NAMES

# One GX module pins its own logger to INFO and announces a temporary directory per context.
if logging.getLogger("great_expectations").level >= logging.WARNING:
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

PRODUCT_ID_PATTERN = contract.PRODUCT_ID_PATTERNS["seed"]
AGE_SOURCES = ("answer", "user_fill", "regression", "none")
LOCATION_SOURCES = ("reported", "user_fill", "city_region_map", "unknown")
SEGMENT_TYPES = ("overall", "age_group", "region", "age_group_region")

_DEMOGRAPHICS = DemographicsConfig()
_EVENTS = EventsConfig()


@dataclass(frozen=True)
class CheckContext:
    """Cross-stage facts and configuration values the suites check an artifact against.

    Facts (`catalogue_ids`, `user_ids`, `upstream_rows`) come from earlier stages' artifacts;
    the rest are configuration values and default to the config model's defaults. A suite
    that needs a fact without a sensible default (the catalogue for membership checks, the
    interaction categories) refuses to build without it rather than skipping the check.
    `upstream_rows` is the row count of the artifact this one is derived from: the raw
    product export for `products`, events for `interactions`, interactions for `user_items`;
    when given, the row count must not exceed it. `user_ids`, when given, is the set of
    users `interactions` and `user_items` may name. Sequences are stored as tuples and id
    collections as frozensets, so lists can be passed.
    """

    catalogue_ids: frozenset[str] | None = None
    user_ids: frozenset[str] | None = None
    upstream_rows: int | None = None
    age_labels: tuple[str, ...] = tuple(_DEMOGRAPHICS.age_labels)
    unknown_label: str = _DEMOGRAPHICS.unknown_label
    min_age: float = _DEMOGRAPHICS.min_age
    max_age: float = _DEMOGRAPHICS.max_age
    categories: tuple[str, ...] | None = None
    events_of_interest: tuple[str, ...] = tuple(_EVENTS.events_of_interest)
    buttons_of_interest: tuple[str, ...] = tuple(_EVENTS.buttons_of_interest)
    allowed_event_names: tuple[str, ...] | None = None
    top_k: int = PopularityConfig().top_k
    fbt_top_k: int = FbtListsConfig().top_k
    similar_top_k: int = SimilarConfig().top_k
    personal_top_k: int = PersonalConfig().top_k
    product_id_pattern: str = PRODUCT_ID_PATTERN
    basket_categories: tuple[str, ...] = tuple(BasketConfig().categories)
    extra_user_columns: tuple[str, ...] = tuple(AnswerColumns().extra)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("catalogue_ids", "user_ids") and value is not None:
                object.__setattr__(self, f.name, frozenset(str(v) for v in value))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def from_config(
        cls,
        config: RetailerConfig,
        *,
        catalogue_ids: Iterable[str] | None = None,
        user_ids: Iterable[str] | None = None,
        upstream_rows: int | None = None,
    ) -> CheckContext:
        """A context carrying the run's configuration values plus the given facts."""
        demo = config.demographics
        return cls(
            catalogue_ids=catalogue_ids,  # type: ignore[arg-type]  # made a frozenset below
            user_ids=user_ids,  # type: ignore[arg-type]
            upstream_rows=upstream_rows,
            age_labels=tuple(demo.age_labels),
            unknown_label=demo.unknown_label,
            min_age=demo.min_age,
            max_age=demo.max_age,
            categories=tuple(sorted({r.category for r in config.interactions.rules})),
            events_of_interest=tuple(config.events.events_of_interest),
            buttons_of_interest=tuple(config.events.buttons_of_interest),
            top_k=config.popularity.top_k,
            fbt_top_k=config.fbt.lists.top_k,
            similar_top_k=config.similar.top_k,
            personal_top_k=config.personal.top_k,
            product_id_pattern=contract.PRODUCT_ID_PATTERNS[config.sources.format],
            basket_categories=tuple(config.fbt.baskets.categories),
            extra_user_columns=tuple(config.columns.answers.extra),
        )

    def require(self, artifact: str, *names: str) -> None:
        """Fail loudly when a suite needs a fact the caller did not provide."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"the {artifact!r} suite needs CheckContext.{', '.join(missing)}; pass the "
                "fact from the upstream artifact (for example the products' product_id set)"
            )


# --- Membership in a large reference set (the catalogue) -------------------------------------

_REFERENCE_SETS: OrderedDict[str, pa.Array] = OrderedDict()
_REFERENCE_LOCK = threading.Lock()
_MAX_REFERENCE_SETS = 32


def register_reference_set(values: Iterable[str]) -> str:
    """Keep `values` for `ExpectColumnValuesToBeInReferenceSet`; return their content digest.

    The same values always give the same key, so rebuilding a suite reuses the entry; the
    registry keeps the most recently used sets only, which bounds a long-lived worker's memory.
    """
    ordered = sorted({str(v) for v in values})
    key = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]
    with _REFERENCE_LOCK:
        if key not in _REFERENCE_SETS:
            _REFERENCE_SETS[key] = pa.array(ordered, type=pa.string())
        _REFERENCE_SETS.move_to_end(key)
        while len(_REFERENCE_SETS) > _MAX_REFERENCE_SETS:
            _REFERENCE_SETS.popitem(last=False)
    return key


def _reference_set(key: str) -> pa.Array:
    with _REFERENCE_LOCK:
        values = _REFERENCE_SETS.get(key)
    if values is None:
        raise LookupError(
            f"reference set {key!r} is not registered in this process; build the suite "
            "(fashion_recs.quality.suites.build_suite) in the process that validates with it"
        )
    return values


class ColumnValuesInReferenceSet(ColumnMapMetricProvider):
    """Metric: is each value in the registered reference set `reference_key`?"""

    condition_metric_name = "column_values.in_reference_set"
    condition_value_keys = ("reference_key",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, reference_key: str, **kwargs: Any) -> pd.Series:
        values = pa.array(column, from_pandas=True)
        if values.type != pa.string():
            values = values.cast(pa.string())
        found = pc.is_in(values, value_set=_reference_set(reference_key))
        return pd.Series(found.to_numpy(zero_copy_only=False), index=column.index, dtype=bool)


class ExpectColumnValuesToBeInReferenceSet(ColumnMapExpectation):
    """Expect column values to belong to a large named set registered in this process.

    Behaves like `ExpectColumnValuesToBeInSet` (nulls are ignored, failures list the
    unexpected values) but stores only the set's name, digest and size in the suite.
    Build it with `reference_set_expectation`, which registers the values.
    """

    reference: str
    reference_key: str
    reference_size: int

    map_metric = "column_values.in_reference_set"
    args_keys = ("column", "reference")
    success_keys = ("reference_key", "mostly")

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(
        cls,
        configuration: Any = None,
        result: Any = None,
        runtime_configuration: dict | None = None,
        **kwargs: Any,
    ) -> list[RenderedStringTemplateContent]:
        runtime_configuration = runtime_configuration or {}
        params = dict(configuration.kwargs) if configuration is not None else {}
        params["reference_size"] = f"{params.get('reference_size', 0):,}"
        template = (
            "values must belong to the reference set $reference "
            "($reference_size values, digest $reference_key)."
        )
        if runtime_configuration.get("include_column_name") is not False:
            template = f"$column {template}"
        styling = runtime_configuration.get("styling")
        return [
            RenderedStringTemplateContent(
                content_block_type="string_template",
                string_template={"template": template, "params": params, "styling": styling},
            )
        ]


def reference_set_expectation(
    column: str, reference: str, values: Iterable[str]
) -> ExpectColumnValuesToBeInReferenceSet:
    """`column` values must be in `values` (registered under their digest) called `reference`."""
    values = frozenset(values)
    return ExpectColumnValuesToBeInReferenceSet(
        column=column,
        reference=reference,
        reference_key=register_reference_set(values),
        reference_size=len(values),
    )


# --- Suite builders ---------------------------------------------------------------------------


def _schema_expectations(schema: pa.Schema) -> list[gxe.Expectation]:
    """The contract's column order, and not-null for every non-nullable field."""
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(schema.names))
    ]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=f.name) for f in schema if not f.nullable
    ]
    return expectations


def _row_count(minimum: int | None = 1, maximum: int | None = None) -> gxe.Expectation:
    return gxe.ExpectTableRowCountToBeBetween(min_value=minimum, max_value=maximum)


def _in_catalogue(context: CheckContext, column: str = "product_id") -> gxe.Expectation:
    assert context.catalogue_ids is not None
    return reference_set_expectation(column, "catalogue product ids", context.catalogue_ids)


def _known_users(context: CheckContext) -> list[gxe.Expectation]:
    if context.user_ids is None:
        return []
    return [reference_set_expectation("user_id", "users", context.user_ids)]


def _suite(
    name: str, schema: pa.Schema, expectations: list[gxe.Expectation]
) -> gx.ExpectationSuite:
    """The schema's expectations first, then the artifact's own."""
    return gx.ExpectationSuite(
        name=name, expectations=[*_schema_expectations(schema), *expectations]
    )


def products_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Clean catalogue: one row per well-formed id, sane prices, ratings and discounts."""
    return _suite(
        "products",
        contract.PRODUCTS_SCHEMA,
        [
            gxe.ExpectColumnValuesToBeUnique(column="product_id"),
            gxe.ExpectColumnValuesToMatchRegex(
                column="product_id", regex=context.product_id_pattern
            ),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="original_price",
                column_B="price",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
            gxe.ExpectColumnValuesToBeBetween(column="review_rating", min_value=0, max_value=5),
            gxe.ExpectColumnValuesToBeBetween(column="review_count", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="discount_pct", min_value=0, max_value=100),
            _row_count(1, context.upstream_rows),
        ],
    )


def price_history_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One row per (product, period) of a catalogue product, with a positive price."""
    context.require("price_history", "catalogue_ids")
    return _suite(
        "price_history",
        contract.PRICE_HISTORY_SCHEMA,
        [
            _in_catalogue(context),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["product_id", "period"]),
            gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, strict_min=True),
        ],
    )


def events_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Kept events: catalogue ids only, and each row is an event or a button of interest.

    The stage keeps a row when its event is of interest *or* its button is; so every row whose
    event is not of interest must carry a button of interest (and not a missing one).
    """
    context.require("events", "catalogue_ids")
    not_of_interest = Column("event_name").is_not_in(list(context.events_of_interest))
    expectations = [
        _in_catalogue(context),
        gxe.ExpectColumnValuesToNotBeNull(column="button_name", row_condition=not_of_interest),
        gxe.ExpectColumnValuesToBeInSet(
            column="button_name",
            value_set=list(context.buttons_of_interest),
            row_condition=not_of_interest,
        ),
        gxe.ExpectColumnValuesToBeInSet(column="product_slot", value_set=list(SLOT_NAMES)),
        _row_count(1),
    ]
    if context.allowed_event_names is not None:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="event_name", value_set=list(context.allowed_event_names)
            )
        )
    return _suite("events", contract.EVENTS_SCHEMA, expectations)


def event_product_ids_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One row per product id the events mention, each mentioned at least once."""
    return _suite(
        "event_product_ids",
        contract.EVENT_PRODUCT_IDS_SCHEMA,
        [
            gxe.ExpectColumnValuesToBeUnique(column="product_id"),
            gxe.ExpectColumnValuesToBeBetween(column="n_events", min_value=1),
            _row_count(1),
        ],
    )


def users_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One row per user; ages within the configured range; every fill says where it came from."""
    return _suite(
        "users",
        contract.users_schema(list(context.extra_user_columns)),
        [
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToBeBetween(
                column="age", min_value=context.min_age, max_value=context.max_age
            ),
            gxe.ExpectColumnValuesToBeInSet(column="age_source", value_set=list(AGE_SOURCES)),
            gxe.ExpectColumnValuesToBeInSet(
                column="age_group", value_set=[*context.age_labels, context.unknown_label]
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="location_source", value_set=list(LOCATION_SOURCES)
            ),
            _row_count(1),
        ],
    )


def interactions_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Weighted events: catalogue products, configured categories, positive weights."""
    context.require("interactions", "catalogue_ids", "categories")
    return _suite(
        "interactions",
        contract.INTERACTIONS_SCHEMA,
        [
            _in_catalogue(context),
            *_known_users(context),
            gxe.ExpectColumnValuesToBeInSet(
                column="category", value_set=list(context.categories or ())
            ),
            gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0, strict_min=True),
            _row_count(1, context.upstream_rows),
        ],
    )


def user_items_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One row per (user, product); decay never adds weight."""
    return _suite(
        "user_items",
        contract.USER_ITEMS_SCHEMA,
        [
            *_known_users(context),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "product_id"]),
            gxe.ExpectColumnValuesToBeBetween(column="n_events", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(
                column="decayed_weight", min_value=0, strict_min=True
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="weight_sum", column_B="decayed_weight", or_equal=True
            ),
            _row_count(1, context.upstream_rows),
        ],
    )


def popular_products_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Ranked lists per segment: catalogue products, ranks 1..top_k, an overall list always."""
    context.require("popular_products", "catalogue_ids")
    return _suite(
        "popular_products",
        contract.POPULAR_SCHEMA,
        [
            _in_catalogue(context),
            gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=context.top_k),
            gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["segment_type", "age_group", "region", "rank"],
                ignore_row_if="never",
            ),
            gxe.ExpectColumnValuesToBeInSet(column="segment_type", value_set=list(SEGMENT_TYPES)),
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="segment_type", value_set=["overall"]
            ),
        ],
    )


def baskets_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One row per (basket, catalogue product), from the configured categories only; may be
    empty (a retailer without such events gets empty FBT tables, not a failed run)."""
    context.require("baskets", "catalogue_ids")
    return _suite(
        "baskets",
        contract.BASKETS_SCHEMA,
        [
            _in_catalogue(context),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["basket_id", "product_id"]),
            gxe.ExpectColumnValuesToBeInSet(
                column="first_category", value_set=list(context.basket_categories)
            ),
            gxe.ExpectColumnValuesToBeBetween(column="basket_id", min_value=0),
            _row_count(0, context.upstream_rows),
        ],
    )


def fbt_rules_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Rules with consistent measures: probabilities in [0, 1], positive lift, counts that
    nest (both <= antecedent, consequent <= baskets); empty is valid (nothing passed)."""
    return _suite(
        "fbt_rules",
        contract.FBT_RULES_SCHEMA,
        [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["antecedent", "consequent"]),
            *[
                gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1)
                for c in ("support", "confidence", "antecedent_support", "consequent_support")
            ],
            gxe.ExpectColumnValuesToBeBetween(column="lift", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="leverage", min_value=-0.25, max_value=0.25),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="n_antecedent", column_B="n_both", or_equal=True
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="n_baskets", column_B="n_consequent", or_equal=True
            ),
            gxe.ExpectColumnValuesToBeBetween(column="antecedent_len", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="consequent_len", min_value=1),
            _row_count(0),
        ],
    )


def fbt_recommendations_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Per-product lists of catalogue products, ranks 1..top_k, no product twice in a list,
    every entry labelled with where it came from."""
    context.require("fbt_recommendations", "catalogue_ids")
    from fashion_recs.fbt.recommend import SOURCES

    return _suite(
        "fbt_recommendations",
        contract.FBT_RECOMMENDATIONS_SCHEMA,
        [
            _in_catalogue(context),
            _in_catalogue(context, "recommended_product_id"),
            gxe.ExpectColumnValuesToBeBetween(
                column="rank", min_value=1, max_value=context.fbt_top_k
            ),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["product_id", "rank"]),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["product_id", "recommended_product_id"]
            ),
            gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
            _row_count(0),
        ],
    )


def similar_products_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Per-product neighbour lists: catalogue products, ranks 1..top_k, never the product
    itself twice, cosine scores in [-1, 1]."""
    context.require("similar_products", "catalogue_ids")
    return _suite(
        "similar_products",
        contract.SIMILAR_PRODUCTS_SCHEMA,
        [
            _in_catalogue(context),
            _in_catalogue(context, "similar_product_id"),
            gxe.ExpectColumnValuesToBeBetween(
                column="rank", min_value=1, max_value=context.similar_top_k
            ),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["model", "product_id", "rank"]),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["model", "product_id", "similar_product_id"]
            ),
            gxe.ExpectColumnValuesToBeBetween(column="score", min_value=-1.0001, max_value=1.0001),
            _row_count(1),
        ],
    )


def user_recommendations_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One list per user: catalogue products, ranks 1..top_k, no product twice, a strategy."""
    context.require("user_recommendations", "catalogue_ids")
    return _suite(
        "user_recommendations",
        contract.USER_RECOMMENDATIONS_SCHEMA,
        [
            _in_catalogue(context),
            *_known_users(context),
            gxe.ExpectColumnValuesToBeBetween(
                column="rank", min_value=1, max_value=context.personal_top_k
            ),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "rank"]),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "product_id"]),
            gxe.ExpectColumnValuesToNotBeNull(column="strategy"),
            _row_count(1),
        ],
    )


def user_routes_suite(context: CheckContext) -> gx.ExpectationSuite:
    """One route per user, from the seed's three; existing users have interactions."""
    from fashion_recs.personal.routing import ROUTES

    return _suite(
        "user_routes",
        contract.USER_ROUTES_SCHEMA,
        [
            *_known_users(context),
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToBeInSet(column="route", value_set=list(ROUTES)),
            gxe.ExpectColumnValuesToBeBetween(column="n_items", min_value=0),
            _row_count(1),
        ],
    )


def item_candidates_suite(context: CheckContext) -> gx.ExpectationSuite:
    """Per-product candidates for new shoppers: catalogue products, each at most once."""
    context.require("item_candidates", "catalogue_ids")
    return _suite(
        "item_candidates",
        contract.ITEM_CANDIDATES_SCHEMA,
        [
            _in_catalogue(context),
            _in_catalogue(context, "candidate_product_id"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["product_id", "candidate_product_id"]),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["product_id", "rank"]),
            gxe.ExpectColumnValuesToBeInSet(
                column="source", value_set=["item_knn", "fbt", "similar"]
            ),
            _row_count(0),
        ],
    )


SUITE_BUILDERS: dict[str, Callable[[CheckContext], gx.ExpectationSuite]] = {
    contract.PRODUCTS.name: products_suite,
    contract.PRICE_HISTORY.name: price_history_suite,
    contract.EVENTS.name: events_suite,
    contract.EVENT_PRODUCT_IDS.name: event_product_ids_suite,
    contract.USERS.name: users_suite,
    contract.INTERACTIONS.name: interactions_suite,
    contract.USER_ITEMS.name: user_items_suite,
    contract.POPULAR.name: popular_products_suite,
    contract.BASKETS.name: baskets_suite,
    contract.FBT_RULES.name: fbt_rules_suite,
    contract.FBT_RECOMMENDATIONS.name: fbt_recommendations_suite,
    "similar_products": similar_products_suite,
    contract.USER_RECOMMENDATIONS.name: user_recommendations_suite,
    contract.USER_ROUTES.name: user_routes_suite,
    contract.ITEM_CANDIDATES.name: item_candidates_suite,
}

QUALITY_ARTIFACTS: tuple[str, ...] = tuple(SUITE_BUILDERS)


def build_suite(artifact: str, context: CheckContext) -> gx.ExpectationSuite:
    """The expectation suite of `artifact`, named after it."""
    try:
        builder = SUITE_BUILDERS[
            "similar_products" if artifact.startswith("similar_products_") else artifact
        ]
    except KeyError:
        raise ValueError(
            f"no expectation suite for artifact {artifact!r}; known: {', '.join(QUALITY_ARTIFACTS)}"
        ) from None
    return builder(context)


__all__ = [
    "QUALITY_ARTIFACTS",
    "SUITE_BUILDERS",
    "CheckContext",
    "ExpectColumnValuesToBeInReferenceSet",
    "build_suite",
    "reference_set_expectation",
    "register_reference_set",
]
