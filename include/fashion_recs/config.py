"""One validated configuration for a retailer's pipeline run.

Everything a retailer's export can differ in (where files live, what columns are called, which
events matter and how much they weigh, quality thresholds, model parameters) lives here rather
than in code, so the same DAG serves any retailer. The model is loaded from YAML and can be
overridden per run (DAG Params) with a nested dict of the same shape.
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "retailer.yaml"


class _Strict(BaseModel):
    """Base for every section: unknown keys are errors, so a typo in YAML never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where one raw export comes from.

    `uri` is a local path (relative paths resolve against the config file's directory), an
    http(s) URL, or `gdrive://<file id>` for a Google Drive file fetched with gdown.
    """

    uri: str
    filename: str | None = None


SOURCE_FORMATS = ("seed", "hm")


class SourcesConfig(_Strict):
    """The raw exports of one retailer, in one of the formats the pipeline reads.

    `seed`: the retailer of the seed report (`product_data.csv`, `events*.csv`,
    `user_answers.csv`). `hm`: the public H&M Personalized Fashion schema (`articles.csv`,
    `customers.csv`, `transactions_train.csv`); its stages map it onto the same artifacts, so
    everything downstream runs unchanged.
    """

    format: Literal["seed", "hm"] = "seed"
    product_data: SourceConfig | None = None
    events: list[SourceConfig] = Field(default_factory=list)
    user_answers: SourceConfig | None = None
    articles: SourceConfig | None = None
    customers: SourceConfig | None = None
    transactions: list[SourceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete_for_format(self) -> SourcesConfig:
        needed = {
            "seed": {
                "product_data": self.product_data,
                "events": self.events,
                "user_answers": self.user_answers,
            },
            "hm": {
                "articles": self.articles,
                "customers": self.customers,
                "transactions": self.transactions,
            },
        }
        missing = [k for k, v in needed[self.format].items() if not v]
        if missing:
            raise ValueError(f"sources of format {self.format!r} need {missing}")
        other = [k for f, keys in needed.items() if f != self.format for k, v in keys.items() if v]
        if other:
            raise ValueError(f"sources {other} do not belong to format {self.format!r}")
        return self

    def named(self) -> list[tuple[str, SourceConfig]]:
        """Every source with the name the download manifest gives it (lists are numbered)."""
        if self.format == "seed":
            assert self.product_data is not None and self.user_answers is not None
            named = [("product_data", self.product_data)]
            named += [(f"events_{i}", s) for i, s in enumerate(self.events, start=1)]
            return [*named, ("user_answers", self.user_answers)]
        assert self.articles is not None and self.customers is not None
        named = [("articles", self.articles), ("customers", self.customers)]
        return named + [(f"transactions_{i}", s) for i, s in enumerate(self.transactions, 1)]


class ProductColumns(_Strict):
    id: str = "id"
    title: str = "title"
    target_audience: str = "target_audience"
    department: str = "department"
    price: str = "price"
    other_attributes: str = "other_attributes"


class EventColumns(_Strict):
    user_id: str = "user_id"
    event_name: str = "event_name"
    button_name: str = "button_name"
    timestamp: str = "event_timestamp"
    product_columns: list[str] = Field(
        default_factory=lambda: ["product_id", "related_product_ids"], min_length=1, max_length=2
    )

    @property
    def raw_columns(self) -> list[str]:
        """Every column the events stage reads, in the order it keeps them."""
        return [
            self.user_id,
            self.event_name,
            self.button_name,
            self.timestamp,
            *self.product_columns,
        ]


class AnswerColumns(_Strict):
    user_id: str = "User_ID"
    question: str = "Question"
    answer: str = "Answer"
    city: str = "city"
    region: str = "region"
    extra: list[str] = Field(default_factory=lambda: ["gender", "signup_channel"])
    birth_date_question: str = "What is your date of birth?"


class ColumnsConfig(_Strict):
    products: ProductColumns = ProductColumns()
    events: EventColumns = EventColumns()
    answers: AnswerColumns = AnswerColumns()


class ProductsConfig(_Strict):
    """How the catalogue groups products into designs.

    Colour variants of one design are bought together or in place of each other, so models
    and candidate generators treat a product's siblings as near-certain alternatives.
    `group_key` names the product attribute that identifies the design (in the seed format a
    key of `other_attributes`; H&M's `product_code` is used whatever it says); null makes
    every product a group of its own.
    """

    group_key: str | None = Field(default="style_code", min_length=1)
    # Price periods the export should not hold: a price below `min_price` is dropped, a period
    # starting more than `max_years_ahead` after as-of is dropped, one ending that far ahead
    # is open-ended; each is a field issue, and a product left without a period is quarantined.
    min_price: float = Field(default=0.01, gt=0)
    max_years_ahead: int = Field(default=5, ge=0)


class InteractionRule(_Strict):
    """Maps an (event, button) pair to a category and a weight; `button_name: null` = any."""

    event_name: str
    button_name: str | None = None
    category: str
    weight: float = Field(gt=0)


class EventsConfig(_Strict):
    chunk_size: int = Field(default=100_000, ge=1_000)
    id_pattern: str = "[a-zA-Z0-9]{3,}"
    events_of_interest: list[str] = Field(
        default_factory=lambda: ["product_details_page_view", "product_similar_items_clicking"]
    )
    buttons_of_interest: list[str] = Field(default_factory=lambda: ["heart_button", "bag_button"])
    timestamp_formats: list[str] = Field(
        default_factory=lambda: ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.fZ"], min_length=1
    )
    # Events after the run's as-of time belong to later runs (filtered, which keeps backfills
    # right); beyond these bounds a timestamp is implausible and quarantined.
    max_days_after_as_of: int = Field(default=366, ge=0)
    max_days_before_as_of: int = Field(default=3650, ge=1)
    # A row of interest that repeats an earlier row exactly (a double submission) is filtered
    # with the reason `duplicate_event`, as the seed dropped duplicates; `keep` counts it again.
    duplicate_events: Literal["filter", "keep"] = "filter"
    # `auto`: a file whose records are one line each (checked first, in one pass) streams
    # through one polars query on every core; any other file, and every file with `blocks`,
    # goes through the block reader, which quarantines what the CSV reader cannot read.
    # Both give the same artifacts.
    reader: Literal["auto", "blocks"] = "auto"

    @field_validator("timestamp_formats")
    @classmethod
    def _one_timezone_kind(cls, formats: list[str]) -> list[str]:
        aware = {"%z" in f or "%Z" in f for f in formats}
        if len(aware) > 1:
            raise ValueError(
                "timestamp_formats mix formats with and without a UTC offset (%z); "
                "use one kind (timestamps without an offset are read as UTC)"
            )
        return formats


class InteractionsConfig(_Strict):
    rules: list[InteractionRule] = Field(min_length=1)
    half_life_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _unique_keys(self) -> InteractionsConfig:
        keys = [(r.event_name, r.button_name) for r in self.rules]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise ValueError(f"interaction rules repeat (event, button) pairs: {sorted(dupes)}")
        return self


class DemographicsConfig(_Strict):
    birth_date_formats: list[str] = Field(
        default_factory=lambda: ["%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%B %d, %Y", "%Y/%m/%d"]
    )
    min_age: int = 13
    max_age: int = 100
    age_bins: list[int] = Field(default_factory=lambda: [0, 18, 25, 35, 45, 55, 65, 120])
    age_labels: list[str] = Field(
        default_factory=lambda: ["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
    )
    unknown_label: str = "unknown"

    @model_validator(mode="after")
    def _bins_match_labels(self) -> DemographicsConfig:
        if len(self.age_bins) != len(self.age_labels) + 1:
            raise ValueError("age_bins must have exactly one more edge than age_labels")
        if sorted(self.age_bins) != self.age_bins:
            raise ValueError("age_bins must be increasing")
        return self


class QualityConfig(_Strict):
    """Reject-rate thresholds (fraction of input rows) above which a stage fails."""

    max_reject_rate: dict[str, float] = Field(
        default_factory=lambda: {
            "products": 0.05,
            "events": 0.05,
            "demographics": 0.10,
            "interactions": 0.01,
        }
    )

    @field_validator("max_reject_rate")
    @classmethod
    def _rates_are_fractions(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"reject rates must be within [0, 1]: {bad}")
        return value

    # A CSV record longer than this is quarantined unread: one hostile field must not cost a
    # stage its memory or its parser.
    max_record_bytes: int = Field(default=1 << 20, ge=1024)
    # A quality check validates at most this many rows of an artifact: past it, a seeded
    # sample of whole row groups (`quality.sample`), the row count still the artifact's.
    # Enough rows that a defect touching one row in ten thousand shows up with near
    # certainty, few enough that a check takes seconds whatever the artifact's size.
    check_max_rows: int = Field(default=2_000_000, ge=1000)

    def threshold(self, stage: str) -> float:
        return self.max_reject_rate.get(stage, 0.05)


class PopularityConfig(_Strict):
    top_k: int = Field(default=50, ge=1)
    half_life_days: float = Field(default=14.0, gt=0)
    min_segment_users: int = Field(default=20, ge=1)


class EvaluationConfig(_Strict):
    holdout_days: int = Field(default=7, ge=1)
    k: int = Field(default=12, ge=1)
    # The synthetic retailer's planted truth (bundles, look-alikes, segments); models report
    # how much of it they recover. Null for a real retailer, whose truth nobody knows.
    truth_dir: str | None = None


class BasketConfig(_Strict):
    """Which interactions make a basket and where one basket ends and the next begins.

    `session`: a user's interactions until a gap longer than `session_gap_minutes`;
    `user_day`: a user's interactions in one UTC day; `order`: one purchase event (the export
    lists every product of an order in the purchase row's product cell).
    The default categories are the seed's filtered events and buttons.
    """

    categories: list[str] = Field(
        default_factory=lambda: ["view", "similar_click", "wishlist", "add_to_bag", "purchase"],
        min_length=1,
    )
    delimiter: Literal["session", "user_day", "order"] = "session"
    session_gap_minutes: float = Field(default=30.0, gt=0)
    # Baskets longer than this are crawlers or bulk buyers, not shoppers: dropped and counted.
    max_items: int = Field(default=50, ge=2)


class MiningConfig(_Strict):
    """Frequent itemsets and rules; an itemset is frequent when its basket count reaches
    max(min_count, ceil(min_support * baskets))."""

    engine: Literal["auto", "sparse", "pyfim_fpgrowth", "mlxtend_fpgrowth", "mlxtend_apriori"] = (
        "auto"
    )
    min_support: float = Field(default=0.0003, gt=0, le=1)
    min_count: int = Field(default=5, ge=1)
    min_confidence: float = Field(default=0.05, ge=0, le=1)
    min_lift: float = Field(default=2.0, ge=0)
    max_len: int = Field(default=3, ge=2, le=10)
    # An engine whose estimated working memory passes this refuses to start.
    max_memory_mb: int = Field(default=4096, ge=64)


class CrosscheckConfig(_Strict):
    """The seed's mlxtend Apriori and FP-Growth re-run every day beside the production engine
    on a sample, so that a disagreement between engines fails loudly instead of drifting.
    The sample keeps the `max_items` most frequent items so that Apriori's candidate matrix
    stays small."""

    enabled: bool = True
    max_baskets: int = Field(default=20_000, ge=100)
    max_items: int = Field(default=100, ge=2)
    engines: list[Literal["sparse", "pyfim_fpgrowth", "mlxtend_fpgrowth", "mlxtend_apriori"]] = (
        Field(
            default_factory=lambda: [
                "sparse",
                "pyfim_fpgrowth",
                "mlxtend_fpgrowth",
                "mlxtend_apriori",
            ],
            min_length=2,
        )
    )


class FbtListsConfig(_Strict):
    """Per-product complementary lists: one ranking over every co-occurrence (rules are the
    ones labelled `rules`), padded by popularity, and a gate against popularity.

    Every candidate b of a product a is scored by its confidence shrunk toward popularity,
    `(n_ab + shrinkage * p_b) / (n_a + shrinkage)` with `p_b` the share of baskets holding b,
    so a pair seen in two baskets does not outrank a staple seen with a in forty. `rank_by`
    orders the rules the report shows; the lists do not depend on it.
    """

    top_k: int = Field(default=12, ge=1)
    rank_by: Literal["lift", "confidence", "support", "leverage", "conviction"] = "confidence"
    min_pair_count: int = Field(default=5, ge=1)
    # A jacket's co-occurring jackets are substitutes, not complements: same-department
    # products go after every other candidate (they still fill a list that would be short).
    exclude_same_department: bool = True
    min_coview_count: int = Field(default=1, ge=1)
    # Prior weight of popularity, in baskets (0: raw confidence).
    shrinkage: float = Field(default=20.0, ge=0)
    # Each run scores the lists and popularity on a random share of its baskets and publishes
    # whichever completes held-out baskets best (variants: configured, without the department
    # exclusion, blended toward popularity, popularity).
    gate: bool = True
    gate_holdout_share: float = Field(default=0.2, gt=0, lt=1)
    # Fewer held-out queries than this: the gate is not trusted and the configured lists ship.
    gate_min_queries: int = Field(default=200, ge=1)


class FbtConfig(_Strict):
    baskets: BasketConfig = BasketConfig()
    mining: MiningConfig = MiningConfig()
    crosscheck: CrosscheckConfig = CrosscheckConfig()
    lists: FbtListsConfig = FbtListsConfig()


class PublishConfig(_Strict):
    """The results database and how many published runs it keeps."""

    conn_id: str = "fashion_recs_results"
    default_url: str = "sqlite:///data/results.db"
    keep_runs: int = Field(default=3, ge=1)
    # How long a publish waits for another publish's lock before failing, naming the holder
    # (a publisher that was stopped, SIGSTOP or a frozen container, holds it for ever).
    lock_timeout_s: float = Field(default=600.0, gt=0)
    # Fail fast when the database is down or frozen: connecting, and any one statement.
    connect_timeout_s: int = Field(default=10, ge=1)
    statement_timeout_s: int = Field(default=600, ge=1)


class LearnWeightsConfig(_Strict):
    """Learn the text model's block weights from signals the run has, and use them only when
    they beat the configured weights on held-out pairs.

    Signals: `similar_click` (the two products of a similar-items click), `co_view` (products
    one user viewed on one day; off by default: a day's views mix alternatives with
    complements and favourites) and `variant_group` (products sharing `group_key`: extra
    evidence, never alone). Variants differ in colour by construction, so variant pairs never
    judge the blocks named in `variant_differs`; clicks and co-views judge every block and
    decide on the held-out half. `grid` holds the values a block's weight (as the cosine sees
    it; only ratios matter) may take in the coordinate ascent. Fewer than `min_pairs` pairs of
    a signal: that signal is not used (without clicks or co-views nothing is learned).
    """

    enabled: bool = True
    signals: list[Literal["similar_click", "co_view", "variant_group"]] = Field(
        default_factory=lambda: ["similar_click", "variant_group"]
    )
    click_category: str = "similar_click"
    view_category: str = "view"
    # A user-day with more viewed products than this is a browse, not a comparison: skipped.
    max_views_per_day: int = Field(default=20, ge=2)
    variant_differs: list[str] = Field(default_factory=lambda: ["color"])
    min_pairs: int = Field(default=100, ge=2)
    max_queries: int = Field(default=300, ge=10)
    grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5], min_length=2
    )
    rounds: int = Field(default=2, ge=1, le=10)
    # Learned weights serve only when their held-out pair recall beats the configured by more.
    min_gain: float = Field(default=0.0, ge=0)

    @field_validator("grid")
    @classmethod
    def _grid_non_negative(cls, grid: list[float]) -> list[float]:
        if any(v < 0 for v in grid):
            raise ValueError(f"learn_weights.grid values must be >= 0, got {grid}")
        return sorted(set(grid))


class TextModelConfig(_Strict):
    """The seed's TF-IDF (max_features 5000) + one-hot model; block weights before stacking.

    `attribute_weight` weighs the attribute part as a whole; `attribute_weights` splits it
    across columns (relative; colour, target_audience, department, product_type and any
    `extra_attributes` product column; 1 each unless given). `product_type: last_word` adds
    a type column read from the title's last word, for catalogues whose department is too
    coarse to say what a product is; `ngram_max: 2` adds 2-word terms. `learn_weights`
    tunes the block weights on the run's similar clicks and variant groups.
    """

    max_features: int = Field(default=5000, ge=10)
    text_weight: float = Field(default=1.0, ge=0)
    attribute_weight: float = Field(default=1.0, ge=0)
    ngram_max: int = Field(default=1, ge=1, le=3)
    attribute_weights: dict[str, float] = Field(default_factory=dict)
    product_type: Literal["none", "last_word"] = "last_word"
    extra_attributes: list[str] = Field(default_factory=list)
    learn_weights: LearnWeightsConfig = LearnWeightsConfig()

    @field_validator("attribute_weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"attribute_weights must be >= 0, got {negative}")
        return weights


class RetrievalConfig(_Strict):
    """How neighbours are found. `auto`: exact up to `exact_max_items` products, faiss IVF
    above (`ivf_nprobe` of `ivf_nlist` cells; null: 1.6 x sqrt(products)), its recall@k
    against exact measured on `recall_sample` rows. Annoy is the seed's method."""

    method: Literal["auto", "exact", "annoy", "faiss_ivf"] = "auto"
    exact_max_items: int = Field(default=20_000, ge=1)
    annoy_trees: int = Field(default=20, ge=1)  # the seed's setting
    annoy_search_k: int = -1
    ivf_nlist: int | None = Field(default=None, ge=1)
    # 8 of ~350 cells: recall@12 0.99 on the 50,000-product synthetic catalogue (3: 0.95).
    ivf_nprobe: int = Field(default=8, ge=1)
    # Rows on which an approximate method's recall@k against exact search is measured.
    recall_sample: int = Field(default=1000, ge=10)
    # Also measure the seed's Annoy against exact search when serving exact lists.
    audit_annoy: bool = True


ENCODER_NAMES = ("mobilenet_v2", "clip", "fashion_clip", "align", "roberta_efficientnet")


class EncoderConfig(_Strict):
    """One of the seed's encoders. `source` is a Hugging Face name or a local directory
    (for roberta_efficientnet a {text, image} pair); null takes the registry's default."""

    name: Literal["mobilenet_v2", "clip", "fashion_clip", "align", "roberta_efficientnet"]
    source: str | dict[str, str] | None = None
    enabled: bool = True


class ImagesConfig(_Strict):
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_bytes: int = Field(default=10 << 20, ge=1024)
    # Content-addressed store shared by runs (relative paths: under data_root).
    cache_dir: str = "cache/images"


class FusionConfig(_Strict):
    """A fused model: weighted concatenation of normalised blocks (model name -> weight)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    blocks: dict[str, float] = Field(min_length=2)


class SimilarConfig(_Strict):
    top_k: int = Field(default=12, ge=1)
    default_model: str = "text_tfidf"
    # Only neighbours for the same target audience (a women's dress never suggests menswear).
    same_audience: bool = False
    text: TextModelConfig = TextModelConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    text_noise_rate: float = Field(default=0.2, ge=0, le=1)
    encoders: list[EncoderConfig] = Field(
        default_factory=lambda: [EncoderConfig(name=n) for n in ENCODER_NAMES]
    )
    # Hugging Face downloads are off by default: weights come from a local cache or directory.
    allow_downloads: bool = False
    batch_size: int = Field(default=32, ge=1)
    embedding_cache_dir: str = "cache/embeddings"  # relative paths: under data_root
    images: ImagesConfig = ImagesConfig()
    fusions: list[FusionConfig] = Field(
        default_factory=lambda: [
            FusionConfig(name="tfidf_mobilenet", blocks={"text_tfidf": 1.0, "mobilenet_v2": 1.0})
        ]
    )
    # Products whose images are perturbed (crop, flip, colour jitter) for robustness.
    image_robustness_sample: int = Field(default=200, ge=1)


class UserCfConfig(_Strict):
    """The seed's user-based CF; both similarities are evaluated every run."""

    similarities: list[Literal["cosine", "pearson"]] = Field(
        default_factory=lambda: ["cosine", "pearson"], min_length=1
    )
    n_neighbours: int = Field(default=200, ge=1)
    # log1p damps repeat visits before similarities are computed; raw uses decayed weights.
    weighting: Literal["raw", "log1p"] = "log1p"
    # Through one item a user is compared with at most this many of its users (those who
    # weigh it most), so the neighbour search grows with users, not users squared; null:
    # exact. The cap must already bind at the demo's size for the cost to grow like the
    # users from there: the comparisons of a run grow 15.6x from the demo to 10x with 1000,
    # 12.3x with 500 (which caps the demo's 5 % most popular items, for user-CF MAP@12
    # 0.0667 against 0.0672 at 1000).
    max_item_users: int | None = Field(default=500, ge=1)


class ProfileConfig(_Strict):
    """User = weighted mean of item embeddings; `vectors` names a similar-products model
    (text_tfidf, always built, or an encoder when its embeddings exist in the run).

    Items are ranked by cosine to the profile. `method: auto` ranks every item up to
    `exact_max_items` products (and for sparse vectors too wide to densify), and above
    searches a faiss IVF index (`ivf_nprobe` of `ivf_nlist` cells per user; null: 4 x
    sqrt(products)); its recall@k against exact ranking is measured on `recall_sample`
    users and recorded in the step's summary."""

    vectors: list[str] = Field(default_factory=lambda: ["text_tfidf", "fashion_clip"])
    method: Literal["auto", "exact", "faiss_ivf"] = "auto"
    exact_max_items: int = Field(default=10_000, ge=1)
    ivf_nlist: int | None = Field(default=None, ge=1)
    ivf_nprobe: int = Field(default=32, ge=1)
    recall_sample: int = Field(default=500, ge=10)


class TwoTowerConfig(_Strict):
    """Two-tower retrieval model (fashion_recs.personal.two_tower.TwoTowerParams)."""

    enabled: bool = True
    loss: Literal["sampled_softmax", "bpr", "mse"] = "sampled_softmax"
    # Also trained and scored every run, to show in the metrics what the default beats.
    compare_losses: list[Literal["sampled_softmax", "bpr", "mse"]] = Field(
        default_factory=lambda: ["mse"]
    )
    compare_max_epochs: int = Field(default=2, ge=1)
    dim: int = Field(default=32, ge=2)
    hidden: int = Field(default=64, ge=2)
    history_len: int = Field(default=10, ge=1)
    temperature: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=512, ge=8)
    learning_rate: float = Field(default=0.01, gt=0)
    max_epochs: int = Field(default=20, ge=1)
    patience: int = Field(default=3, ge=1)
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    # Dense content features for the item tower: TF-IDF reduced by truncated SVD.
    content_dim: int = Field(default=32, ge=0)
    # Torch threads while training. Batches are small: a second thread gains little on a
    # quiet machine, and on a shared one OpenMP threads waiting on each other cut
    # throughput tenfold (11,000 examples/s on 1 thread, 900 on 2, beside another job).
    num_threads: int | None = Field(default=1, ge=1)
    # An epoch trains on a fresh seeded sample of at most this many (user, item) pairs (every
    # pair below it): the training cost stops growing with the retailer.
    max_examples_per_epoch: int | None = Field(default=1_000_000, ge=1)
    # The published model: the split's model trained on with every interaction (the last
    # days included) for this many epochs; null: a fresh model trained for the split's best
    # epoch count (as many epochs again as the split took to find it).
    refit_epochs: int | None = Field(default=1, ge=1)


