"""A synthetic fashion retailer: raw exports in the contract's formats, with planted truth.

No retailer's real export can ship with the project, and real data has no answer key. This
module writes a complete, realistic retailer (catalogue, app events, onboarding answers,
product pictures) in exactly the formats the pipeline reads, including the defects real exports
have, and saves the structure it planted beside the data under `truth/`:

- bundles of complementary products bought together (for frequently-bought-together rules),
- groups of look-alike products (for similar-product models),
- taste segments by age group and region (for segment popularity and personalisation),
- colour-variant groups of one design sharing a `style_code` (for candidates and rankers),
- trending products whose popularity ramps up over the last weeks (for popularity growth),
- every user's true demographics (for age imputation and city/region filling),
- the global popularity order (for popularity baselines),
- every malformed row injected, by class and file (so quarantine counts can be checked exactly).

Everything is drawn from one seed through numpy's `default_rng`, arrays are built whole rather
than row by row, and each file is written atomically: the same spec always gives byte-identical
files, and two million event rows take seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from fashion_recs.artifacts import atomic_path, write_json, write_table
from fashion_recs.config import AnswerColumns, DemographicsConfig
from fashion_recs.synthetic_images import COLOR_RGB, EXPORT_FILE_MODE, ImageRecipe, write_images

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MalformedRates:
    """Share of a raw file's rows that carry each kind of defect (0 switches a kind off).

    Counts are `round(rate * rows of the file)`, each defective row has exactly one defect, and
    event defects are placed only on events of interest (the rows the pipeline keeps), so the
    pipeline's quarantine counts can be compared to `truth/malformed.json` one for one.
    """

    # product_data.csv
    bad_object_id: float = 0.004
    duplicate_id: float = 0.004
    unparseable_price: float = 0.004
    bad_price_value: float = 0.003
    empty_price: float = 0.003
    unparseable_other_attributes: float = 0.004
    bad_review_rating: float = 0.005
    missing_title: float = 0.003
    # events_*.csv (share of all event rows)
    unknown_product_id: float = 0.004
    garbage_product_cell: float = 0.002
    empty_product_cell: float = 0.002
    bad_timestamp: float = 0.001
    missing_user_id: float = 0.001
    # user_answers.csv
    impossible_birth_date: float = 0.005
    unparseable_birth_date: float = 0.008
    missing_answer: float = 0.005
    duplicate_row: float = 0.01

    def scaled(self, factor: float) -> MalformedRates:
        """All rates multiplied by `factor` (0 gives clean files, >1 stresses the quarantine)."""
        return MalformedRates(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


PRODUCT_DEFECTS = (
    "bad_object_id",
    "duplicate_id",
    "unparseable_price",
    "bad_price_value",
    "empty_price",
    "unparseable_other_attributes",
    "bad_review_rating",
    "missing_title",
)
EVENT_DEFECTS = (
    "unknown_product_id",
    "garbage_product_cell",
    "empty_product_cell",
    "bad_timestamp",
    "missing_user_id",
)
ANSWER_DEFECTS = (
    "impossible_birth_date",
    "unparseable_birth_date",
    "missing_answer",
    "duplicate_row",
)


ANSWERS_PER_USER = 1.25


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: sizes, the seed, the time window and the defect rates.

    Events fall in the `days` whole days before `end_date` (end_date itself is excluded), so a
    pipeline run "as of" end_date sees the complete history.
    """

    n_products: int = 5000
    n_users: int = 20000
    n_events: int = 2_000_000
    n_answers: int = 25000
    seed: int = 42
    end_date: date = date(2026, 11, 1)
    days: int = 60
    n_event_files: int = 2
    images: bool = True
    currency: str = "EUR"
    # Half of the non-bundle browsing follows the shopper's segment (age group x region), and
    # half of it returns to the shopper's own few current favourites: a customer's own recent
    # items predict their next ones about twice as well as overall popularity, and segment
    # popularity clearly beats overall popularity, as on real fashion data.
    taste_share: float = 0.5
    personal_share: float = 0.5
    malformed: MalformedRates = field(default_factory=MalformedRates)

    def __post_init__(self) -> None:
        problems = []
        if self.n_products < 100:
            problems.append(f"n_products={self.n_products} (need at least 100)")
        if self.n_users < 10:
            problems.append(f"n_users={self.n_users} (need at least 10)")
        if self.n_events < 100:
            problems.append(f"n_events={self.n_events} (need at least 100)")
        if not 0 <= self.n_answers <= 3 * self.n_users:
            problems.append(
                f"n_answers={self.n_answers} (each user answers at most 3 questions, so "
                f"0..{3 * self.n_users})"
            )
        if self.days < 1:
            problems.append(f"days={self.days} (need at least 1)")
        if not 1 <= self.n_event_files <= 100:
            problems.append(f"n_event_files={self.n_event_files} (need 1..100)")
        bad_rates = {
            f.name: getattr(self.malformed, f.name)
            for f in fields(self.malformed)
            if not 0.0 <= getattr(self.malformed, f.name) <= 0.2
        }
        if bad_rates:
            problems.append(f"malformed rates outside [0, 0.2]: {bad_rates}")
        for name in ("taste_share", "personal_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} (need 0..1)")
        if problems:
            raise ValueError("invalid SyntheticSpec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able values (dates as ISO strings)."""
        values = asdict(self)
        values["end_date"] = self.end_date.isoformat()
        return values


# --------------------------------------------------------------------------------------------
# Vocabulary: what a fashion catalogue and its customers look like
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Department:
    nouns: tuple[str, ...]
    styles: tuple[str, ...]
    materials: tuple[str, ...]
    base_price: float
    measurement: str
    measure_range: tuple[int, int]
    sizes: tuple[str, ...]
    care: tuple[str, ...]


_APPAREL_SIZES = ("XS", "S", "M", "L", "XL")
_WASH = ("Machine wash 30C", "Machine wash 40C", "Hand wash cold", "Dry clean only")
_LEATHER_CARE = ("Wipe clean with a damp cloth", "Use leather conditioner", "Do not wash")

DEPARTMENTS: dict[str, _Department] = {
    "dresses": _Department(
        ("Dress",),
        ("Midi", "Maxi", "Mini", "Wrap", "Slip", "Shirt"),
        ("Floral", "Satin", "Linen", "Polka-Dot", "Striped", "Pleated", "Velvet"),
        59,
        "Length",
        (85, 135),
        _APPAREL_SIZES,
        _WASH,
    ),
    "skirts": _Department(
        ("Skirt",),
        ("Midi", "Mini", "A-Line", "Pencil", "Wrap"),
        ("Denim", "Floral", "Plaid", "Satin", "Leather", "Corduroy", "Pleated"),
        39,
        "Length",
        (40, 95),
        _APPAREL_SIZES,
        _WASH,
    ),
    "tops": _Department(
        ("T-Shirt", "Top", "Tank Top"),
        ("Oversized", "Cropped", "Fitted", "Relaxed", "Boxy"),
        ("Cotton", "Striped", "Ribbed", "Jersey", "Graphic", "Linen"),
        19,
        "Chest",
        (44, 62),
        _APPAREL_SIZES,
        _WASH[:3],
    ),
    "shirts": _Department(
        ("Shirt", "Blouse"),
        ("Oxford", "Regular-Fit", "Slim-Fit", "Oversized", "Button-Down"),
        ("Cotton", "Linen", "Striped", "Plaid", "Poplin", "Silk"),
        35,
        "Chest",
        (46, 64),
        _APPAREL_SIZES,
        _WASH,
    ),
    "jeans": _Department(
        ("Jeans",),
        ("Slim", "Straight", "Wide-Leg", "Skinny", "Bootcut", "Relaxed"),
        ("Denim", "Washed", "Distressed", "Stretch", "Raw"),
        49,
        "Inseam",
        (68, 88),
        ("26", "28", "30", "32", "34", "36"),
        _WASH[:3],
    ),
    "trousers": _Department(
        ("Trousers", "Chinos"),
        ("Tapered", "Straight", "Wide-Leg", "Cargo", "Pleated"),
        ("Cotton", "Linen", "Wool", "Corduroy", "Twill", "Plaid"),
        45,
        "Inseam",
        (68, 88),
        _APPAREL_SIZES,
        _WASH,
    ),
    "jackets": _Department(
        ("Jacket", "Blazer", "Coat"),
        ("Cropped", "Longline", "Oversized", "Tailored", "Bomber"),
        ("Leather", "Denim", "Wool", "Quilted", "Suede", "Corduroy"),
        89,
        "Length",
        (55, 115),
        _APPAREL_SIZES,
        ("Dry clean only", "Machine wash 30C", "Wipe clean with a damp cloth"),
    ),
    "knitwear": _Department(
        ("Sweater", "Cardigan", "Jumper"),
        ("Chunky", "Fine-Knit", "Cropped", "Oversized", "Roll-Neck"),
        ("Wool", "Cashmere", "Cable-Knit", "Ribbed", "Cotton", "Striped"),
        45,
        "Length",
        (52, 76),
        _APPAREL_SIZES,
        ("Hand wash cold", "Dry flat", "Machine wash 30C wool cycle"),
    ),
    "shoes": _Department(
        ("Sneakers", "Boots", "Loafers", "Sandals", "Pumps"),
        ("Low-Top", "Chunky", "Classic", "Platform", "Slip-On"),
        ("Leather", "Suede", "Canvas", "Patent", "Mesh"),
        69,
        "Heel height",
        (1, 10),
        ("36", "37", "38", "39", "40", "41", "42", "43", "44"),
        _LEATHER_CARE,
    ),
    "bags": _Department(
        ("Tote Bag", "Crossbody Bag", "Backpack", "Clutch", "Shoulder Bag"),
        ("Mini", "Large", "Structured", "Slouchy", "Classic"),
        ("Leather", "Canvas", "Quilted", "Suede", "Woven"),
        49,
        "Width",
        (16, 46),
        ("OS",),
        _LEATHER_CARE,
    ),
    "accessories": _Department(
        ("Scarf", "Belt", "Hat", "Cap", "Beanie"),
        ("Classic", "Wide", "Slim", "Oversized", "Knitted"),
        ("Wool", "Leather", "Cotton", "Silk", "Striped", "Plaid"),
        19,
        "Length",
        (50, 200),
        ("OS",),
        ("Hand wash cold", "Dry clean only", "Wipe clean with a damp cloth"),
    ),
}

AUDIENCE_SHARE = {"women": 0.5, "men": 0.3, "kids": 0.15, "unisex": 0.05}
AUDIENCE_DEPARTMENTS: dict[str, dict[str, float]] = {
    "women": {
        "dresses": 0.14,
        "skirts": 0.08,
        "tops": 0.16,
        "shirts": 0.08,
        "jeans": 0.10,
        "trousers": 0.05,
        "jackets": 0.09,
        "knitwear": 0.08,
        "shoes": 0.11,
        "bags": 0.07,
        "accessories": 0.04,
    },
    "men": {
        "shirts": 0.14,
        "tops": 0.18,
        "jeans": 0.13,
        "trousers": 0.11,
        "jackets": 0.12,
        "knitwear": 0.10,
        "shoes": 0.14,
        "bags": 0.03,
        "accessories": 0.05,
    },
    "kids": {
        "tops": 0.25,
        "jeans": 0.15,
        "dresses": 0.12,
        "jackets": 0.13,
        "knitwear": 0.12,
        "shoes": 0.15,
        "accessories": 0.08,
    },
    "unisex": {"bags": 0.35, "accessories": 0.40, "shoes": 0.25},
}
# Complementary departments that make an outfit; a bundle takes one product from each.
BUNDLE_TEMPLATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "women": (
        ("dresses", "shoes", "bags"),
        ("jeans", "tops", "shoes"),
        ("skirts", "shirts"),
        ("jackets", "jeans"),
        ("knitwear", "skirts", "bags"),
        ("trousers", "shirts", "shoes"),
        ("dresses", "accessories"),
    ),
    "men": (
        ("shirts", "trousers", "shoes"),
        ("jeans", "tops"),
        ("jackets", "knitwear", "jeans"),
        ("shoes", "accessories"),
        ("trousers", "knitwear"),
    ),
    "kids": (("tops", "jeans"), ("dresses", "shoes"), ("jackets", "knitwear"), ("tops", "shoes")),
    "unisex": (("bags", "accessories"),),
}
COLOR_SHARE = {
    "black": 0.14,
    "white": 0.10,
    "navy": 0.09,
    "grey": 0.08,
    "beige": 0.07,
    "red": 0.05,
    "burgundy": 0.04,
    "pink": 0.05,
    "blue": 0.06,
    "light blue": 0.04,
    "green": 0.04,
    "olive": 0.04,
    "khaki": 0.03,
    "brown": 0.04,
    "camel": 0.03,
    "yellow": 0.02,
    "orange": 0.02,
    "purple": 0.02,
}
STYLE_TAGS = ("streetwear", "sporty", "boho", "minimalist", "classic", "elegant", "casual")
AUDIENCE_WORDS = {"women": "women", "men": "men", "kids": "kids", "unisex": "everyone"}
DESCRIPTIONS = (
    "{Article} {color} {material} {style} {noun} for {audience}. A {tag} piece, easy to style.",
    "{This} {style} {noun} {comes} in {color} with a {material} finish, made for a {tag} look.",
    "{Tag} {noun} in {color}: {material}, {style} and made to last.",
)
PLURAL_NOUNS = {"Jeans", "Trousers", "Chinos", "Sneakers", "Boots", "Loafers", "Sandals", "Pumps"}
LOOKALIKE_SUFFIXES = ("II", "- Petite", "- Tall", "- Curve", "- Essential", "- Limited Edition")
AVAILABILITY = {"in_stock": 0.82, "low_stock": 0.08, "out_of_stock": 0.07, "preorder": 0.03}
AVAILABILITY_CUM = np.cumsum(list(AVAILABILITY.values()))[:-1]
OPTIONAL_ATTRIBUTE_MISSING = 0.02

