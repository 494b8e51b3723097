"""Real data: exports in the public H&M Personalized Fashion Recommendations (Kaggle) schema.

`articles.csv` (the catalogue), `customers.csv` (one row per customer) and
`transactions_train.csv` (one row per article bought) are mapped onto the same artifacts, with
the same stage names, thresholds and summary keys, as the seed-format stages in `products`,
`events` and `demographics`, so everything downstream runs unchanged:

- products: `product_id` is the 10-digit `article_id` as text (leading zero kept), the
  department is `product_type_name` (Trousers, Sweater, Dress: the granularity of the seed's
  departments, so `fbt.lists.exclude_same_department` drops substitutes without also dropping a
  T-shirt + cardigan pair, which `product_group_name` "Garment Upper body" would), the audience
  is `index_group_name`. The catalogue has no prices: the current price is the mean paid on the
  last day the article sold on or before as-of, the original price the highest ever paid, and
  the price history has one row per article and month.
- events: every transaction is a `purchase` at 00:00 UTC of its day; there is no session, so
  FBT baskets are a customer's purchases of one day (`fbt.baskets.delimiter: user_day`).
- demographics: `age` is answered directly; postal codes are hashes, so location is unknown.

The transactions file is large (3.5 GB, 31M rows): it is only ever read by polars' streaming
engine, in chunks or into small aggregates, never whole into memory.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, atomic_path, to_table
from fashion_recs.clock import as_of_timestamp
from fashion_recs.config import DemographicsConfig, EventsConfig, RetailerConfig
from fashion_recs.contract import (
    EVENTS,
    EVENTS_SCHEMA,
    PRICE_HISTORY,
    PRODUCTS,
    quarantine,
)
from fashion_recs.errors import FashionRecsError
from fashion_recs.quality.quarantine import (
    RowVerdicts,
)
from fashion_recs.stages.demographics import age_groups, finish_demographics, impute_ages
from fashion_recs.stages.events import (
    AFTER_AS_OF,
    EVENTS_WRITE_OPTIONS,
    PROGRESS_EVERY_S,
    SLOT_NAMES,
    WRITE_OPTIONS,
    as_of_window,
    count_data_rows,
    count_verdicts,
    finish_events,
    merge_id_counts,
    readable_batches,
)
from fashion_recs.stages.events import STAGE as EVENTS_STAGE
from fashion_recs.stages.products import finish_products
from fashion_recs.stages.raw_csv import header_of, read_raw_csv, require_columns

log = logging.getLogger(__name__)


ARTICLE_ID = "article_id"
ARTICLE_ID_DIGITS = "[0-9]{10}"
ARTICLE_ID_PATTERN = f"^{ARTICLE_ID_DIGITS}$"
ARTICLE_COLUMNS = [
    ARTICLE_ID,
    "prod_name",
    "product_type_name",
    "index_group_name",
    "colour_group_name",
    "detail_desc",
]
# The design an article is a colour variant of; optional (an article without one is its own).
PRODUCT_CODE = "product_code"
CUSTOMER_ID = "customer_id"
# Customer columns that may predict a missing age (postal_code: a hash of ~350k values, no).
AGE_PREDICTORS = ("FN", "Active", "club_member_status", "fashion_news_frequency")
# Ages of this many customers are plenty for a ridge on a few categorical answers; training on
# all 1.3M of H&M's takes minutes (one-hot fitting on text) and gigabytes for nothing.
MAX_AGE_TRAINING_USERS = 100_000
TRANSACTION_COLUMNS = ["t_dat", CUSTOMER_ID, ARTICLE_ID, "price"]
DATE_FORMAT = "%Y-%m-%d"

PURCHASE = "purchase"
# EVENTS.product_slot names the raw column an id came from.
PRODUCT_SLOT = SLOT_NAMES[0]
# Prices are rounded so that a rerun gives identical bytes whatever order the streaming engine
# sums a mean in (H&M prices are normalised: 1.0 is about 590 SEK, 1e-8 a millionth of a krona).
PRICE_DECIMALS = 8

# Which transaction column each quarantine reason blames.
TRANSACTION_REASON_COLUMN = {
    "missing_user_id": CUSTOMER_ID,
    "bad_date": "t_dat",
    "implausible_timestamp": "t_dat",
    "bad_article_id": ARTICLE_ID,
    "bad_price": "price",
    "unknown_product_id": ARTICLE_ID,
}


def image_path(article_id: str) -> str:
    """Where the export keeps an article's image, relative to `articles.csv`'s directory."""
    return f"images/{article_id[:3]}/{article_id}.jpg"


def _strip(values: pd.Series) -> pd.Series:
    return values.fillna("").astype(str).str.strip()


def _or_none(values: pd.Series) -> pd.Series:
    """Stripped text with empty cells as None."""
    stripped = _strip(values)
    return stripped.where(stripped != "", None).astype(object)


# --- transactions: one lazy parse shared by the products and events stages -------------------


def scan_transactions(source: Path, cfg: EventsConfig, as_of: datetime | None) -> pl.LazyFrame:
    """A transactions file as a lazy query: raw columns, parsed values and each row's verdict.

    Columns: `row_number` (0-based data row), the raw `TRANSACTION_COLUMNS` (empty cells as
    ""), `user`, `product_id` (stripped article id), `day`, `event_ts` (00:00 UTC of `day`),
    `price_value` and `reason`: null for a usable row, `after_as_of` for a row of a later run,
    else why the row is quarantined. The catalogue check (`unknown_product_id`) is the events
    stage's. Reasons come in the events stage's order: user and date first, then the as-of
    filter, then the ids; a malformed row after as-of belongs to (and is judged by) a later run.
    """
    require_columns(source, header_of(source), TRANSACTION_COLUMNS)
    day = pl.col("t_dat").str.strip_chars().str.strptime(pl.Date, DATE_FORMAT, strict=False)
    value = pl.col("price_value")
    ts = pl.col("event_ts")
    implausible, after = as_of_window(ts, cfg, as_of)
    reason = (
        pl.when(pl.col("user") == "")
        .then(pl.lit("missing_user_id"))
        .when(ts.is_null())
        .then(pl.lit("bad_date"))
        .when(implausible)
        .then(pl.lit("implausible_timestamp"))
        .when(after)
        .then(pl.lit(AFTER_AS_OF))
        .when(~pl.col("product_id").str.contains(ARTICLE_ID_PATTERN))
        .then(pl.lit("bad_article_id"))
        .when(~(value.is_finite() & (value > 0)).fill_null(False))
        .then(pl.lit("bad_price"))
    )
    return (
        pl.scan_csv(
            source,
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=True,
            row_index_name="row_number",
            encoding="utf8-lossy",
        )
        .select("row_number", *TRANSACTION_COLUMNS)
        .with_columns(pl.col(c).fill_null("") for c in TRANSACTION_COLUMNS)
        .with_columns(
            pl.col(CUSTOMER_ID).str.strip_chars().alias("user"),
            pl.col(ARTICLE_ID).str.strip_chars().alias("product_id"),
            day.alias("day"),
            pl.col("price").str.strip_chars().cast(pl.Float64, strict=False).alias("price_value"),
        )
        .with_columns(
            pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("event_ts")
        )
        .with_columns(reason.alias("reason"))
    )


def _usable(source: Path, cfg: EventsConfig, as_of: datetime, known: pl.Series) -> pl.LazyFrame:
    """The rows the events stage keeps, as (product_id, day, price_value)."""
    return (
        scan_transactions(source, cfg, as_of)
        .filter(pl.col("reason").is_null() & pl.col("product_id").is_in(known.implode()))
        .select("product_id", "day", "price_value")
    )


def transaction_prices(
    sources: list[Path], cfg: EventsConfig, as_of: date, catalogue_ids: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-article prices paid on or before as-of: (current prices, monthly price history).

    Two streaming passes, each reducing a file to small aggregates: per (article, month) sums,
    counts, highest price and first/last day sold; then the prices paid on each article's last
    day. Current prices: `product_id`, `price` (mean paid on the last day sold),
    `original_price` (highest paid, never below `price`). History: PRICE_HISTORY columns.
    """
    as_of_ts = as_of_timestamp(as_of)
    known = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    monthly_parts = [
        _usable(s, cfg, as_of_ts, known)
        .group_by("product_id", pl.col("day").dt.truncate("1mo").alias("month"))
        .agg(
            pl.col("price_value").sum().alias("price_sum"),
            pl.len().alias("n"),
            pl.col("price_value").max().alias("price_max"),
            pl.col("day").min().alias("first_day"),
            pl.col("day").max().alias("last_day"),
        )
        .collect(engine="streaming")
        for s in sources
    ]
    monthly = (
        pl.concat(monthly_parts)
        .group_by("product_id", "month")
        .agg(
            pl.col("price_sum").sum(),
            pl.col("n").sum(),
            pl.col("price_max").max(),
            pl.col("first_day").min(),
            pl.col("last_day").max(),
        )
        .sort("product_id", "month")
    )
    per_article = monthly.group_by("product_id").agg(
        pl.col("last_day").max().alias("day"),
        pl.col("price_max").max().round(PRICE_DECIMALS).alias("original_price"),
    )
    last_day_parts = [
        _usable(s, cfg, as_of_ts, known)
        .join(per_article.lazy().select("product_id", "day"), on=["product_id", "day"])
        .group_by("product_id")
        .agg(pl.col("price_value").sum().alias("price_sum"), pl.len().alias("n"))
        .collect(engine="streaming")
        for s in sources
    ]
    current = (
        pl.concat(last_day_parts)
        .group_by("product_id")
        .agg(pl.col("price_sum").sum(), pl.col("n").sum())
        .select(
            "product_id", (pl.col("price_sum") / pl.col("n")).round(PRICE_DECIMALS).alias("price")
        )
        .join(per_article.select("product_id", "original_price"), on="product_id")
        .with_columns(pl.max_horizontal("original_price", "price").alias("original_price"))
        .sort("product_id")
    )
    history = (
        monthly.join(per_article.select("product_id", "original_price"), on="product_id")
        .sort("product_id", "month")  # periods count months in order
        .with_columns(
            (pl.int_range(pl.len()).over("product_id")).cast(pl.Int32).alias("period"),
            (pl.col("price_sum") / pl.col("n")).round(PRICE_DECIMALS).alias("value"),
            pl.lit(None, dtype=pl.String).alias("currency"),
            (pl.col("price_max").round(PRICE_DECIMALS) == pl.col("original_price")).alias(
                "original"
            ),
            pl.col("first_day").alias("valid_from"),
            pl.col("last_day").alias("valid_to"),
        )
        .with_columns(
            (pl.col("period") == pl.col("period").max().over("product_id")).alias("is_current")
        )
        .select(PRICE_HISTORY.schema.names)
    )
    return current, history