class BlendConfig(_Strict):
    """Candidate lists merged by priority; caps are items per source."""

    priority: list[Literal["recent", "similar", "model", "segment_popularity"]] = Field(
        default_factory=lambda: ["recent", "similar", "model", "segment_popularity"]
    )
    recent_items: int = Field(default=4, ge=1)
    similar_per_item: int = Field(default=3, ge=1)
    caps: dict[str, int] = Field(default_factory=lambda: {"recent": 4, "similar": 6})
    # Learn the caps of these sources from the hold-out (cross-fitted over users) instead of
    # using `caps`; an empty grid keeps the configured caps.
    learn_caps: dict[str, list[int]] = Field(
        default_factory=lambda: {"recent": [0, 2, 4, 8, 12], "similar": [0, 2, 4, 6]}
    )


class GateConfig(_Strict):
    """Which list serves existing users: the best candidate whose `metric` beats the best
    baseline scored in the same run by `margin` (relative); when none does, that baseline
    itself. A published list therefore never scores below a baseline the run computed.

    Baselines that show the user's own items (repurchase, popularity, segment popularity) are
    only compared when models may show them too (`personal.exclude_known: false`);
    otherwise popularity without known items stands in for them.
    """

    metric: Literal["map", "ndcg", "recall", "precision", "hit_rate"] = "map"
    margin: float = Field(default=0.02, ge=0)
    candidates: list[str] = Field(
        default_factory=lambda: [
            "ranker",
            "candidates_fixed_order",
            "user_cf_cosine",
            "user_cf_pearson",
            "embedding_profile_text_tfidf",
            "embedding_profile_fashion_clip",
            "two_tower",
            "blend",
        ]
    )
    # source_own: the customer's own items newest day first (the ranker step's own source).
    baselines: list[str] = Field(
        default_factory=lambda: [
            "repurchase",
            "source_own",
            "popularity",
            "segment_popularity",
            "item_knn",
            "popularity_unseen",
        ]
    )