REGIONS: dict[str, tuple[str, ...]] = {
    "North": ("Hamburg", "Bremen", "Kiel"),
    "East": ("Berlin", "Leipzig", "Dresden"),
    "South": ("Munich", "Nuremberg", "Augsburg", "Regensburg"),
    "West": ("Cologne", "Dusseldorf", "Dortmund"),
    "Central": ("Frankfurt", "Kassel"),
    "Southwest": ("Stuttgart", "Freiburg", "Karlsruhe"),
}
REGION_SHARE = (0.15, 0.20, 0.22, 0.20, 0.10, 0.13)
# Positive = younger customers than average: makes region informative of age.
REGION_YOUTH = (-0.4, 0.9, -0.2, 0.3, 0.0, -0.8)

_DEMOGRAPHICS = DemographicsConfig()
AGE_LABELS: tuple[str, ...] = tuple(_DEMOGRAPHICS.age_labels)
AGE_BINS: tuple[int, ...] = tuple(_DEMOGRAPHICS.age_bins)
AGE_GROUP_SHARE = (0.03, 0.21, 0.27, 0.20, 0.14, 0.10, 0.05)
AGE_RANGES = ((14, 17), (18, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 79))
AGE_STYLE_PREFERENCES: dict[str, tuple[str, ...]] = {
    "<18": ("streetwear", "sporty"),
    "18-24": ("streetwear", "sporty", "boho"),
    "25-34": ("minimalist", "boho", "casual"),
    "35-44": ("casual", "minimalist", "classic"),
    "45-54": ("classic", "elegant", "casual"),
    "55-64": ("classic", "elegant"),
    "65+": ("classic", "elegant"),
}
BUDGETS = ("under 30", "30-60", "60-120", "over 120")
AGE_BUDGET_SHARE = (
    (0.60, 0.30, 0.08, 0.02),
    (0.45, 0.35, 0.15, 0.05),
    (0.20, 0.40, 0.30, 0.10),
    (0.10, 0.30, 0.40, 0.20),
    (0.08, 0.25, 0.40, 0.27),
    (0.08, 0.25, 0.37, 0.30),
    (0.12, 0.30, 0.35, 0.23),
)
GENDERS = ("female", "male", "non-binary")
GENDER_SHARE = (0.62, 0.35, 0.03)
SIGNUP_CHANNELS = ("social", "app", "web", "store", "referral")
AGE_CHANNEL_SHARE = (
    (0.55, 0.30, 0.05, 0.02, 0.08),
    (0.45, 0.35, 0.08, 0.04, 0.08),
    (0.25, 0.40, 0.20, 0.05, 0.10),
    (0.12, 0.35, 0.33, 0.10, 0.10),
    (0.06, 0.25, 0.42, 0.17, 0.10),
    (0.03, 0.15, 0.50, 0.25, 0.07),
    (0.02, 0.08, 0.50, 0.35, 0.05),
)
QUESTION_BIRTH_DATE = AnswerColumns().birth_date_question
QUESTION_STYLES = "Which styles do you like?"
QUESTION_BUDGET = "What is your usual budget?"
QUESTIONS = (QUESTION_BIRTH_DATE, QUESTION_STYLES, QUESTION_BUDGET)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
BIRTH_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%B %d, %Y", "%Y/%m/%d")
UNPARSEABLE_BIRTH_DATES = ("rather not say", "31/31/1990", "1990-02-30", "sometime in the 90s")

# Event kinds: (event_name, button_name); the first five are the events of interest.
EVENT_KINDS: tuple[tuple[str, str | None], ...] = (
    ("product_details_page_view", None),
    ("product_similar_items_clicking", None),
    ("button_click", "heart_button"),
    ("button_click", "bag_button"),
    ("purchase", None),
    ("app_open", None),
    ("search", None),
    ("category_page_view", None),
    ("button_click", "share_button"),
    ("button_click", "filter_button"),
)
VIEW, SIMILAR, HEART, BAG, PURCHASE, APP_OPEN, SEARCH, CATEGORY, SHARE, FILTER = range(10)
NOISE_KIND_SHARE = {APP_OPEN: 0.30, SEARCH: 0.20, CATEGORY: 0.25, SHARE: 0.10, FILTER: 0.15}
NOISE_SHARE = 0.30
GARBAGE_CELLS = ("null", "undefined", "NaN", "[]")
BAD_TIMESTAMPS = ("not-a-date", "2026-13-45 25:61:00", "31/10/2026 25:00")

# Session behaviour.
P_BUNDLE_SESSION = 0.10
P_ANOTHER_VISIT = 0.70
MAX_VISITS = 12
# Taste (SyntheticSpec.taste_share / personal_share): the share of non-bundle visits that follow
# the shopper's segment favourites, and the share of all non-bundle visits that go to one of the
# shopper's own few current favourites instead (drawn from a stream of its own, and from the
# same mix of segment and popularity, so the expected popularity of every product stays the
# same). Favourites drift: each slot holds one product for one to four weeks, then another, so
# what a shopper touched in the last days predicts their next days far better than older items.
PERSONAL_FAVOURITES = 4
FAVOURITE_DAYS = (7.0, 28.0)
# A return to a favourite opens a colour sibling of it instead this often, and returns are
# bagged more often than browsing (re-buys, or the same design in another colour).
P_SIBLING = 0.25
P_BAG_PERSONAL = 0.25
# Colour variants: this share of the clean catalogue sits in groups of 2-5 products of one
# design (the same words and price, a different colour each) that share a style_code.
VARIANT_SHARE = 0.35
VARIANT_SIZES = (2, 5)
# Trending products (this share of the catalogue) take a growing share of popularity-driven
# visits over the last TREND_DAYS days of the window, up to TREND_PEAK on the last day.
TREND_SHARE = 0.02
TREND_DAYS = 21
TREND_PEAK = 0.15
# Casual shoppers (this share of app users) open one product per session and come about
# CASUAL_SESSIONS times in the window: the customers seen with one or two products only.
CASUAL_SHARE = 0.45
CASUAL_SESSIONS = 1.0
# Interest events per session, for sizing session batches and casual shoppers' activity.
EVENTS_PER_SESSION = 4.6
P_SIMILAR = 0.12
P_HEART = 0.06
P_BAG = 0.08
P_PURCHASE = 0.45
P_BUNDLE_PURCHASE = 0.70
P_LOOKALIKE_SIMILAR = 0.70
MEAN_VISIT_GAP_S = 45.0
MEAN_ACTION_GAP_S = 12.0
ZIPF_EXPONENT = 0.85
ZIPF_OFFSET = 2.0
# Relative share of sessions starting in each UTC hour: quiet at night, busiest in the evening.
# fmt: off
HOUR_WEIGHTS = (
    0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.8, 0.9, 1.0, 1.0,
    1.1, 1.1, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 1.8, 1.2, 0.6,
)
# fmt: on

PRODUCT_COLUMNS = ("id", "title", "target_audience", "department", "price", "other_attributes")
EVENT_COLUMNS = (
    "user_id",
    "event_name",
    "button_name",
    "event_timestamp",
    "product_id",
    "related_product_ids",
)
ANSWER_COLUMNS = ("User_ID", "Question", "Answer", "city", "region", "gender", "signup_channel")

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _count(rate: float, rows: int) -> int:
    return round(rate * rows)


def _pick(
    rng: np.random.Generator, options: Sequence[Any], shares: Sequence[float], n: int
) -> np.ndarray:
    """`n` draws of `options` with probabilities proportional to `shares`."""
    p = np.asarray(shares, dtype=float)
    return np.asarray(options, dtype=object)[rng.choice(len(options), n, p=p / p.sum())]


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _age_group_index(ages: np.ndarray) -> np.ndarray:
    """Age group of each age, with bins closed on the left: 18 is "18-24", 25 is "25-34"."""
    return np.clip(np.searchsorted(np.asarray(AGE_BINS), ages, side="right") - 1, 0, None)


def _write_csv(frame: pl.DataFrame, path: Path) -> int:
    """Write a CSV atomically (nulls as empty cells, quoting only where needed).

    Raw exports are readable by everyone, like a real export, so a pipeline running as
    another user (inside a container, say) can read them.
    """
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)
        tmp.chmod(EXPORT_FILE_MODE)
    return frame.height


def _object_ids(rng: np.random.Generator, n: int, end: date, taken: set[str]) -> list[str]:
    """Unique 24-hex document ids shaped like MongoDB's: a creation timestamp, then random bytes."""
    lo, hi = _epoch(date(2023, 1, 1)), _epoch(end) - 86400
    ids: list[str] = []
    seen = set(taken)
    while len(ids) < n:
        need = n - len(ids)
        stamps = rng.integers(lo, hi, need)
        tails = rng.integers(0, 2**63, need, dtype=np.int64)
        for stamp, tail in zip(stamps.tolist(), tails.tolist(), strict=True):
            hexid = f"{stamp:08x}{tail:016x}"
            if hexid not in seen:
                seen.add(hexid)
                ids.append(hexid)
    return ids


# --------------------------------------------------------------------------------------------
# The catalogue and its planted structure
# --------------------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    """One entry per row of product_data.csv; `defect` is "" for clean rows."""

    hexes: list[str]
    audience: np.ndarray
    department: np.ndarray
    color: np.ndarray
    material: np.ndarray
    style: np.ndarray
    noun: np.ndarray
    tag: np.ndarray
    template: np.ndarray
    suffix: np.ndarray
    price_factor: np.ndarray
    defect: np.ndarray
    id_source: np.ndarray  # row whose id a duplicate_id row repeats (else its own row)
    variant_of: np.ndarray  # the design (lead row) each row is a colour variant of; own row if none
    rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n(self) -> int:
        return len(self.hexes)

    @property
    def clean(self) -> np.ndarray:
        return np.nonzero(self.defect == "")[0]


@dataclass
class _Structure:
    """The planted truth about products: bundles, look-alikes, segment favourites, colour
    variants and trending products."""

    bundles: list[list[int]]
    bundle_weight: np.ndarray
    lookalikes: list[list[int]]
    variants: list[list[int]]
    trending: np.ndarray
    age_favourites: list[np.ndarray]
    age_affinity: list[np.ndarray]
    region_favourites: list[np.ndarray]
    region_affinity: list[np.ndarray]
    unknown_hexes: list[str]