# --- products ----------------------------------------------------------------------------------


def parse_articles(raw: pd.DataFrame, export_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Articles to catalogue rows without prices; return (products, quarantined rows).

    Quarantined: an id that is not 10 digits, a missing `prod_name`, a repeated id (the first
    usable row wins). `group_key` is the article's `product_code` (its own id when the export
    has none). Texts are stripped; audience and department lower-cased like the seed
    stage's. `images` holds the export's image path when that file exists.
    """
    ids = _strip(raw[ARTICLE_ID])
    titles = _strip(raw["prod_name"])
    verdicts = RowVerdicts(raw.index)
    verdicts.flag(~ids.str.fullmatch(ARTICLE_ID_DIGITS), "bad_article_id", ARTICLE_ID)
    verdicts.flag(titles == "", "missing_title", "prod_name")
    verdicts.flag(ids.where(verdicts.reason.isna()).duplicated(), "duplicate_id", ARTICLE_ID)
    rejected, kept = verdicts.split(raw)

    rows = raw[kept]
    product_ids = ids[kept]
    paths = product_ids.map(image_path)
    images = [[p] if (export_dir / p).is_file() else [] for p in paths]
    products = pd.DataFrame({name: None for name in PRODUCTS.schema.names}, index=rows.index)
    products["product_id"] = product_ids
    products["title"] = titles[kept]
    products["target_audience"] = _or_none(rows["index_group_name"].str.lower())
    products["department"] = _or_none(rows["product_type_name"].str.lower())
    products["color"] = _or_none(rows["colour_group_name"])
    # product_code names the design; its colour variants share it (text keeps leading zeros).
    codes = _or_none(rows[PRODUCT_CODE]) if PRODUCT_CODE in rows else None
    products["group_key"] = product_ids if codes is None else codes.fillna(product_ids)
    products["original_description"] = _or_none(rows["detail_desc"])
    products["images"] = pd.Series(images, index=rows.index, dtype=object)
    products = products.sort_values("product_id", kind="stable").reset_index(drop=True)
    return products, rejected


def add_prices(products: pd.DataFrame, prices: pl.DataFrame) -> pd.DataFrame:
    """Fill price, original price and the discount from `transaction_prices`' current prices.

    An article not sold by as-of keeps null prices (and a null discount): unknown, not free.
    """
    frame = products.drop(columns=["price", "original_price"]).merge(
        prices.to_pandas(), on="product_id", how="left", validate="one_to_one"
    )
    sold = frame["price"].notna()
    pct = ((1 - frame["price"] / frame["original_price"]) * 100).round(2)
    frame["is_discounted"] = pd.Series(pct > 0, dtype="boolean").mask(~sold)
    frame["discount_pct"] = pct.where(pct > 0, 0.0).where(sold)
    return frame[PRODUCTS.schema.names]


def product_field_issues(products: pd.DataFrame, export_dir: Path) -> pd.DataFrame:
    """Products kept with a field missing: no sale by as-of (no price); an image the export
    should have (it ships an `images/` folder) but does not."""
    issues = [
        {"product_id": pid, "column": "price", "value": "", "reason": "no_transaction_by_as_of"}
        for pid in products.loc[products["price"].isna(), "product_id"]
    ]
    if (export_dir / "images").is_dir():
        no_image = products["images"].map(len) == 0
        issues += [
            {
                "product_id": pid,
                "column": "images",
                "value": image_path(pid),
                "reason": "image_file_missing",
            }
            for pid in products.loc[no_image, "product_id"]
        ]
    return pd.DataFrame(issues, columns=["product_id", "column", "value", "reason"])


def build_products_hm(
    config: RetailerConfig,
    paths: RunPaths,
    articles: Path,
    transactions: list[Path],
    as_of: date,
) -> dict:
    """Stage entry point (H&M): articles plus prices paid, as the seed stage's artifacts."""
    raw = read_raw_csv(articles, ARTICLE_COLUMNS, config.quality.max_record_bytes)
    products, rejected = parse_articles(raw.rows, articles.parent)
    started = time.monotonic()
    prices, history = transaction_prices(
        transactions, config.events, as_of, products["product_id"].tolist()
    )
    log.info(
        "products: prices of %d articles from %d transaction file(s) in %.1f s",
        prices.height,
        len(transactions),
        time.monotonic() - started,
    )
    products = add_prices(products, prices)
    return finish_products(
        config,
        paths,
        products,
        history,
        product_field_issues(products, articles.parent),
        [raw.locate(rejected), raw.rejected],
        rows_in=raw.records,
        raw=raw,
    )