class RankerConfig(_Strict):
    """The learned ranker (fashion_recs.personal.ranker): candidate sources with their caps
    (items per user), LightGBM learning-to-rank settings and the rolling label windows (each
    `evaluation.holdout_days` long) it is trained on."""

    enabled: bool = True
    objective: Literal["rank_xendcg", "lambdarank"] = "rank_xendcg"
    sources: dict[str, int] = Field(
        default_factory=lambda: {
            "own": 20,
            "siblings": 10,
            "item_knn": 12,
            "user_cf": 12,
            # Off (0): towers trained on each window's last days added nothing measurable on
            # the planted retailer for their cost (bench/ranking.py); a cap turns it on.
            "two_tower": 0,
            "basket": 8,
            "lookalike": 4,
            "segment_popularity": 12,
            "trending": 6,
            "popular": 6,
        }
    )
    # The hand-made list scored beside the ranker: sources merged in this order.
    fixed_order: list[str] = Field(
        default_factory=lambda: ["own", "siblings", "item_knn", "popular"]
    )
    n_recent: int = Field(default=6, ge=1)
    trend_days: int = Field(default=3, ge=1)
    # The two-tower source's towers (personal.two_tower's settings) train on this many days
    # before each window, for this many epochs.
    two_tower_days: int = Field(default=14, ge=1)
    two_tower_epochs: int = Field(default=2, ge=1)
    # Neighbours of the item-kNN and user-CF sources (fewer than the models': they only
    # propose candidates, and are fitted once per window).
    neighbours: int = Field(default=50, ge=1)
    train_windows: int = Field(default=2, ge=1, le=8)
    # Users per training window (a seeded sample): the fit costs the same at any user count.
    max_train_users: int = Field(default=25_000, ge=100)
    # Users whose candidates and features are in memory at once (about 90 candidates x 45
    # features each); memory stays flat whatever the user count.
    chunk_users: int = Field(default=20_000, ge=100)
    n_estimators: int = Field(default=80, ge=10)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    num_leaves: int = Field(default=31, ge=4)
    min_child_samples: int = Field(default=20, ge=1)
    # LightGBM threads; one keeps a fit fast on a shared machine and its model reproducible.
    n_jobs: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _known_sources(self) -> RankerConfig:
        from fashion_recs.personal.candidates import SOURCES

        unknown = sorted(set(self.sources) | set(self.fixed_order))
        unknown = [s for s in unknown if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown ranker sources {unknown}; known: {sorted(SOURCES)}")
        return self


class RoutingConfig(_Strict):
    """Users with fewer distinct products than `min_items_for_model` are routed like new
    users with events (item-based lists from what they touched)."""

    min_items_for_model: int = Field(default=1, ge=1)
    item_candidates_per_product: int = Field(default=20, ge=1)


class AlsConfig(_Strict):
    """MLlib ALS with implicit feedback: a matrix-factorisation model scored beside the other
    personal models, run only when the engine for `als` is spark (it needs a SparkSession).

    Ratings are the split's decayed weights (`weighting` as for user-CF); `alpha` scales them
    into confidences. `num_blocks` fixes the user and item blocks, and the ratings' partitions,
    so a seeded fit in local mode gives the same factors every run.
    """

    enabled: bool = True
    rank: int = Field(default=32, ge=1)
    reg_param: float = Field(default=0.1, ge=0)
    alpha: float = Field(default=10.0, ge=0)
    max_iter: int = Field(default=10, ge=1)
    weighting: Literal["raw", "log1p"] = "log1p"
    num_blocks: int = Field(default=2, ge=1)


class PersonalConfig(_Strict):
    top_k: int = Field(default=12, ge=1)
    # Fashion shoppers come back to what they looked at and re-buy it: a customer's own items
    # are the strongest single source on real fashion data. True keeps them out of every list.
    exclude_known: bool = False
    user_cf: UserCfConfig = UserCfConfig()
    item_knn_neighbours: int = Field(default=200, ge=1)
    profiles: ProfileConfig = ProfileConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    blend: BlendConfig = BlendConfig()
    ranker: RankerConfig = RankerConfig()
    gate: GateConfig = GateConfig()
    routing: RoutingConfig = RoutingConfig()
    als: AlsConfig = AlsConfig()


class ReportConfig(_Strict):
    """How much of each example the run report shows (it is read by people, not machines)."""

    top_rules: int = Field(default=12, ge=1, le=200)
    similar_products: int = Field(default=4, ge=1, le=50)
    similar_k: int = Field(default=6, ge=1, le=50)
    users_per_route: int = Field(default=2, ge=1, le=20)
    history_items: int = Field(default=8, ge=1, le=50)
    recommended_items: int = Field(default=8, ge=1, le=50)
    quarantine_samples: int = Field(default=5, ge=0, le=100)
    thumbnail_px: int = Field(default=96, ge=16, le=512)


# Stages (pipeline step names) with a Spark implementation in `fashion_recs.spark`. `als`
# (MLlib ALS, a personal model step) has only that one: on the local engine it is skipped.
SPARK_STAGES = (
    "events",
    "interactions",
    "popular",
    "baskets",
    "fbt_rules",
    "fbt_recommendations",
    # The co-occurrence of every item-kNN fit (the baselines' and the ranker's candidates).
    "item_knn",
    "als",
)
Engine = Literal["local", "spark"]


class SparkConfig(_Strict):
    """The SparkSession the `spark` engine builds when it is not handed one.

    The defaults suit a small local run (one machine, a few cores): few shuffle partitions,
    no UI, UTC session time. Point `master` at a cluster (`spark://host:7077`) and size
    `conf` (executor memory, shuffle partitions) for a large one.
    """

    master: str = "local[*]"
    app_name: str = "fashion-recs"
    conf: dict[str, str] = Field(
        default_factory=lambda: {
            "spark.sql.shuffle.partitions": "8",
            "spark.ui.enabled": "false",
            # Progress bars redraw one console line: noise in a task log.
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": "2g",
            "spark.sql.session.timeZone": "UTC",
        }
    )


class RetailerConfig(_Strict):
    retailer: str = Field(default="demo", pattern=r"^[a-z][a-z0-9_]{0,39}$")
    data_root: str = "data"
    as_of: date | None = None
    seed: int = 42
    sources: SourcesConfig
    columns: ColumnsConfig = ColumnsConfig()
    products: ProductsConfig = ProductsConfig()
    events: EventsConfig = EventsConfig()
    interactions: InteractionsConfig
    demographics: DemographicsConfig = DemographicsConfig()
    quality: QualityConfig = QualityConfig()
    popularity: PopularityConfig = PopularityConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    publish: PublishConfig = PublishConfig()
    fbt: FbtConfig = FbtConfig()
    similar: SimilarConfig = SimilarConfig()
    personal: PersonalConfig = PersonalConfig()
    report: ReportConfig = ReportConfig()
    # `local` (polars / pyarrow / numpy) or `spark` for every stage with a Spark
    # implementation; `engines` overrides it per stage (keys: SPARK_STAGES).
    engine: Engine = "local"
    engines: dict[str, Engine] = Field(default_factory=dict)
    spark: SparkConfig = SparkConfig()
    base_dir: str = Field(default=".", description="Directory relative paths resolve against.")

    @model_validator(mode="after")
    def _basket_categories_exist(self) -> RetailerConfig:
        known = {r.category for r in self.interactions.rules}
        unknown = sorted(set(self.fbt.baskets.categories) - known)
        if unknown:
            raise ValueError(
                f"fbt.baskets.categories {unknown} are not interaction categories; "
                f"interactions.rules define {sorted(known)}"
            )
        return self

    @field_validator("engines")
    @classmethod
    def _engines_name_spark_stages(cls, engines: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(engines) - set(SPARK_STAGES))
        if unknown:
            raise ValueError(
                f"engines names {unknown}, which have no Spark implementation; "
                f"stages with one: {list(SPARK_STAGES)}"
            )
        return engines

    def engine_for(self, stage: str) -> Engine:
        """The engine `stage` runs on: its `engines` entry, else `engine` when the stage has a
        Spark implementation, else `local` (the stages that stay local at any scale)."""
        if stage not in SPARK_STAGES:
            return "local"
        return self.engines.get(stage, self.engine)

    def resolve(self, path: str) -> Path:
        """Resolve a config-relative path (data_root, local source uris) to an absolute path."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def data_root_path(self) -> Path:
        return self.resolve(self.data_root)

    def data_path(self, path: str) -> Path:
        """A path under data_root unless absolute (caches shared by a retailer's runs)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.data_root_path / p


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `overrides` merged in; nested dicts merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RetailerConfig:
    """Load and validate a retailer config, applying per-run overrides.

    Relative paths inside the file resolve against the file's parent's parent when the file sits
    in a `config/` directory (the project layout), else against the file's own directory.
    """
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    raw = yaml.safe_load(config_path.read_text()) or {}
    if overrides:
        raw = deep_merge(raw, overrides)
    if "base_dir" not in raw:
        parent = config_path.resolve().parent
        raw["base_dir"] = str(parent.parent if parent.name == "config" else parent)
    return RetailerConfig.model_validate(raw)