def _draw_catalogue(spec: SyntheticSpec, rng: np.random.Generator) -> _Catalogue:
    """Draw every product's descriptive attributes (audience, department, colour, words)."""
    n = spec.n_products
    audience = _pick(rng, list(AUDIENCE_SHARE), list(AUDIENCE_SHARE.values()), n)
    department = np.empty(n, dtype=object)
    for name, shares in AUDIENCE_DEPARTMENTS.items():
        rows = np.nonzero(audience == name)[0]
        department[rows] = _pick(rng, list(shares), list(shares.values()), len(rows))
    material = np.empty(n, dtype=object)
    style = np.empty(n, dtype=object)
    noun = np.empty(n, dtype=object)
    for name, dept in DEPARTMENTS.items():
        rows = np.nonzero(department == name)[0]
        material[rows] = _pick(rng, dept.materials, [1.0] * len(dept.materials), len(rows))
        style[rows] = _pick(rng, dept.styles, [1.0] * len(dept.styles), len(rows))
        noun[rows] = _pick(rng, dept.nouns, [1.0] * len(dept.nouns), len(rows))
    return _Catalogue(
        hexes=_object_ids(rng, n, spec.end_date, set()),
        audience=audience,
        department=department,
        color=_pick(rng, list(COLOR_SHARE), list(COLOR_SHARE.values()), n),
        material=material,
        style=style,
        noun=noun,
        tag=_pick(rng, STYLE_TAGS, [1.0] * len(STYLE_TAGS), n),
        template=rng.integers(0, len(DESCRIPTIONS), n),
        suffix=np.full(n, "", dtype=object),
        price_factor=rng.lognormal(0.0, 0.35, n),
        defect=np.full(n, "", dtype=object),
        id_source=np.arange(n),
        variant_of=np.arange(n),
    )