# --- events ------------------------------------------------------------------------------------


def filter_transactions(
    sources: list[Path],
    cfg: EventsConfig,
    catalogue_ids: list[str],
    events_path: Path,
    quarantine_path: Path,
    as_of: datetime | None,
) -> tuple[dict[str, int], int, pl.DataFrame]:
    """Stream every transactions file to purchase events; return (rows per verdict, events,
    per-id mention counts). Chunks of `events.chunk_size` rows are appended to the events and
    quarantine Parquet files as they come, so memory holds a few chunks at most."""
    known = pl.Series("product_id", sorted(set(catalogue_ids)), dtype=pl.String)
    q_names = ["reason", "column", "source_row", "source_file", *TRANSACTION_COLUMNS]
    q_schema = pa.schema([pa.field(n, pa.string()) for n in q_names])
    column = pl.col("reason").replace_strict(TRANSACTION_REASON_COLUMN, default="*")
    verdict = (
        pl.when(pl.col("reason").is_null() & ~pl.col("product_id").is_in(known.implode()))
        .then(pl.lit("unknown_product_id"))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    verdicts: dict[str, int] = {}
    id_counts: list[pl.DataFrame] = []
    n_events = 0
    started = last_log = time.monotonic()
    with (
        atomic_path(events_path) as ev_tmp,
        atomic_path(quarantine_path) as q_tmp,
        pq.ParquetWriter(ev_tmp, EVENTS_SCHEMA, **EVENTS_WRITE_OPTIONS) as ev_writer,
        pq.ParquetWriter(q_tmp, q_schema, **WRITE_OPTIONS) as q_writer,
    ):
        for source in sources:
            query = scan_transactions(source, cfg, as_of).with_columns(verdict)
            for chunk in readable_batches(query.collect_batches(chunk_size=cfg.chunk_size), source):
                for reason, n in chunk.group_by(pl.col("reason").fill_null("kept")).len().rows():
                    verdicts[reason] = verdicts.get(reason, 0) + n
                rejected = chunk.filter(
                    pl.col("reason").is_not_null() & (pl.col("reason") != AFTER_AS_OF)
                )
                if rejected.height:
                    table = rejected.select(
                        "reason",
                        column.alias("column"),
                        pl.col("row_number").cast(pl.String).alias("source_row"),
                        pl.lit(str(source)).alias("source_file"),
                        *TRANSACTION_COLUMNS,
                    )
                    q_writer.write_table(to_table(table, q_schema))
                events = chunk.filter(pl.col("reason").is_null()).select(
                    pl.col("user").alias("user_id"),
                    pl.lit(PURCHASE).alias("event_name"),
                    pl.lit(None, dtype=pl.String).alias("button_name"),
                    "event_ts",
                    "product_id",
                    pl.lit(PRODUCT_SLOT).alias("product_slot"),
                )
                if events.height:
                    ev_writer.write_table(to_table(events, EVENTS_SCHEMA))
                    n_events += events.height
                # Like the seed stage, every well-formed id a row mentions is counted.
                mentioned = (
                    chunk.filter(pl.col("product_id").str.contains(ARTICLE_ID_PATTERN))
                    .group_by("product_id")
                    .len("n_events")
                )
                id_counts.append(mentioned.with_columns(pl.col("n_events").cast(pl.Int64)))
                if len(id_counts) > 64:  # keep the per-id tallies small
                    id_counts = [merge_id_counts(id_counts)]
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    log.info(
                        "events: %s transactions so far, %s purchases, %.0f s",
                        f"{sum(verdicts.values()):,}",
                        f"{n_events:,}",
                        last_log - started,
                    )
    merged = merge_id_counts(id_counts).with_columns(
        pl.col("product_id").is_in(known.implode()).alias("in_catalogue")
    )
    return verdicts, n_events, merged


def build_events_hm(
    config: RetailerConfig,
    paths: RunPaths,
    transactions: list[Path],
    catalogue_ids: list[str],
    as_of: date,
) -> dict:
    """Stage entry point (H&M): transactions as purchase events of catalogue articles.

    Transactions after the end of the as-of day are left to later runs (counted as filtered);
    malformed ones and those of articles not in the catalogue are quarantined.
    """
    if PURCHASE not in config.events.events_of_interest:
        raise FashionRecsError(
            f"events.events_of_interest {config.events.events_of_interest} lacks {PURCHASE!r}: "
            "an H&M export holds only purchases. Add it (and an interactions rule for it)."
        )
    events_path = paths.path(EVENTS)
    q_path = paths.path(quarantine(EVENTS_STAGE))
    rows_in = sum(count_data_rows(s) for s in transactions)
    log.info("events: %s transactions in %d file(s) ...", f"{rows_in:,}", len(transactions))
    started = time.monotonic()
    verdicts, events_out, ids = filter_transactions(
        transactions, config.events, catalogue_ids, events_path, q_path, as_of_timestamp(as_of)
    )
    elapsed = time.monotonic() - started
    counts, after_as_of = count_verdicts(EVENTS_STAGE, rows_in, verdicts, q_path)
    kept, verdicts = counts.rows_out, counts.reasons
    unknown = ids.filter(~pl.col("in_catalogue"))
    log.info(
        "events: %s transactions in %.1f s (%s rows/s): %s purchases, %s after as-of, "
        "%s quarantined %s; %d distinct unknown ids",
        f"{rows_in:,}",
        elapsed,
        f"{rows_in / max(elapsed, 1e-9):,.0f}",
        f"{kept:,}",
        f"{counts.rows_filtered:,}",
        f"{counts.rows_quarantined:,}",
        verdicts,
        unknown.height,
    )
    return finish_events(config, paths, counts, ids, events_out, after_as_of)


# --- demographics ------------------------------------------------------------------------------


def parse_customers(
    raw: pd.DataFrame, extra: list[str], min_age: int, max_age: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Customers to one row per user; return (users, quarantined rows, age problems).

    Quarantined: no customer id, a customer id seen before (the first row wins). An age that
    is not a number or lies outside [min_age, max_age] is a field problem: the customer is
    kept with the age missing (then imputed) and the problem counted.
    """
    ids = _strip(raw[CUSTOMER_ID])
    verdicts = RowVerdicts(raw.index)
    verdicts.flag(ids == "", "missing_user_id", CUSTOMER_ID)
    verdicts.flag(ids.duplicated(), "duplicate_customer_id", CUSTOMER_ID)
    rejected, kept = verdicts.split(raw)

    rows = raw[kept]
    text = _strip(rows["age"])
    age = pd.to_numeric(text, errors="coerce").where(lambda a: np.isfinite(a))
    in_range = age.between(min_age, max_age)
    problems = {
        "age_missing": int((text == "").sum()),
        "age_not_a_number": int(((text != "") & age.isna()).sum()),
        "age_out_of_range": int((age.notna() & ~in_range).sum()),
    }
    users = pd.DataFrame(
        {
            "user_id": ids[kept],
            "birth_date": None,
            "age": age.where(in_range).astype(float),
        }
    )
    for c in dict.fromkeys([*AGE_PREDICTORS, *extra]):
        if c in rows.columns:
            users[c] = _or_none(rows[c])
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    return users, rejected, problems


def impute_missing_ages(
    users: pd.DataFrame,
    features: list[str],
    cfg: DemographicsConfig,
    seed: int,
    max_training_users: int = MAX_AGE_TRAINING_USERS,
) -> tuple[pd.DataFrame, dict]:
    """The seed stage's `impute_ages`, trained on a seeded sample of at most
    `max_training_users` known ages; every missing age is still imputed and flagged."""
    known = users["age"].notna()
    if known.sum() <= max_training_users:
        return impute_ages(users, features, cfg, seed)
    training = users[known].sample(n=max_training_users, random_state=seed)
    imputed, report = impute_ages(pd.concat([training, users[~known]]), features, cfg, seed)
    users = users.copy()
    users["age_source"] = np.where(known, "answer", "none")
    missing = users.index[~known]
    users.loc[missing, ["age", "age_source"]] = imputed.loc[missing, ["age", "age_source"]]
    report.update(n_known=int(known.sum()), n_training=max_training_users)
    return users, report


def build_demographics_hm(
    config: RetailerConfig, paths: RunPaths, customers: Path, as_of: date
) -> dict:
    """Stage entry point (H&M): one row per customer with age, age group and extra columns.

    Missing ages are imputed by the seed stage's regression (`impute_ages`) on the customer's
    membership and newsletter answers (`impute_missing_ages`). Location is unknown: postal
    codes are hashed. `as_of` is unused (ages are given, not birth dates); it keeps the
    stages' shared signature.
    """
    cols, cfg = config.columns.answers, config.demographics
    raw = read_raw_csv(
        customers, [CUSTOMER_ID, "age", *cols.extra], config.quality.max_record_bytes
    )
    users, rejected, age_problems = parse_customers(raw.rows, cols.extra, cfg.min_age, cfg.max_age)
    features = [c for c in dict.fromkeys([*AGE_PREDICTORS, *cols.extra]) if c in users.columns]
    users, age_report = impute_missing_ages(users, features, cfg, config.seed)
    age_report.update(age_problems)
    users["age_group"] = age_groups(users["age"], cfg)
    users["city"] = users["region"] = cfg.unknown_label
    users["location_source"] = "unknown"
    return finish_demographics(
        config,
        paths,
        users,
        age_report,
        [raw.locate(rejected), raw.rejected],
        rows_in=raw.records,
        rows_out=len(users),
        raw=raw,
        rows_label="customer",
        detail=f"; age problems {age_problems}",
    )