def _assign_product_defects(
    spec: SyntheticSpec, catalogue: _Catalogue, rng: np.random.Generator
) -> dict[str, int]:
    """Choose the defective catalogue rows (distinct rows, one defect each).

    A duplicate_id row repeats the id of an earlier clean row, so "keep the first occurrence"
    keeps the real product. Defective rows are never referenced by events or planted truth.
    """
    n = catalogue.n
    rates = spec.malformed
    counts = {name: _count(getattr(rates, name), n) for name in PRODUCT_DEFECTS}
    first_allowed = max(1, n // 10)
    n_dup = min(counts["duplicate_id"], n - first_allowed)
    dup_rows = rng.choice(np.arange(first_allowed, n), n_dup, replace=False)
    catalogue.defect[dup_rows] = "duplicate_id"
    others = [name for name in PRODUCT_DEFECTS if name != "duplicate_id"]
    free = np.nonzero(catalogue.defect == "")[0]
    wanted = sum(counts[name] for name in others)
    chosen = rng.choice(free, min(wanted, len(free) // 2), replace=False)
    start = 0
    for name in others:
        take = chosen[start : start + counts[name]]
        catalogue.defect[take] = name
        counts[name] = len(take)
        start += len(take)
    clean = catalogue.clean
    for row in np.sort(dup_rows).tolist():
        earlier = clean[clean < row]
        catalogue.id_source[row] = int(earlier[rng.integers(0, len(earlier))])
    counts["duplicate_id"] = n_dup
    return counts


def _assign_popularity(catalogue: _Catalogue, rng: np.random.Generator) -> None:
    """Plant a Zipf popularity over clean products: rank 1 is the most popular."""
    clean = catalogue.clean
    rank = np.zeros(catalogue.n, dtype=np.int64)
    rank[rng.permutation(clean)] = np.arange(1, len(clean) + 1)
    weight = np.zeros(catalogue.n)
    weight[clean] = (rank[clean] + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    catalogue.rank, catalogue.weight = rank, weight


def _plant_lookalikes(
    catalogue: _Catalogue, free: list[int], rng: np.random.Generator
) -> list[list[int]]:
    """Groups of 3-5 near-identical products: same department, audience, colour and words."""
    n_groups = max(2, len(catalogue.clean) // 40)
    groups: list[list[int]] = []
    for _ in range(n_groups):
        size = int(rng.integers(3, 6))
        if len(free) < size:
            break
        members = [free.pop() for _ in range(size)]
        lead = members[0]
        for attr in ("audience", "department", "color", "material", "style", "noun", "tag"):
            values = getattr(catalogue, attr)
            values[members] = values[lead]
        catalogue.template[members] = catalogue.template[lead]
        catalogue.price_factor[members] = catalogue.price_factor[lead] * rng.uniform(
            0.92, 1.08, size
        )
        suffixes = rng.choice(len(LOOKALIKE_SUFFIXES), size - 1, replace=False)
        catalogue.suffix[members[1:]] = [LOOKALIKE_SUFFIXES[s] for s in suffixes.tolist()]
        groups.append(members)
    return groups


def _plant_bundles(
    catalogue: _Catalogue, free: list[int], rng: np.random.Generator
) -> tuple[list[list[int]], np.ndarray]:
    """Bundles of 2-3 complementary products: same audience, one product per department."""
    pools: dict[tuple[str, str], list[int]] = {}
    for row in free:
        pools.setdefault((catalogue.audience[row], catalogue.department[row]), []).append(row)
    n_bundles = int(np.clip(len(catalogue.clean) // 15, 3, 200))
    audiences = list(AUDIENCE_SHARE)
    bundles: list[list[int]] = []
    for _ in range(n_bundles * 3):
        if len(bundles) == n_bundles:
            break
        audience = audiences[rng.choice(len(audiences), p=list(AUDIENCE_SHARE.values()))]
        templates = BUNDLE_TEMPLATES[audience]
        departments = templates[int(rng.integers(0, len(templates)))]
        if all(pools.get((audience, d)) for d in departments):
            bundles.append([pools[(audience, d)].pop() for d in departments])
    taken = {row for bundle in bundles for row in bundle}
    free[:] = [row for row in free if row not in taken]
    weight = (np.arange(len(bundles)) + 5.0) ** -0.3
    return bundles, weight / weight.sum()


def _plant_segment_favourites(
    catalogue: _Catalogue, free: list[int], rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Each age group favours products of its styles; each region favours its own picks.

    A segment (age group, region) favours the union, so per-segment popularity differs from the
    overall one in a way that both age group and region explain.
    """
    n_clean = len(catalogue.clean)
    age_size = int(np.clip(n_clean // 25, 4, 25))
    region_size = int(np.clip(n_clean // 40, 3, 15))
    fallback = catalogue.clean[catalogue.rank[catalogue.clean] > 2 * _top_count(n_clean)]
    age_sets, age_aff = [], []
    for label in AGE_LABELS:
        liked = set(AGE_STYLE_PREFERENCES[label])
        matching = [row for row in free if catalogue.tag[row] in liked]
        chosen = matching[:age_size]
        if len(chosen) < age_size:
            chosen += rng.choice(fallback, age_size - len(chosen), replace=False).tolist()
        taken = set(chosen)
        free[:] = [row for row in free if row not in taken]
        age_sets.append(np.asarray(chosen, dtype=np.int64))
        age_aff.append(rng.uniform(0.6, 1.4, age_size))
    region_sets, region_aff = [], []
    for _ in REGIONS:
        chosen = free[:region_size]
        del free[:region_size]
        if len(chosen) < region_size:
            chosen += rng.choice(fallback, region_size - len(chosen), replace=False).tolist()
        region_sets.append(np.asarray(chosen, dtype=np.int64))
        region_aff.append(rng.uniform(0.6, 1.4, region_size))
    return age_sets, age_aff, region_sets, region_aff


def _plant_variants(
    catalogue: _Catalogue,
    planted: np.ndarray,
    favourites: np.ndarray,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Colour-variant groups: a lead product and 1-4 siblings of its design in other colours.

    Siblings take the lead's audience, department, words, description and price, and a colour
    of their own; all share the lead's style_code. Look-alikes and bundle products (`planted`)
    stay out, so their planted attributes hold. Popular and segment-favourite designs
    (`favourites`) lead first, as hit designs come in more colours; segment favourites are
    never siblings, so their attributes stay as planted.
    """
    clean = catalogue.clean
    eligible = clean[~np.isin(clean, planted)]
    target = round(VARIANT_SHARE * len(clean))
    lo, hi = VARIANT_SIZES
    sizes = rng.integers(lo, hi + 1, max(1, target // lo))
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), target)) + 1]
    hit = np.isin(eligible, favourites) | (catalogue.rank[eligible] <= 2 * _top_count(len(clean)))
    leads = np.concatenate([rng.permutation(eligible[hit]), rng.permutation(eligible[~hit])])
    pool = rng.permutation(eligible[~np.isin(eligible, favourites)])
    n_groups = len(sizes)
    while n_groups and (sizes[:n_groups] - 1).sum() > len(pool) - n_groups:
        n_groups -= 1
    leads, sizes = leads[:n_groups], sizes[:n_groups]
    pool = pool[~np.isin(pool, leads)]
    siblings = pool[: int((sizes - 1).sum())]
    lead_of = np.repeat(leads, sizes - 1)
    for attr in ("audience", "department", "material", "style", "noun", "tag", "template"):
        values = getattr(catalogue, attr)
        values[siblings] = values[lead_of]
    catalogue.price_factor[siblings] = catalogue.price_factor[lead_of]
    catalogue.variant_of[siblings] = lead_of
    colours = np.asarray(list(COLOR_SHARE), dtype=object)
    shares = np.asarray(list(COLOR_SHARE.values()))
    groups: list[list[int]] = []
    start = 0
    for lead, size in zip(leads.tolist(), sizes.tolist(), strict=True):
        members = siblings[start : start + size - 1]
        start += size - 1
        other = colours != catalogue.color[lead]
        p = shares[other] / shares[other].sum()
        catalogue.color[members] = rng.choice(colours[other], size - 1, replace=False, p=p)
        groups.append([lead, *members.tolist()])
    return groups


def _plant_trending(catalogue: _Catalogue, free: list[int], rng: np.random.Generator) -> np.ndarray:
    """Products of the long tail whose popularity ramps up at the end of the window."""
    n = min(len(free), max(2, round(TREND_SHARE * len(catalogue.clean))))
    chosen = np.sort(rng.choice(np.asarray(free, dtype=np.int64), n, replace=False))
    taken = set(chosen.tolist())
    free[:] = [row for row in free if row not in taken]
    return chosen


def _top_count(n_clean: int) -> int:
    """Size of the popularity head that must stay on top of observed popularity.

    Planted sets (bundles, look-alikes, segment favourites) are drawn from below twice this
    rank, so their extra traffic lifts them into the upper ranks but not past the head.
    """
    return max(10, n_clean // 50)


def _plant_structure(
    spec: SyntheticSpec, catalogue: _Catalogue, rng: np.random.Generator
) -> _Structure:
    """Plant look-alikes, bundles, segment favourites and trending products on distinct,
    not-top-popular products, then colour variants around the rest.

    Keeping the planted sets apart (and away from the most popular products) means each model
    is checked against one signal at a time and the planted popularity order stays on top.
    """
    clean = catalogue.clean
    free = rng.permutation(clean[catalogue.rank[clean] > 2 * _top_count(len(clean))]).tolist()
    lookalikes = _plant_lookalikes(catalogue, free, rng)
    bundles, bundle_weight = _plant_bundles(catalogue, free, rng)
    age_sets, age_aff, region_sets, region_aff = _plant_segment_favourites(catalogue, free, rng)
    trending = _plant_trending(catalogue, free, rng)
    planted = np.asarray([r for g in lookalikes + bundles for r in g], dtype=np.int64)
    variants = _plant_variants(
        catalogue, np.concatenate([planted, trending]), np.concatenate(age_sets + region_sets), rng
    )
    unknown = _object_ids(rng, max(5, spec.n_products // 100), spec.end_date, set(catalogue.hexes))
    return _Structure(
        bundles=bundles,
        bundle_weight=bundle_weight,
        lookalikes=lookalikes,
        variants=variants,
        trending=trending,
        age_favourites=age_sets,
        age_affinity=age_aff,
        region_favourites=region_sets,
        region_affinity=region_aff,
        unknown_hexes=unknown,
    )


def _segment_table(structure: _Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten segment favourites for sampling: members, cumulative weights, segment bounds.

    Segment `s = age_index * n_regions + region_index`. Within segment s the cumulative weights
    run over (s, s + 1], so one `searchsorted(cum, s + u)` samples any segment.
    """
    members, cums, bounds = [], [], [0]
    for a in range(len(AGE_LABELS)):
        for r in range(len(REGIONS)):
            rows = np.concatenate([structure.age_favourites[a], structure.region_favourites[r]])
            w = np.concatenate(
                [
                    0.6 * structure.age_affinity[a] / structure.age_affinity[a].sum(),
                    0.4 * structure.region_affinity[r] / structure.region_affinity[r].sum(),
                ]
            )
            cs = np.cumsum(w)
            members.append(rows)
            cums.append(len(cums) + cs / cs[-1])
            bounds.append(bounds[-1] + len(rows))
    return np.concatenate(members), np.concatenate(cums), np.asarray(bounds)


# --------------------------------------------------------------------------------------------
# product_data.csv
# --------------------------------------------------------------------------------------------


def _price_periods(
    original: float, rng: np.random.Generator, end: date, currency: str
) -> tuple[list[dict[str, Any]], float]:
    """Price periods of one product and its current price as of `end`.

    The original period is open-ended; discounts are expired, current (at most one, never
    starting or ending on `end` itself) or future, and always cheaper than the original.
    """
    start = end - timedelta(days=int(rng.integers(150, 700)))
    periods: list[dict[str, Any]] = [
        {
            "value": original,
            "currency": currency,
            "original": True,
            "valid_from": start.isoformat(),
            "valid_to": None,
        }
    ]
    current = original
    n_discounts = int(rng.choice(3, p=(0.45, 0.40, 0.15)))
    kinds = rng.choice(3, n_discounts, p=(0.45, 0.35, 0.20)).tolist()
    discounts = []
    for i, kind in enumerate(kinds):
        if kind == 0 and 0 in kinds[:i]:
            kind = 1
        pct = float(rng.choice((0.1, 0.2, 0.25, 0.3, 0.4, 0.5)))
        value = round(math.floor(original * (1 - pct)) + 0.99, 2)
        if kind == 0:
            valid_from = end - timedelta(days=int(rng.integers(1, 30)))
            valid_to = end + timedelta(days=int(rng.integers(1, 45)))
            current = value
        elif kind == 1:
            valid_to = end - timedelta(days=int(rng.integers(2, 120)))
            valid_from = max(start, valid_to - timedelta(days=int(rng.integers(7, 40))))
        else:
            valid_from = end + timedelta(days=int(rng.integers(2, 40)))
            valid_to = valid_from + timedelta(days=int(rng.integers(7, 30)))
        discounts.append(
            {
                "value": value,
                "currency": currency,
                "original": False,
                "valid_from": valid_from.isoformat(),
                "valid_to": valid_to.isoformat(),
            }
        )
    periods += sorted(discounts, key=lambda p: p["valid_from"])
    return periods, current


def _description(catalogue: _Catalogue, row: int) -> str:
    tag = str(catalogue.tag[row])
    plural = catalogue.noun[row] in PLURAL_NOUNS
    article = "A pair of" if plural else "An" if catalogue.color[row][0] in "aeiou" else "A"
    return DESCRIPTIONS[int(catalogue.template[row])].format(
        color=catalogue.color[row],
        material=str(catalogue.material[row]).lower(),
        style=str(catalogue.style[row]).lower(),
        noun=str(catalogue.noun[row]).lower(),
        audience=AUDIENCE_WORDS[str(catalogue.audience[row])],
        tag=tag,
        Tag=tag.capitalize(),
        Article=article,
        This="These" if plural else "This",
        comes="come" if plural else "comes",
    )


def _title(catalogue: _Catalogue, row: int) -> str:
    words = [
        str(catalogue.color[row]).title(),
        str(catalogue.material[row]),
        str(catalogue.style[row]),
        str(catalogue.noun[row]),
    ]
    if catalogue.suffix[row]:
        words.append(str(catalogue.suffix[row]))
    return " ".join(words)


def _attributes(
    catalogue: _Catalogue, row: int, rng: np.random.Generator, images: bool
) -> dict[str, Any]:
    dept = DEPARTMENTS[str(catalogue.department[row])]
    retailer_id = f"P{row:06d}"
    lo, hi = dept.measure_range
    popularity = catalogue.weight[row] / max(catalogue.weight.max(), 1e-12)
    attrs: dict[str, Any] = {
        "product_id": retailer_id,
        "sku": f"SKU-{retailer_id}-{dept.sizes[int(rng.integers(0, len(dept.sizes)))]}",
        "style_code": _style_code(catalogue, row),
        "product_url": f"https://shop.example.com/p/{retailer_id}",
        "review_rating": float(round(float(np.clip(rng.normal(4.1, 0.5), 1.0, 5.0)), 1)),
        "review_count": int(rng.poisson(3 + 400 * popularity)),
        "color": str(catalogue.color[row]),
        "images": [f"images/{catalogue.hexes[row]}.png"] if images else [],
        "measurements": f"{dept.measurement}: {int(rng.integers(lo, hi + 1))} cm",
        "availability": list(AVAILABILITY)[
            int(np.searchsorted(AVAILABILITY_CUM, rng.random(), side="right"))
        ],
        "care_instructions": dept.care[int(rng.integers(0, len(dept.care)))],
        "original_description": _description(catalogue, row),
    }
    missing = rng.random(len(attrs)) < OPTIONAL_ATTRIBUTE_MISSING
    for key, drop in zip(list(attrs), missing.tolist(), strict=True):
        if drop and key not in ("product_id", "style_code"):
            del attrs[key]
    return attrs


def _style_code(catalogue: _Catalogue, row: int) -> str:
    """The design a product belongs to, shared by its colour variants (one of its own if none)."""
    return f"ST{int(catalogue.variant_of[row]):06d}"


def _truncate(text: str, rng: np.random.Generator) -> str:
    """A proper prefix of a literal: what a cut-off export leaves behind (never parseable)."""
    return text[: int(rng.integers(5, max(6, len(text) - 2)))]


def _original_price(catalogue: _Catalogue, row: int) -> float:
    """A shop-like price (x.99) around the department's typical price; kids' items cost less."""
    dept = DEPARTMENTS[str(catalogue.department[row])]
    base = dept.base_price * (0.6 if catalogue.audience[row] == "kids" else 1.0)
    return round(max(9.0, math.floor(base * catalogue.price_factor[row])) + 0.99, 2)


def _damage(
    defect: str,
    cells: dict[str, str | None],
    periods: list[dict[str, Any]],
    attrs: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    """Give one product row its defect by rewriting the affected cell in place."""
    if defect == "bad_object_id":
        hexid = str(cells["id"])[10:-2]
        variants = ("ObjectId('xyz')", "ObjectId('')", f"ObjectId('{hexid[:20]}')", "undefined")
        cells["id"] = variants[int(rng.integers(0, len(variants)))]
    elif defect == "unparseable_price":
        cells["price"] = _truncate(str(cells["price"]), rng)
    elif defect == "bad_price_value":
        periods[0]["value"] = "N/A" if rng.random() < 0.5 else -periods[0]["value"]
        cells["price"] = repr(periods)
    elif defect == "empty_price":
        cells["price"] = "[]"
    elif defect == "unparseable_other_attributes":
        cells["other_attributes"] = _truncate(str(cells["other_attributes"]), rng)
    elif defect == "bad_review_rating":
        attrs["review_rating"] = ("abc", 7.5, -1.0)[int(rng.integers(0, 3))]
        cells["other_attributes"] = repr(attrs)
    elif defect == "missing_title":
        cells["title"] = None


def _product_rows(
    spec: SyntheticSpec, catalogue: _Catalogue, rng: np.random.Generator
) -> tuple[pl.DataFrame, pa.Table]:
    """Render product_data.csv's cells, defects included, and the true parsed values.

    The truth table has one row per CSV row: the id a clean parser should find, its defect
    (null when clean) and the values a correct parser extracts (current price as of end_date).
    """
    rows: list[dict[str, str | None]] = []
    truth: list[dict[str, Any]] = []
    for row in range(catalogue.n):
        original = _original_price(catalogue, row)
        periods, current = _price_periods(original, rng, spec.end_date, spec.currency)
        attrs = _attributes(catalogue, row, rng, spec.images)
        hexid = catalogue.hexes[int(catalogue.id_source[row])]
        cells: dict[str, str | None] = {
            "id": f"ObjectId('{hexid}')",
            "title": _title(catalogue, row),
            "target_audience": str(catalogue.audience[row]),
            "department": str(catalogue.department[row]),
            "price": repr(periods),
            "other_attributes": repr(attrs),
        }
        defect = str(catalogue.defect[row])
        _damage(defect, cells, periods, attrs, rng)
        rows.append(cells)
        truth.append(
            {
                "row": row,
                "product_id": hexid,
                "defect": defect or None,
                "title": cells["title"],
                "target_audience": cells["target_audience"],
                "department": cells["department"],
                "color": str(catalogue.color[row]),
                "style_code": _style_code(catalogue, row),
                "material": str(catalogue.material[row]),
                "style_tag": str(catalogue.tag[row]),
                "price": current,
                "original_price": original,
                "is_discounted": current < original,
                "currency": spec.currency,
                "popularity_rank": int(catalogue.rank[row]) or None,
            }
        )
    frame = pl.DataFrame(rows, schema=dict.fromkeys(PRODUCT_COLUMNS, pl.String))
    return frame, pa.Table.from_pylist(truth)


# --------------------------------------------------------------------------------------------
# Users and user_answers.csv
# --------------------------------------------------------------------------------------------


@dataclass
class _Users:
    ids: list[str]
    region: np.ndarray  # index into REGIONS
    city: np.ndarray
    birth: list[date]
    age: np.ndarray
    age_group: np.ndarray  # index into AGE_LABELS
    gender: np.ndarray
    channel: np.ndarray
    activity: np.ndarray  # relative session rate; 0 = never uses the app
    casual: np.ndarray  # opens one product a session, about CASUAL_SESSIONS sessions in all

    @property
    def segment(self) -> np.ndarray:
        return self.age_group * len(REGIONS) + self.region


def _draw_users(spec: SyntheticSpec, rng: np.random.Generator) -> _Users:
    """True demographics: age depends on region, channel on age, so both carry age signal."""
    n = spec.n_users
    region = rng.choice(len(REGIONS), n, p=np.asarray(REGION_SHARE) / sum(REGION_SHARE))
    city = np.empty(n, dtype=object)
    for r, cities in enumerate(REGIONS.values()):
        rows = np.nonzero(region == r)[0]
        city[rows] = _pick(rng, cities, [2.0] + [1.0] * (len(cities) - 1), len(rows))
    centre = (len(AGE_LABELS) - 1) / 2
    tilt = np.exp(
        0.35 * np.asarray(REGION_YOUTH)[:, None] * (centre - np.arange(len(AGE_LABELS)))[None, :]
    )
    group_p = np.asarray(AGE_GROUP_SHARE)[None, :] * tilt
    group_p /= group_p.sum(axis=1, keepdims=True)
    cum = np.cumsum(group_p, axis=1)[region]
    drawn = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), len(AGE_LABELS) - 1)
    lo = np.asarray([r[0] for r in AGE_RANGES])[drawn]
    hi = np.asarray([r[1] for r in AGE_RANGES])[drawn]
    nominal = lo + rng.random(n) * (hi - lo + 1)
    end = spec.end_date
    birth = [end - timedelta(days=int(a * 365.25)) for a in nominal.tolist()]
    age = np.asarray([end.year - b.year - ((end.month, end.day) < (b.month, b.day)) for b in birth])
    age_group = _age_group_index(age)
    channel = np.empty(n, dtype=object)
    for g, shares in enumerate(AGE_CHANNEL_SHARE):
        rows = np.nonzero(age_group == g)[0]
        channel[rows] = _pick(rng, SIGNUP_CHANNELS, shares, len(rows))
    app = rng.random(n) >= 0.10
    casual = app & (rng.random(n) < CASUAL_SHARE)
    activity = rng.lognormal(0.0, 1.0, n) * app
    # A casual rate r gives each casual shopper sessions * r / (regular + n_casual * r) sessions.
    sessions = spec.n_events * (1 - NOISE_SHARE) / EVENTS_PER_SESSION
    n_casual = int(casual.sum())
    spare = max(sessions - n_casual * CASUAL_SESSIONS, sessions / 2)
    activity[casual] = CASUAL_SESSIONS * (activity[~casual].sum() or 1.0) / spare
    return _Users(
        ids=[f"U{i:07d}" for i in range(n)],
        region=region,
        city=city,
        birth=birth,
        age=age,
        age_group=age_group,
        gender=_pick(rng, GENDERS, GENDER_SHARE, n),
        channel=channel,
        activity=activity,
        casual=casual,
    )


def _format_birth_date(day: date, fmt: int) -> str:
    y, m, d = day.year, day.month, day.day
    return (
        f"{y:04d}-{m:02d}-{d:02d}",
        f"{d:02d}/{m:02d}/{y:04d}",
        f"{d:02d}.{m:02d}.{y:04d}",
        f"{MONTHS[m - 1]} {d:02d}, {y:04d}",
        f"{y:04d}/{m:02d}/{d:02d}",
    )[fmt]


def _style_answer(age_group: int, rng: np.random.Generator) -> str:
    liked = AGE_STYLE_PREFERENCES[AGE_LABELS[age_group]]
    picks: list[str] = []
    for _ in range(1 + int(rng.random() < 0.4)):
        pool = liked if rng.random() < 0.8 else STYLE_TAGS
        choice = pool[int(rng.integers(0, len(pool)))]
        if choice not in picks:
            picks.append(choice)
    return ", ".join(p.capitalize() for p in picks)


def _answer_plan(
    spec: SyntheticSpec, n_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Which users answer which questions, exactly `n_rows` (user, question) pairs.

    About two thirds of users answer; each answers at least one question and never the same
    question twice (exact repeats are the duplicate_row defect).
    """
    n_users = spec.n_users
    answering = min(n_users, max(math.ceil(n_rows / 3), round(0.65 * n_users)), n_rows)
    users = np.sort(rng.choice(n_users, answering, replace=False))
    first = rng.choice(3, answering, p=(0.55, 0.25, 0.20))
    others = np.stack([(first + 1) % 3, (first + 2) % 3], axis=1).ravel()
    other_users = np.repeat(np.arange(answering), 2)
    priority = rng.random(2 * answering) * np.asarray((0.9, 0.6, 0.5))[others]
    keep = np.argsort(-priority, kind="stable")[: n_rows - answering]
    pair_user = np.concatenate([np.arange(answering), other_users[keep]])
    pair_question = np.concatenate([first, others[keep]])
    order = np.lexsort((rng.random(len(pair_user)), pair_user))
    return users[pair_user[order]], pair_question[order]


@dataclass
class _Answers:
    """user_answers.csv as a frame, its defects, and which users answered what."""

    frame: pl.DataFrame
    counts: dict[str, int]
    row_defect: list[str]  # per output row, "" when clean
    answered_birth: np.ndarray  # per user: gave a valid birth date
    answered_any: np.ndarray  # per user: has at least one row


def _answer_rows(spec: SyntheticSpec, users: _Users, rng: np.random.Generator) -> _Answers:
    """Build user_answers.csv: one row per (user, question), then the injected defects."""
    rates = spec.malformed
    n_dup = _count(rates.duplicate_row, spec.n_answers)
    n_base = spec.n_answers - n_dup
    user_of, question = _answer_plan(spec, n_base, rng)
    fmt = rng.integers(0, len(BIRTH_DATE_FORMATS), n_base)
    budget_draw = rng.random(n_base)
    blank = rng.random((n_base, 4))
    currency = spec.currency
    rows: list[list[str | None]] = []
    for i, (u, q) in enumerate(zip(user_of.tolist(), question.tolist(), strict=True)):
        group = int(users.age_group[u])
        if q == 0:
            answer = _format_birth_date(users.birth[u], int(fmt[i]))
        elif q == 1:
            answer = _style_answer(group, rng)
        else:
            b = int(np.searchsorted(np.cumsum(AGE_BUDGET_SHARE[group]), budget_draw[i]))
            answer = f"{BUDGETS[min(b, 3)]} {currency}"
        city = None if blank[i, 0] < 0.06 else str(users.city[u])
        region = None if city is not None and blank[i, 1] < 0.06 else list(REGIONS)[users.region[u]]
        rows.append(
            [
                users.ids[u],
                QUESTIONS[q],
                answer,
                city,
                region,
                None if blank[i, 2] < 0.03 else str(users.gender[u]),
                None if blank[i, 3] < 0.03 else str(users.channel[u]),
            ]
        )
    defect = np.full(n_base, "", dtype=object)
    birth_rows = np.nonzero(question == 0)[0]
    counts: dict[str, int] = {}
    chosen = rng.permutation(birth_rows)
    start = 0
    for name in ("impossible_birth_date", "unparseable_birth_date"):
        take = chosen[start : start + _count(getattr(rates, name), spec.n_answers)]
        start += len(take)
        defect[take] = name
        counts[name] = len(take)
        for i in take.tolist():
            rows[i][2] = _bad_birth_date(name, spec.end_date, rng)
    free = np.nonzero(defect == "")[0]
    take = rng.choice(free, min(_count(rates.missing_answer, spec.n_answers), len(free)), False)
    defect[take] = "missing_answer"
    counts["missing_answer"] = len(take)
    for i in take.tolist():
        rows[i][2] = None
    free = np.nonzero(defect == "")[0]
    sources = set(rng.choice(free, min(n_dup, len(free)), replace=False).tolist())
    counts["duplicate_row"] = len(sources)
    out: list[list[str | None]] = []
    out_defect: list[str] = []
    for i, row in enumerate(rows):
        out.append(row)
        out_defect.append(str(defect[i]))
        if i in sources:
            out.append(list(row))
            out_defect.append("duplicate_row")
    good_birth = (question == 0) & (defect == "")
    answered_birth = np.zeros(spec.n_users, dtype=bool)
    answered_birth[user_of[good_birth]] = True
    answered_any = np.zeros(spec.n_users, dtype=bool)
    answered_any[user_of] = True
    return _Answers(
        frame=pl.DataFrame(out, schema=dict.fromkeys(ANSWER_COLUMNS, pl.String), orient="row"),
        counts=counts,
        row_defect=out_defect,
        answered_birth=answered_birth,
        answered_any=answered_any,
    )


def _bad_birth_date(kind: str, end: date, rng: np.random.Generator) -> str:
    if kind == "unparseable_birth_date":
        return UNPARSEABLE_BIRTH_DATES[int(rng.integers(0, len(UNPARSEABLE_BIRTH_DATES)))]
    if rng.random() < 0.5:
        day = end + timedelta(days=int(rng.integers(30, 3 * 365)))
    else:
        day = date(1850, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    return _format_birth_date(day, int(rng.integers(0, len(BIRTH_DATE_FORMATS))))


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@dataclass
class _Sampler:
    """What a session needs to pick products: popularity, segments, bundles, similar items."""

    popular_rows: np.ndarray
    popular_cum: np.ndarray
    segment_members: np.ndarray
    segment_cum: np.ndarray
    segment_bounds: np.ndarray
    bundle_members: np.ndarray
    bundle_offset: np.ndarray
    bundle_size: np.ndarray
    bundle_cum: np.ndarray
    group_of: np.ndarray  # look-alike group position per product row, -1 if none
    group_members: np.ndarray
    group_offset: np.ndarray
    group_size: np.ndarray
    block_of: np.ndarray  # (audience, department) block per product row
    block_members: np.ndarray
    block_offset: np.ndarray
    block_size: np.ndarray
    variant_of: np.ndarray  # colour-variant group position per product row, -1 if none
    variant_members: np.ndarray
    variant_offset: np.ndarray
    variant_size: np.ndarray
    trend_rows: np.ndarray
    trend_start: float  # day of the window (from its start) when trending products take off
    days: int
    user_cum: np.ndarray
    user_segment: np.ndarray
    user_casual: np.ndarray
    # Favourite slot (user * PERSONAL_FAVOURITES + slot) in period `(day + phase) // length`
    # holds product favourite_table[slot, period].
    favourite_table: np.ndarray
    favourite_length: np.ndarray
    favourite_phase: np.ndarray
    taste_rng: np.random.Generator
    taste_share: float
    personal_share: float

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.popular_rows[np.searchsorted(self.popular_cum, rng.random(n), side="right")]

    def trending(self, rng: np.random.Generator, day: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Popularity picks on `day`, a growing share of them replaced by trending products."""
        ramp = np.clip((day - self.trend_start) / max(self.days - self.trend_start, 1.0), 0, 1)
        trend = rng.random(len(picks)) < TREND_PEAK * ramp
        chosen = self.trend_rows[rng.integers(0, len(self.trend_rows), len(picks))]
        return np.where(trend, chosen, picks)

    def segment(self, rng: np.random.Generator, segments: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.segment_cum, segments + rng.random(len(segments)), side="right")
        idx = np.clip(idx, self.segment_bounds[segments], self.segment_bounds[segments + 1] - 1)
        return self.segment_members[idx]

    def personal(
        self, users: np.ndarray, day: np.ndarray, picks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Picks of `users` on `day`, a share replaced by one of the user's favourites of the
        moment (sometimes a colour sibling of it); returns the products and which are theirs."""
        rng = self.taste_rng
        n = len(users)
        mine = rng.random(n) < self.personal_share
        slot = users * PERSONAL_FAVOURITES + rng.integers(0, PERSONAL_FAVOURITES, n)
        period = ((day + self.favourite_phase[slot]) // self.favourite_length[slot]).astype(int)
        favourite = self.favourite_table[slot, period]
        group = self.variant_of[favourite]
        sibling = np.nonzero((rng.random(n) < P_SIBLING) & (group >= 0))[0]
        favourite[sibling] = self._other_member(
            rng,
            favourite[sibling],
            group[sibling],
            self.variant_members,
            self.variant_offset,
            self.variant_size,
        )
        return np.where(mine, favourite, picks), mine

    def similar(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """A product shown as similar: a look-alike when there is one, else same audience+dept."""
        out = np.empty(len(rows), dtype=np.int64)
        group = self.group_of[rows]
        use_group = (group >= 0) & (rng.random(len(rows)) < P_LOOKALIKE_SIMILAR)
        g = group[use_group]
        out[use_group] = self._other_member(
            rng, rows[use_group], g, self.group_members, self.group_offset, self.group_size
        )
        rest = ~use_group
        b = self.block_of[rows[rest]]
        out[rest] = self._other_member(
            rng, rows[rest], b, self.block_members, self.block_offset, self.block_size
        )
        return out

    @staticmethod
    def _other_member(
        rng: np.random.Generator,
        rows: np.ndarray,
        group: np.ndarray,
        members: np.ndarray,
        offset: np.ndarray,
        size: np.ndarray,
    ) -> np.ndarray:
        """A random member of each row's group other than the row itself (if it has company)."""
        pick = offset[group] + (rng.random(len(rows)) * size[group]).astype(np.int64)
        chosen = members[pick]
        clash = (chosen == rows) & (size[group] > 1)
        nxt = offset[group] + (pick - offset[group] + 1) % np.maximum(size[group], 1)
        chosen[clash] = members[nxt[clash]]
        return chosen


def _grouped(
    labels: np.ndarray, rows: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Members sorted by group label, with offsets/sizes per group and each row's group."""
    order = np.argsort(labels, kind="stable")
    members = rows[order]
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    group_of = np.full(n_rows, -1, dtype=np.int64)
    group_of[rows] = labels
    return group_of, members, offsets, sizes


def _build_sampler(
    catalogue: _Catalogue, structure: _Structure, users: _Users, spec: SyntheticSpec
) -> _Sampler:
    clean = catalogue.clean
    cs = np.cumsum(catalogue.weight[clean])
    seg_members, seg_cum, seg_bounds = _segment_table(structure)
    bundle_members = np.asarray([r for b in structure.bundles for r in b], dtype=np.int64)
    bundle_size = np.asarray([len(b) for b in structure.bundles], dtype=np.int64)
    bundle_offset = np.concatenate([[0], np.cumsum(bundle_size)[:-1]]).astype(np.int64)
    look_rows = np.asarray([r for g in structure.lookalikes for r in g], dtype=np.int64)
    look_labels = np.repeat(
        np.arange(len(structure.lookalikes)), [len(g) for g in structure.lookalikes]
    )
    group_of, group_members, group_offset, group_size = _grouped(
        look_labels, look_rows, catalogue.n
    )
    keys = np.asarray(
        [
            f"{a}|{d}"
            for a, d in zip(catalogue.audience[clean], catalogue.department[clean], strict=True)
        ]
    )
    _, block_labels = np.unique(keys, return_inverse=True)
    block_of, block_members, block_offset, block_size = _grouped(block_labels, clean, catalogue.n)
    var_rows = np.asarray([r for g in structure.variants for r in g], dtype=np.int64)
    var_labels = np.repeat(
        np.arange(len(structure.variants)), [len(g) for g in structure.variants]
    ).astype(np.int64)
    variant_of, variant_members, variant_offset, variant_size = _grouped(
        var_labels, var_rows, catalogue.n
    )
    ucs = np.cumsum(users.activity)
    sampler = _Sampler(
        popular_rows=clean,
        popular_cum=cs / cs[-1],
        segment_members=seg_members,
        segment_cum=seg_cum,
        segment_bounds=seg_bounds,
        bundle_members=bundle_members,
        bundle_offset=bundle_offset,
        bundle_size=bundle_size,
        bundle_cum=np.cumsum(structure.bundle_weight),
        group_of=group_of,
        group_members=group_members,
        group_offset=group_offset,
        group_size=group_size,
        block_of=block_of,
        block_members=block_members,
        block_offset=block_offset,
        block_size=block_size,
        variant_of=variant_of,
        variant_members=variant_members,
        variant_offset=variant_offset,
        variant_size=variant_size,
        trend_rows=structure.trending,
        trend_start=float(max(0, spec.days - TREND_DAYS)),
        days=spec.days,
        user_cum=ucs / ucs[-1],
        user_segment=users.segment,
        user_casual=users.casual,
        favourite_table=np.zeros((0, 0), dtype=np.int64),
        favourite_length=np.zeros(0),
        favourite_phase=np.zeros(0),
        taste_rng=np.random.default_rng([spec.seed, 2]),
        taste_share=spec.taste_share,
        personal_share=spec.personal_share,
    )
    _draw_favourites(sampler, spec.days)
    return sampler


def _draw_favourites(sampler: _Sampler, days: int) -> None:
    """Every user's favourite slots: a length of one to four weeks and a product per period.

    Favourites are drawn like any other visit (segment or popularity), so returning to them
    changes who sees a product, not how popular it is.
    """
    rng = sampler.taste_rng
    n_slots = len(sampler.user_segment) * PERSONAL_FAVOURITES
    length = rng.uniform(*FAVOURITE_DAYS, n_slots)
    phase = rng.random(n_slots) * length
    n_periods = int(days // FAVOURITE_DAYS[0]) + 2
    segments = np.repeat(sampler.user_segment, PERSONAL_FAVOURITES * n_periods)
    from_segment = rng.random(len(segments)) < sampler.taste_share
    table = np.empty(len(segments), dtype=np.int64)
    table[from_segment] = sampler.segment(rng, segments[from_segment])
    table[~from_segment] = sampler.popular(rng, int((~from_segment).sum()))
    sampler.favourite_table = table.reshape(n_slots, n_periods)
    sampler.favourite_length, sampler.favourite_phase = length, phase


@dataclass
class _EventLog:
    """All event rows as arrays (product rows index the catalogue, -1 = no product)."""

    user: np.ndarray
    kind: np.ndarray
    ts: np.ndarray
    product: np.ndarray
    related: np.ndarray
    purchase: np.ndarray  # index into purchases, -1 for other events
    droppable: np.ndarray  # a lone, non-bundle view that may be removed to hit n_events
    item_purchase: np.ndarray  # one entry per purchased product, grouped by purchase
    item_product: np.ndarray
    session_user: np.ndarray
    session_start: np.ndarray
    session_duration: np.ndarray
    visit_offset: np.ndarray
    n_visits: np.ndarray
    visit_product: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


def _session_times(spec: SyntheticSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds from the window's start at which sessions begin: more activity in the evening
    and a little more every day. Drawn before the products, which depend on the day."""
    day_weight = 1.0 + 0.5 * (np.arange(spec.days) + 0.5) / spec.days
    day = rng.choice(spec.days, n, p=day_weight / day_weight.sum())
    hour_weight = np.asarray(HOUR_WEIGHTS)
    hour = rng.choice(24, n, p=hour_weight / hour_weight.sum())
    return day * 86400 + hour * 3600 + rng.integers(0, 3600, n)


def _session_starts(spec: SyntheticSpec, time: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Session start timestamps, moved earlier where a session would outlast the window."""
    window_end = _epoch(spec.end_date)
    window_start = window_end - spec.days * 86400
    return np.maximum(window_start, np.minimum(window_start + time, window_end - 1 - duration))


def _bundle_session_share(n_bundles: int) -> float:
    """Share of sessions spent on a bundle; smaller with few bundles, so that in a small
    catalogue no bundle product outsells the planted most popular products."""
    return P_BUNDLE_SESSION * min(1.0, n_bundles / 10)


@dataclass
class _Visits:
    """Product page visits of a batch of sessions, grouped by session in order."""

    user: np.ndarray  # per session
    time: np.ndarray  # per session: seconds from the window's start (before any clamping)
    is_bundle: np.ndarray  # per session
    n_visits: np.ndarray  # per session
    offset: np.ndarray  # per session: index of its first visit
    session: np.ndarray  # per visit
    product: np.ndarray  # per visit
    in_bundle: np.ndarray  # per visit
    personal: np.ndarray  # per visit: a return to one of the user's favourites (or a sibling)


def _draw_visits(
    spec: SyntheticSpec, n: int, sampler: _Sampler, rng: np.random.Generator
) -> _Visits:
    """Who browses, when, and which products they open.

    A bundle session opens every product of one bundle (plus up to two others); other visits
    follow the user's segment favourites or, more often, global popularity (trending products
    more and more toward the end), and a share of them return to one of the user's own
    favourites of the moment. A casual shopper's session opens one product.
    """
    user = np.searchsorted(sampler.user_cum, rng.random(n), side="right")
    time = _session_times(spec, rng, n)
    casual = sampler.user_casual[user]
    n_bundles = len(sampler.bundle_size)
    is_bundle = (rng.random(n) < _bundle_session_share(n_bundles)) & ~casual
    bundle = np.minimum(
        np.searchsorted(sampler.bundle_cum, rng.random(n), side="right"), max(n_bundles - 1, 0)
    )
    n_random = np.minimum(rng.geometric(1 - P_ANOTHER_VISIT, n), MAX_VISITS)
    n_random = np.where(is_bundle, np.minimum(n_random - 1, 2), np.where(casual, 1, n_random))
    n_bundle = np.where(is_bundle, sampler.bundle_size[bundle] if n_bundles else 0, 0)
    n_visits = n_bundle + n_random
    offset = np.cumsum(n_visits) - n_visits
    session = np.repeat(np.arange(n), n_visits)
    pos = np.arange(len(session)) - offset[session]
    in_bundle = pos < n_bundle[session]

    product = np.empty(len(session), dtype=np.int64)
    b = np.nonzero(in_bundle)[0]
    product[b] = sampler.bundle_members[sampler.bundle_offset[bundle[session[b]]] + pos[b]]
    r = np.nonzero(~in_bundle)[0]
    day = time[session[r]] / 86400
    from_segment = rng.random(len(r)) < sampler.taste_share
    seg_visits = r[from_segment]
    product[seg_visits] = sampler.segment(rng, sampler.user_segment[user[session[seg_visits]]])
    pop_visits = r[~from_segment]
    product[pop_visits] = sampler.trending(
        rng, day[~from_segment], sampler.popular(rng, len(pop_visits))
    )
    personal = np.zeros(len(session), dtype=bool)
    product[r], personal[r] = sampler.personal(user[session[r]], day, product[r])
    return _Visits(user, time, is_bundle, n_visits, offset, session, product, in_bundle, personal)


def _session_offsets(
    kind: np.ndarray, session: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds from session start for events listed session by session, in order.

    Moving to the next product takes longer than clicking a button on the same page.
    """
    gap = np.where(
        kind == VIEW,
        1 + rng.exponential(MEAN_VISIT_GAP_S, len(kind)),
        1 + rng.exponential(MEAN_ACTION_GAP_S, len(kind)),
    ).astype(np.int64)
    first = np.ones(len(kind), dtype=bool)
    first[1:] = session[1:] != session[:-1]
    gap[first] = 0
    cum = np.cumsum(gap)
    first_idx = np.nonzero(first)[0]
    offset = cum - cum[first_idx][session]
    last_offset = offset[np.concatenate([first_idx[1:], [len(kind)]]) - 1]
    return offset, last_offset


def _simulate_sessions(
    spec: SyntheticSpec, n: int, sampler: _Sampler, rng: np.random.Generator
) -> _EventLog:
    """Simulate `n` browsing sessions of interest events, all as whole arrays.

    Each visit is a page view, sometimes followed by a similar-item click, a heart and a bag
    click (bundle sessions bag the whole bundle); a session with bagged products sometimes ends
    in one purchase whose cell lists every bagged product.
    """
    visits = _draw_visits(spec, n, sampler, rng)
    v = len(visits.product)
    p_bag = np.where(visits.personal, P_BAG_PERSONAL, P_BAG)
    actions = np.stack(
        [
            np.ones(v, dtype=bool),
            rng.random(v) < P_SIMILAR,
            rng.random(v) < P_HEART,
            visits.in_bundle | (rng.random(v) < p_bag),
        ],
        axis=1,
    )
    ev_visit, ev_kind = np.nonzero(actions)
    ev_session = visits.session[ev_visit]
    offset, last_offset = _session_offsets(ev_kind, ev_session, rng)

    bagged = np.nonzero(actions[:, 3])[0]
    p_buy = np.where(visits.is_bundle, P_BUNDLE_PURCHASE, P_PURCHASE)
    buys = (np.bincount(visits.session[bagged], minlength=n) > 0) & (rng.random(n) < p_buy)
    items = bagged[buys[visits.session[bagged]]]
    # One entry per distinct product of an order, in the order it was bagged.
    key = visits.session[items] * len(sampler.group_of) + visits.product[items]
    items = items[np.sort(np.unique(key, return_index=True)[1])]
    buyer = np.nonzero(buys)[0]
    purchase_of_session = np.full(n, -1, dtype=np.int64)
    purchase_of_session[buyer] = np.arange(len(buyer))
    buy_offset = last_offset[buyer] + 20 + rng.exponential(60.0, len(buyer)).astype(np.int64)
    duration = last_offset.copy()
    duration[buyer] = buy_offset
    start = _session_starts(spec, visits.time, duration)

    e = len(ev_kind)
    related = np.full(e, -1, dtype=np.int64)
    similar = ev_kind == SIMILAR
    related[similar] = sampler.similar(rng, visits.product[ev_visit[similar]])
    alone = actions[ev_visit].sum(axis=1) == 1
    lone_view = (ev_kind == VIEW) & ~visits.in_bundle[ev_visit] & alone
    session = np.concatenate([ev_session, buyer])
    none = np.full(len(buyer), -1)
    return _EventLog(
        user=visits.user[session],
        kind=np.concatenate([ev_kind, np.full(len(buyer), PURCHASE)]),
        ts=start[session] + np.concatenate([offset, buy_offset]),
        product=np.concatenate([visits.product[ev_visit], none]),
        related=np.concatenate([related, none]),
        purchase=np.concatenate([np.full(e, -1), np.arange(len(buyer))]),
        droppable=np.concatenate([lone_view, np.zeros(len(buyer), dtype=bool)]),
        item_purchase=purchase_of_session[visits.session[items]],
        item_product=visits.product[items],
        session_user=visits.user,
        session_start=start,
        session_duration=duration,
        visit_offset=visits.offset,
        n_visits=visits.n_visits,
        visit_product=visits.product,
    )


def _concat_logs(logs: list[_EventLog]) -> _EventLog:
    """Join session batches, shifting purchase and visit indices to stay globally unique."""
    if len(logs) == 1:
        return logs[0]
    n_purchases = np.cumsum([0] + [int((log.kind == PURCHASE).sum()) for log in logs])
    n_visits = np.cumsum([0] + [len(log.visit_product) for log in logs])
    for log, shift_p, shift_v in zip(logs, n_purchases, n_visits, strict=False):
        log.purchase = np.where(log.purchase >= 0, log.purchase + shift_p, -1)
        log.item_purchase = log.item_purchase + shift_p
        log.visit_offset = log.visit_offset + shift_v
    return _EventLog(
        **{f.name: np.concatenate([getattr(log, f.name) for log in logs]) for f in fields(logs[0])}
    )


def _filter_log(log: _EventLog, keep: np.ndarray) -> _EventLog:
    """Keep only the event rows in `keep` (session, visit and purchase tables are untouched)."""
    per_event = ("user", "kind", "ts", "product", "related", "purchase", "droppable")
    values = {f.name: getattr(log, f.name) for f in fields(log)}
    values.update({name: values[name][keep] for name in per_event})
    return _EventLog(**values)


def _simulate_events(spec: SyntheticSpec, sampler: _Sampler, rng: np.random.Generator) -> _EventLog:
    """Exactly spec.n_events rows: sessions of interest events plus noise, in time order."""
    n_noise = round(NOISE_SHARE * spec.n_events)
    n_interest = spec.n_events - n_noise
    logs: list[_EventLog] = []
    total = 0
    while total < n_interest:
        batch = int((n_interest - total) / EVENTS_PER_SESSION * 1.04) + 16
        logs.append(_simulate_sessions(spec, batch, sampler, rng))
        total += len(logs[-1])
    log = _concat_logs(logs)
    excess = total - n_interest
    candidates = np.nonzero(log.droppable)[0]
    if len(candidates) < excess:
        candidates = np.nonzero(log.kind == VIEW)[0]
    keep = np.ones(total, dtype=bool)
    keep[rng.choice(candidates, excess, replace=False)] = False
    log = _filter_log(log, keep)

    sessions = rng.integers(0, len(log.session_user), n_noise)
    noise_kind = rng.choice(
        list(NOISE_KIND_SHARE), n_noise, p=np.asarray(list(NOISE_KIND_SHARE.values()))
    )
    # The app opens just before a session; other noise falls anywhere during it.
    noise_ts = np.where(
        noise_kind == APP_OPEN,
        log.session_start[sessions] - rng.integers(1, 90, n_noise),
        log.session_start[sessions]
        + (rng.random(n_noise) * (log.session_duration[sessions] + 30)).astype(np.int64),
    )
    visit = log.visit_offset[sessions] + (rng.random(n_noise) * log.n_visits[sessions]).astype(
        np.int64
    )
    noise_product = np.where(noise_kind == SHARE, log.visit_product[visit], -1)
    none = np.full(n_noise, -1)
    values = {f.name: getattr(log, f.name) for f in fields(log)}
    for name, extra in (
        ("user", log.session_user[sessions]),
        ("kind", noise_kind),
        ("ts", noise_ts),
        ("product", noise_product),
        ("related", none),
        ("purchase", none),
        ("droppable", np.zeros(n_noise, dtype=bool)),
    ):
        values[name] = np.concatenate([values[name], extra])
    log = _EventLog(**values)
    window_end = _epoch(spec.end_date)
    log.ts = np.clip(log.ts, window_end - spec.days * 86400, window_end - 1)
    order = np.lexsort((np.arange(len(log)), log.ts))
    return _filter_log(log, order)


def _assign_event_defects(
    spec: SyntheticSpec, log: _EventLog, rng: np.random.Generator
) -> np.ndarray:
    """Per row, 0 or 1 + the index of its defect in EVENT_DEFECTS; only events of interest.

    Product-cell defects go on single-product events (views, hearts, bags) so each defective
    row holds exactly one bad value and no good id beside it.
    """
    n = len(log)
    code = np.zeros(n, dtype=np.int8)
    counts = [_count(getattr(spec.malformed, name), n) for name in EVENT_DEFECTS]
    single = np.nonzero(np.isin(log.kind, (VIEW, HEART, BAG)))[0]
    chosen = rng.choice(single, min(sum(counts[:3]), len(single)), replace=False)
    start = 0
    for i in range(3):
        code[chosen[start : start + counts[i]]] = i + 1
        start += counts[i]
    rest = np.nonzero((log.kind <= PURCHASE) & (code == 0))[0]
    chosen = rng.choice(rest, min(sum(counts[3:]), len(rest)), replace=False)
    start = 0
    for i in range(3, 5):
        code[chosen[start : start + counts[i]]] = i + 1
        start += counts[i]
    return code


SINGLE_CELL_STYLE_SHARE = (0.55, 0.12, 0.08, 0.10, 0.15)
MULTI_CELL_STYLE_SHARE = (0.35, 0.15, 0.15, 0.15, 0.20)


def _single_cell(hexid: pl.Expr, style: pl.Expr) -> pl.Expr:
    """One id in one of the export's styles: hex, ['hex'], ["hex"], ' #hex ', p:hex."""
    return (
        pl.when(style == 0)
        .then(hexid)
        .when(style == 1)
        .then(pl.concat_str([pl.lit("['"), hexid, pl.lit("']")]))
        .when(style == 2)
        .then(pl.concat_str([pl.lit('["'), hexid, pl.lit('"]')]))
        .when(style == 3)
        .then(pl.concat_str([pl.lit(" #"), hexid, pl.lit(" ")]))
        .otherwise(pl.concat_str([pl.lit("p:"), hexid]))
    )


def _purchase_cells(log: _EventLog, hexes: pl.Series, rng: np.random.Generator) -> pl.Series:
    """One cell per purchase listing all its products: a list literal or a separated string."""
    n_purchases = int(log.item_purchase.max()) + 1 if len(log.item_purchase) else 0
    items = pl.DataFrame({"purchase": log.item_purchase, "hex": hexes.gather(log.item_product)})
    lists = items.group_by("purchase", maintain_order=True).agg(pl.col("hex"))
    style = pl.Series("style", rng.choice(5, n_purchases, p=MULTI_CELL_STYLE_SHARE))
    ids = pl.col("hex")
    cells = lists.with_columns(style).select(
        pl.when(pl.col("style") == 0)
        .then(pl.concat_str([pl.lit("['"), ids.list.join("', '"), pl.lit("']")]))
        .when(pl.col("style") == 1)
        .then(pl.concat_str([pl.lit('["'), ids.list.join('","'), pl.lit('"]')]))
        .when(pl.col("style") == 2)
        .then(ids.list.join("|"))
        .when(pl.col("style") == 3)
        .then(ids.list.join(";"))
        .otherwise(ids.list.join(", "))
        .alias("cell")
    )
    return cells.get_column("cell")


@dataclass
class _EventCells:
    """What rendering the event rows draws at random, drawn once for the whole log (in the
    order the rows' strings always drew it) so that the rows can be rendered a file at a
    time: the whole log as strings took about 0.45 KiB a row, more than 24 GiB at 30x the
    demo, where one file's share stays a few GiB."""

    hexes: pl.Series
    purchase_cells: pl.Series
    p_style: np.ndarray
    r_style: np.ndarray
    # (column, rows of the log, the values written over them)
    edits: list[tuple[str, np.ndarray, pl.Series]]


def _draw_event_cells(
    log: _EventLog,
    defect: np.ndarray,
    hexes: list[str],
    unknown_hexes: list[str],
    rng: np.random.Generator,
) -> _EventCells:
    """The export's random choices for every row: id styles, purchase cells, defect values."""
    n = len(log)
    hex_series = pl.Series("hex", hexes, dtype=pl.String)
    purchase_cells = _purchase_cells(log, hex_series, rng)
    p_style = rng.choice(5, n, p=SINGLE_CELL_STYLE_SHARE).astype(np.int8)
    r_style = rng.choice(5, n, p=SINGLE_CELL_STYLE_SHARE).astype(np.int8)
    return _EventCells(
        hex_series, purchase_cells, p_style, r_style, _event_edits(defect, unknown_hexes, rng)
    )


def _event_rows(log: _EventLog, cells: _EventCells, lo: int, hi: int) -> pl.DataFrame:
    """Rows `lo:hi` of the log as the export's strings, defects included."""
    names = pl.Series([k[0] for k in EVENT_KINDS], dtype=pl.String)
    buttons = pl.Series([k[1] for k in EVENT_KINDS], dtype=pl.String)
    kind, product, related = log.kind[lo:hi], log.product[lo:hi], log.related[lo:hi]
    purchase = log.purchase[lo:hi]
    has_purchase = purchase >= 0
    frame = pl.DataFrame(
        {
            "user": log.user[lo:hi],
            "ts": log.ts[lo:hi],
            "event_name": names.gather(kind),
            "button_name": buttons.gather(kind),
            "p_hex": cells.hexes.gather(np.maximum(product, 0)),
            "r_hex": cells.hexes.gather(np.maximum(related, 0)),
            "p_style": cells.p_style[lo:hi],
            "r_style": cells.r_style[lo:hi],
            "has_p": product >= 0,
            "has_r": related >= 0,
            "has_purchase": has_purchase,
            "purchase_cell": cells.purchase_cells.gather(np.where(has_purchase, purchase, 0))
            if len(cells.purchase_cells)
            else pl.Series([None] * (hi - lo), dtype=pl.String),
        }
    )
    frame = frame.select(
        pl.concat_str([pl.lit("U"), pl.col("user").cast(pl.String).str.zfill(7)]).alias("user_id"),
        "event_name",
        "button_name",
        pl.from_epoch("ts", time_unit="s")
        .dt.strftime("%Y-%m-%d %H:%M:%S")
        .alias("event_timestamp"),
        pl.when("has_purchase")
        .then(pl.col("purchase_cell"))
        .when("has_p")
        .then(_single_cell(pl.col("p_hex"), pl.col("p_style")))
        .alias("product_id"),
        pl.when("has_r")
        .then(_single_cell(pl.col("r_hex"), pl.col("r_style")))
        .alias("related_product_ids"),
    )
    columns = {name: frame.get_column(name) for name in frame.columns}
    for column, rows, values in cells.edits:
        inside = (rows >= lo) & (rows < hi)
        if inside.any():
            columns[column] = columns[column].scatter(rows[inside] - lo, values.filter(inside))
    return pl.DataFrame(columns).select(EVENT_COLUMNS)


def _event_edits(
    defect: np.ndarray, unknown_hexes: list[str], rng: np.random.Generator
) -> list[tuple[str, np.ndarray, pl.Series]]:
    """The cells of defective rows: unknown ids, garbage, blanks, bad timestamps."""
    rows = {name: np.nonzero(defect == i + 1)[0] for i, name in enumerate(EVENT_DEFECTS)}
    styles = ("{}", "['{}']", "p:{}")
    unknown = [
        styles[int(rng.integers(0, len(styles)))].format(
            unknown_hexes[int(rng.integers(0, len(unknown_hexes)))]
        )
        for _ in range(len(rows["unknown_product_id"]))
    ]
    garbage = rng.choice(GARBAGE_CELLS, len(rows["garbage_product_cell"])).tolist()
    edits = (
        ("product_id", "unknown_product_id", unknown),
        ("product_id", "garbage_product_cell", garbage),
        ("product_id", "empty_product_cell", [None] * len(rows["empty_product_cell"])),
        (
            "event_timestamp",
            "bad_timestamp",
            rng.choice(BAD_TIMESTAMPS, len(rows["bad_timestamp"])).tolist(),
        ),
        ("user_id", "missing_user_id", [None] * len(rows["missing_user_id"])),
    )
    return [
        (column, rows[name], pl.Series(values, dtype=pl.String))
        for column, name, values in edits
        if len(rows[name])
    ]


# --------------------------------------------------------------------------------------------
# Truth tables
# --------------------------------------------------------------------------------------------


def _users_table(users: _Users, answers: _Answers, has_events: np.ndarray) -> pa.Table:
    regions = list(REGIONS)
    age_group = [AGE_LABELS[g] for g in users.age_group.tolist()]
    region = [regions[r] for r in users.region.tolist()]
    return pa.table(
        {
            "user_id": pa.array(users.ids, pa.string()),
            "birth_date": pa.array(users.birth, pa.date32()),
            "age": pa.array(users.age, pa.int32()),
            "age_group": pa.array(age_group, pa.string()),
            "region": pa.array(region, pa.string()),
            "city": pa.array(users.city.tolist(), pa.string()),
            "gender": pa.array(users.gender.tolist(), pa.string()),
            "signup_channel": pa.array(users.channel.tolist(), pa.string()),
            "answered_birth_date": pa.array(answers.answered_birth, pa.bool_()),
            "answered_any": pa.array(answers.answered_any, pa.bool_()),
            "has_events": pa.array(has_events, pa.bool_()),
            "segment": pa.array([f"{a}|{r}" for a, r in zip(age_group, region, strict=True)]),
        }
    )


def _segments_table(structure: _Structure, hexes: list[str]) -> pa.Table:
    """One row per (age group, region, product) with the product's share of segment picks."""
    members, cum, bounds = _segment_table(structure)
    regions = list(REGIONS)
    rows: dict[tuple[str, str, str], float] = {}
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        weights = np.diff(np.concatenate([[s], cum[lo:hi]]))
        for row, w in zip(members[lo:hi].tolist(), weights.tolist(), strict=True):
            key = (AGE_LABELS[s // len(regions)], regions[s % len(regions)], hexes[row])
            rows[key] = rows.get(key, 0.0) + w
    keys = list(rows)
    return pa.table(
        {
            "age_group": [k[0] for k in keys],
            "region": [k[1] for k in keys],
            "product_id": [k[2] for k in keys],
            "affinity": pa.array([rows[k] for k in keys], pa.float64()),
        }
    )


def _membership_table(id_name: str, groups: list[list[int]], hexes: list[str]) -> pa.Table:
    return pa.table(
        {
            id_name: pa.array([i for i, g in enumerate(groups) for _ in g], pa.int32()),
            "product_id": pa.array([hexes[r] for g in groups for r in g], pa.string()),
        }
    )


def _variants_table(catalogue: _Catalogue, structure: _Structure) -> pa.Table:
    """One row per product of a colour-variant group: its group (the shared style_code)."""
    rows = [r for g in structure.variants for r in g]
    return pa.table(
        {
            "product_id": pa.array([catalogue.hexes[r] for r in rows], pa.string()),
            "group": pa.array([_style_code(catalogue, r) for r in rows], pa.string()),
        }
    )


def _popular_table(catalogue: _Catalogue) -> pa.Table:
    clean = catalogue.clean
    order = clean[np.argsort(catalogue.rank[clean])]
    share = catalogue.weight[order] / catalogue.weight[order].sum()
    return pa.table(
        {
            "product_id": pa.array([catalogue.hexes[r] for r in order.tolist()], pa.string()),
            "rank": pa.array(catalogue.rank[order], pa.int32()),
            "base_popularity": pa.array(share, pa.float64()),
        }
    )


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------


def _image_recipes(catalogue: _Catalogue, rng: np.random.Generator) -> list[ImageRecipe]:
    n = catalogue.n
    scale = rng.uniform(0.88, 1.04, n)
    shift = rng.uniform(-2.0, 2.0, (n, 2))
    tint = rng.integers(-12, 13, n)
    patterns = {"Striped", "Polka-Dot", "Floral", "Plaid"}
    return [
        ImageRecipe(
            filename=f"{catalogue.hexes[row]}.png",
            department=str(catalogue.department[row]),
            rgb=COLOR_RGB[str(catalogue.color[row])],
            pattern=str(catalogue.material[row]) if catalogue.material[row] in patterns else "",
            scale=float(scale[row]),
            dx=float(shift[row, 0]),
            dy=float(shift[row, 1]),
            tint=int(tint[row]),
        )
        for row in range(n)
    ]


def _event_file_bounds(n: int, files: int) -> list[tuple[int, int]]:
    sizes = [n // files + (1 if i < n % files else 0) for i in range(files)]
    ends = np.cumsum(sizes).tolist()
    return [(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def _write_events(
    spec: SyntheticSpec,
    log: _EventLog,
    cells: _EventCells,
    defect: np.ndarray,
    out_dir: Path,
) -> tuple[dict[str, int], dict[str, dict[str, int]], list[tuple[str, int, str]]]:
    """Split the time-ordered rows into consecutive files, each rendered on its own; count
    defects per file."""
    rows, malformed, defect_rows = {}, {}, []
    for i, (lo, hi) in enumerate(_event_file_bounds(len(log), spec.n_event_files), start=1):
        name = f"events_{i}.csv"
        rows[name] = _write_csv(_event_rows(log, cells, lo, hi), out_dir / name)
        part = defect[lo:hi]
        malformed[name] = {d: int((part == k + 1).sum()) for k, d in enumerate(EVENT_DEFECTS)}
        for row in np.nonzero(part)[0].tolist():
            defect_rows.append((name, row, EVENT_DEFECTS[int(part[row]) - 1]))
    return rows, malformed, defect_rows


def generate(spec: SyntheticSpec, out_dir: Path) -> dict[str, Any]:
    """Write the synthetic retailer's raw exports and planted truth under `out_dir`.

    Returns (and saves as truth/summary.json) a JSON-able summary: the spec, files written with
    row counts, event counts by kind, planted-truth counts and malformed counts per file.
    Files of an earlier generation that this spec does not write (a third event file, pictures
    of other products) are left alone: generate into an empty directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_dir = out_dir / "truth"
    began = time.perf_counter()
    streams = np.random.SeedSequence(spec.seed).spawn(5)
    rng_catalogue, rng_users, rng_answers, rng_events, rng_images = (
        np.random.default_rng(s) for s in streams
    )

    catalogue = _draw_catalogue(spec, rng_catalogue)
    product_defects = _assign_product_defects(spec, catalogue, rng_catalogue)
    _assign_popularity(catalogue, rng_catalogue)
    structure = _plant_structure(spec, catalogue, rng_catalogue)
    products, products_truth = _product_rows(spec, catalogue, rng_catalogue)
    files = {"product_data.csv": _write_csv(products, out_dir / "product_data.csv")}
    log.info("catalogue: %d products written (%.1fs)", products.height, time.perf_counter() - began)

    users = _draw_users(spec, rng_users)
    answers = _answer_rows(spec, users, rng_answers)
    files["user_answers.csv"] = _write_csv(answers.frame, out_dir / "user_answers.csv")
    log.info("answers: %d rows written (%.1fs)", answers.frame.height, time.perf_counter() - began)

    sampler = _build_sampler(catalogue, structure, users, spec)
    events = _simulate_events(spec, sampler, rng_events)
    event_defects = _assign_event_defects(spec, events, rng_events)
    cells = _draw_event_cells(
        events, event_defects, catalogue.hexes, structure.unknown_hexes, rng_events
    )
    event_rows, event_malformed, event_defect_rows = _write_events(
        spec, events, cells, event_defects, out_dir
    )
    files.update(event_rows)
    log.info("events: %d rows written (%.1fs)", len(events), time.perf_counter() - began)

    n_images = 0
    if spec.images:
        n_images = write_images(_image_recipes(catalogue, rng_images), out_dir / "images")
        log.info("images: %d written (%.1fs)", n_images, time.perf_counter() - began)

    malformed = {
        "product_data.csv": product_defects,
        **event_malformed,
        "user_answers.csv": answers.counts,
    }
    summary = _summary(spec, files, n_images, events, structure, users, answers, malformed)
    _write_truth(truth_dir, catalogue, structure, users, answers, _has_events(events, spec.n_users))
    write_table(products_truth, truth_dir / "products.parquet")
    write_table(
        _defect_rows_table(catalogue, answers, event_defect_rows),
        truth_dir / "malformed_rows.parquet",
    )
    write_json(malformed, truth_dir / "malformed.json")
    write_json(summary, truth_dir / "summary.json")
    log.info("synthetic retailer written to %s in %.1fs", out_dir, time.perf_counter() - began)
    return summary


def _defect_rows_table(
    catalogue: _Catalogue, answers: _Answers, event_rows: list[tuple[str, int, str]]
) -> pa.Table:
    """Every injected defect: file, 0-based data row (header excluded) and defect class."""
    records = [
        ("product_data.csv", row, str(catalogue.defect[row]))
        for row in np.nonzero(catalogue.defect != "")[0].tolist()
    ]
    records += [("user_answers.csv", row, d) for row, d in enumerate(answers.row_defect) if d]
    records += event_rows
    return pa.table(
        {
            "file": pa.array([r[0] for r in records], pa.string()),
            "row": pa.array([r[1] for r in records], pa.int64()),
            "defect": pa.array([r[2] for r in records], pa.string()),
        }
    )


def _has_events(events: _EventLog, n_users: int) -> np.ndarray:
    """Per user: has at least one event (the rest are cold-start users)."""
    return np.bincount(events.session_user, minlength=n_users) > 0


def _write_truth(
    truth_dir: Path,
    catalogue: _Catalogue,
    structure: _Structure,
    users: _Users,
    answers: _Answers,
    has_events: np.ndarray,
) -> None:
    hexes = catalogue.hexes
    write_table(
        _membership_table("bundle_id", structure.bundles, hexes), truth_dir / "bundles.parquet"
    )
    write_table(
        _membership_table("group_id", structure.lookalikes, hexes), truth_dir / "lookalikes.parquet"
    )
    write_table(_variants_table(catalogue, structure), truth_dir / "variant_groups.parquet")
    write_table(
        pa.table({"product_id": pa.array([hexes[r] for r in structure.trending.tolist()])}),
        truth_dir / "trending.parquet",
    )
    write_table(_segments_table(structure, hexes), truth_dir / "segments.parquet")
    write_table(
        _users_table(users, answers, has_events),
        truth_dir / "users.parquet",
    )
    write_table(_popular_table(catalogue), truth_dir / "popular.parquet")


def _summary(
    spec: SyntheticSpec,
    files: dict[str, int],
    n_images: int,
    events: _EventLog,
    structure: _Structure,
    users: _Users,
    answers: _Answers,
    malformed: dict[str, dict[str, int]],
) -> dict[str, Any]:
    kinds = np.bincount(events.kind, minlength=len(EVENT_KINDS))
    casual = users.casual & _has_events(events, spec.n_users)
    by_kind = {
        name if button is None else f"{name}/{button}": int(kinds[i])
        for i, (name, button) in enumerate(EVENT_KINDS)
    }
    return {
        "spec": spec.to_dict(),
        "files": files,
        "images": n_images,
        "events_by_kind": by_kind,
        "truth": {
            "bundles": len(structure.bundles),
            "bundle_products": sum(len(b) for b in structure.bundles),
            "lookalike_groups": len(structure.lookalikes),
            "lookalike_products": sum(len(g) for g in structure.lookalikes),
            "variant_groups": len(structure.variants),
            "variant_products": sum(len(g) for g in structure.variants),
            "trending_products": len(structure.trending),
            "segments": len(AGE_LABELS) * len(REGIONS),
            "users": spec.n_users,
            "active_users": int(_has_events(events, spec.n_users).sum()),
            "casual_users": int(casual.sum()),
            "users_with_answers": int(answers.answered_any.sum()),
            "users_with_birth_date": int(answers.answered_birth.sum()),
            "purchases": int(kinds[PURCHASE]),
            "unknown_product_ids": len(structure.unknown_hexes),
        },
        "malformed": malformed,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(
        prog="python -m fashion_recs.synthetic",
        description="Write a synthetic fashion retailer's raw exports with planted truth.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--products", type=int, default=defaults.n_products)
    parser.add_argument("--users", type=int, default=defaults.n_users)
    parser.add_argument("--events", type=int, default=defaults.n_events)
    parser.add_argument(
        "--answers",
        type=int,
        default=None,
        help=f"answer rows (default: {ANSWERS_PER_USER} per user, {defaults.n_answers} for "
        f"{defaults.n_users} users)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--end-date",
        type=date.fromisoformat,
        default=defaults.end_date,
        help="events fall in the --days days before this date (YYYY-MM-DD)",
    )
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--event-files", type=int, default=defaults.n_event_files)
    parser.add_argument("--currency", default=defaults.currency)
    parser.add_argument("--no-images", action="store_true", help="skip the product pictures")
    parser.add_argument(
        "--malformed-scale",
        type=float,
        default=1.0,
        help="multiply every malformed-row rate (0 = clean files)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        spec = SyntheticSpec(
            n_products=args.products,
            n_users=args.users,
            n_events=args.events,
            n_answers=round(ANSWERS_PER_USER * args.users)
            if args.answers is None
            else args.answers,
            seed=args.seed,
            end_date=args.end_date,
            days=args.days,
            n_event_files=args.event_files,
            images=not args.no_images,
            currency=args.currency,
            malformed=MalformedRates().scaled(args.malformed_scale),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = generate(spec, args.out)
    print(
        json.dumps({"out": str(args.out), "files": summary["files"], "images": summary["images"]})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
