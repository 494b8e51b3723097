"""The synthetic retailer: exact raw formats, determinism, and planted truth really there."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fashion_recs.synthetic import (
    ANSWER_DEFECTS,
    BIRTH_DATE_FORMATS,
    EVENT_DEFECTS,
    GARBAGE_CELLS,
    PRODUCT_DEFECTS,
    QUESTION_BIRTH_DATE,
    MalformedRates,
    SyntheticSpec,
    generate,
    main,
)

# Small, with defect rates raised so every defect class appears a few times.
SPEC = SyntheticSpec(
    n_products=200,
    n_users=300,
    n_events=20_000,
    n_answers=400,
    seed=11,
    malformed=MalformedRates().scaled(5),
    # In a 200-product catalogue a segment's handful of favourites would outweigh the planted
    # popularity tail that these tests check; the default share is for realistic sizes.
    taste_share=0.3,
)
ID_PATTERN = re.compile(r"[a-zA-Z0-9]{3,}")
OBJECT_ID = re.compile(r"^ObjectId\('([0-9a-f]{24})'\)$")
HEX = re.compile(r"^[0-9a-f]{24}$")
EVENT_FILES = ("events_1.csv", "events_2.csv")
INTEREST_EVENTS = {"product_details_page_view", "product_similar_items_clicking", "purchase"}
INTEREST_BUTTONS = {"heart_button", "bag_button"}
SINGLE_PRODUCT_EVENTS = {"product_details_page_view", "button_click"}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic")
    generate(SPEC, path)
    return path


@pytest.fixture(scope="module")
def malformed(out: Path) -> dict[str, dict[str, int]]:
    return json.loads((out / "truth" / "malformed.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _header(path: Path) -> str:
    with path.open() as handle:
        return handle.readline().rstrip("\n")


def _truth(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / "truth" / f"{name}.parquet").to_pylist()


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _catalogue(out: Path) -> set[str]:
    """Hexes of the catalogue's clean rows: the only products events may reference."""
    defects = {r["row"] for r in _truth(out, "malformed_rows") if r["file"] == "product_data.csv"}
    ids = set()
    for i, row in enumerate(_rows(out / "product_data.csv")):
        if i not in defects:
            ids.add(OBJECT_ID.match(row["id"]).group(1))
    return ids


def _interest(row: dict[str, str]) -> bool:
    return row["event_name"] in INTEREST_EVENTS or row["button_name"] in INTEREST_BUTTONS


def _events(out: Path) -> list[dict[str, str]]:
    return [row for name in EVENT_FILES for row in _rows(out / name)]


def _parse_ts(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _product_defect(row: dict[str, str], seen_ids: set[str]) -> str:
    """Which defect a product_data.csv row shows, judged from the text alone ("" = clean)."""
    match = OBJECT_ID.match(row["id"])
    if not match:
        return "bad_object_id"
    if match.group(1) in seen_ids:
        return "duplicate_id"
    seen_ids.add(match.group(1))
    try:
        periods = ast.literal_eval(row["price"])
    except (ValueError, SyntaxError):
        return "unparseable_price"
    if periods == []:
        return "empty_price"
    if any(not isinstance(p["value"], float) or p["value"] <= 0 for p in periods):
        return "bad_price_value"
    try:
        attrs = ast.literal_eval(row["other_attributes"])
    except (ValueError, SyntaxError):
        return "unparseable_other_attributes"
    rating = attrs.get("review_rating", 0.0)
    if not isinstance(rating, float) or not 0 <= rating <= 5:
        return "bad_review_rating"
    if not row["title"]:
        return "missing_title"
    return ""


def _parse_birth_date(text: str) -> tuple[date, str] | None:
    for fmt in BIRTH_DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date(), fmt
        except ValueError:
            continue
    return None


def _answer_defect(row: dict[str, str], seen: set[tuple], end: date) -> str:
    key = tuple(row.values())
    if key in seen:
        return "duplicate_row"
    seen.add(key)
    if not row["Answer"]:
        return "missing_answer"
    if row["Question"] != QUESTION_BIRTH_DATE:
        return ""
    parsed = _parse_birth_date(row["Answer"])
    if parsed is None:
        return "unparseable_birth_date"
    if parsed[0] > end or parsed[0].year < 1900:
        return "impossible_birth_date"
    return ""


def test_files_have_the_contract_headers(out: Path) -> None:
    assert _header(out / "product_data.csv") == (
        "id,title,target_audience,department,price,other_attributes"
    )
    for name in EVENT_FILES:
        assert _header(out / name) == (
            "user_id,event_name,button_name,event_timestamp,product_id,related_product_ids"
        )
    assert _header(out / "user_answers.csv") == (
        "User_ID,Question,Answer,city,region,gender,signup_channel"
    )


def test_row_counts_match_the_spec_and_summary(out: Path) -> None:
    summary = json.loads((out / "truth" / "summary.json").read_text())
    assert summary["files"] == {
        "product_data.csv": SPEC.n_products,
        "events_1.csv": SPEC.n_events // 2,
        "events_2.csv": SPEC.n_events // 2,
        "user_answers.csv": SPEC.n_answers,
    }
    assert len(_rows(out / "product_data.csv")) == SPEC.n_products
    assert len(_events(out)) == SPEC.n_events
    assert len(_rows(out / "user_answers.csv")) == SPEC.n_answers


def test_same_seed_gives_byte_identical_files(out: Path, tmp_path: Path) -> None:
    summary = generate(SPEC, tmp_path)
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = {
        p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()
    }
    assert first.keys() == again.keys()
    assert [name for name in first if first[name] != again[name]] == []
    assert summary == json.loads((out / "truth" / "summary.json").read_text())


def test_events_rendered_a_file_at_a_time_are_the_whole_log_cut_anywhere(tmp_path: Path) -> None:
    """Each event file is rendered on its own (memory: one file's strings, not the log's);
    the defects drawn for the whole log land on the same rows however the log is cut."""

    def rows(files: int) -> list[str]:
        out = tmp_path / str(files)
        generate(replace(SPEC, n_event_files=files, images=False), out)
        lines = []
        for i in range(1, files + 1):
            lines += (out / f"events_{i}.csv").read_text().splitlines()[1:]
        return lines

    whole = rows(1)
    assert len(whole) == SPEC.n_events
    assert rows(7) == whole


def test_another_seed_gives_other_data(out: Path, tmp_path: Path) -> None:
    generate(replace(SPEC, seed=12, images=False), tmp_path)
    for name in ("product_data.csv", "events_1.csv", "user_answers.csv"):
        assert (out / name).read_bytes() != (tmp_path / name).read_bytes()


def test_clean_product_rows_parse_and_defects_match_malformed_json(
    out: Path, malformed: dict
) -> None:
    seen: set[str] = set()
    found = Counter()
    for row in _rows(out / "product_data.csv"):
        defect = _product_defect(row, seen)
        found[defect] += 1
        if defect:
            continue
        periods = ast.literal_eval(row["price"])
        originals = [p for p in periods if p["original"]]
        assert len(originals) == 1
        assert all(p["value"] < originals[0]["value"] for p in periods if not p["original"])
        assert {p["currency"] for p in periods} == {"EUR"}
        attrs = ast.literal_eval(row["other_attributes"])
        assert attrs["product_id"].startswith("P")
        assert row["target_audience"] in {"women", "men", "kids", "unisex"}
        for image in attrs.get("images", []):
            assert (out / image).is_file()
    assert _nonzero({d: found[d] for d in PRODUCT_DEFECTS}) == _nonzero(
        malformed["product_data.csv"]
    )
    assert set(_nonzero(malformed["product_data.csv"])) == set(PRODUCT_DEFECTS)


def test_prices_have_expired_current_and_future_discounts(out: Path) -> None:
    end = SPEC.end_date.isoformat()
    kinds = Counter()
    truth = {r["row"]: r for r in _truth(out, "products")}
    for i, row in enumerate(_rows(out / "product_data.csv")):
        if truth[i]["defect"]:
            continue
        current = None
        for p in ast.literal_eval(row["price"]):
            if p["original"]:
                continue
            if p["valid_to"] < end:
                kinds["expired"] += 1
            elif p["valid_from"] > end:
                kinds["future"] += 1
            else:
                kinds["current"] += 1
                current = p["value"]
        assert truth[i]["is_discounted"] == (current is not None)
        if current is not None:
            assert truth[i]["price"] == current
    assert min(kinds.values()) > 5 and len(kinds) == 3


def test_some_attribute_keys_are_simply_absent(out: Path) -> None:
    truth = {r["row"]: r["defect"] for r in _truth(out, "products")}
    missing = Counter()
    for i, row in enumerate(_rows(out / "product_data.csv")):
        if truth[i] is None:
            keys = ast.literal_eval(row["other_attributes"]).keys()
            missing.update({"color", "sku", "review_rating", "images"} - keys)
    assert sum(missing.values()) > 0


def test_event_ids_are_catalogue_ids_except_injected_defects(out: Path, malformed: dict) -> None:
    catalogue = _catalogue(out)
    for name in EVENT_FILES:
        found = Counter()
        for row in _rows(out / name):
            cells = [row["product_id"], row["related_product_ids"]]
            ids = [i for cell in cells for i in ID_PATTERN.findall(cell)]
            if not _interest(row):
                assert all(i in catalogue for i in ids)
                continue
            if not row["user_id"]:
                found["missing_user_id"] += 1
            elif _parse_ts(row["event_timestamp"]) is None:
                found["bad_timestamp"] += 1
            if row["product_id"] in GARBAGE_CELLS:
                found["garbage_product_cell"] += 1
            elif not ids:
                found["empty_product_cell"] += 1
            elif not all(i in catalogue for i in ids):
                assert len(ids) == 1 and HEX.match(ids[0])
                found["unknown_product_id"] += 1
        assert _nonzero({d: found[d] for d in EVENT_DEFECTS}) == _nonzero(malformed[name])
    assert set(_nonzero(malformed["events_1.csv"])) == set(EVENT_DEFECTS)


def _cell_style(cell: str) -> str:
    """A cell with its ids replaced by H, so ['a', 'b'] and ['c', 'd'] read the same."""
    return re.sub(r"[0-9a-f]{24}", "H", cell)


def test_event_cells_use_varied_noisy_styles(out: Path) -> None:
    rows = [r for r in _events(out) if r["product_id"] and _interest(r)]
    singles = Counter(_cell_style(r["product_id"]) for r in rows if r["event_name"] != "purchase")
    for style in ("H", "['H']", '["H"]', " #H ", "p:H"):
        assert singles[style] > 0, style
    multi = {
        _cell_style(r["product_id"])
        for r in rows
        if r["event_name"] == "purchase" and len(ID_PATTERN.findall(r["product_id"])) > 1
    }
    for two in ("['H', 'H']", '["H","H"]', "H|H", "H;H", "H, H"):
        assert two in multi, two


def test_events_are_time_ordered_in_the_window_with_realistic_noise(out: Path) -> None:
    rows = _events(out)
    stamps = [t for t in (_parse_ts(r["event_timestamp"]) for r in rows) if t]
    start = datetime.combine(SPEC.end_date - timedelta(days=SPEC.days), datetime.min.time())
    assert stamps == sorted(stamps)
    assert start <= stamps[0] and stamps[-1] < datetime.combine(SPEC.end_date, datetime.min.time())
    noise = sum(not _interest(r) for r in rows) / len(rows)
    assert 0.25 < noise < 0.35
    kinds = Counter((r["event_name"], r["button_name"]) for r in rows)
    for button in ("heart_button", "bag_button", "share_button", "filter_button"):
        assert kinds[("button_click", button)] > 0
    for event in ("product_similar_items_clicking", "purchase", "app_open", "search"):
        assert sum(v for (e, _), v in kinds.items() if e == event) > 0
    late = sum(t >= start + timedelta(days=SPEC.days / 2) for t in stamps)
    assert late > len(stamps) / 2  # activity grows toward the end date


def test_bundles_are_bought_together_far_more_than_chance(out: Path) -> None:
    bundles = defaultdict(list)
    for r in _truth(out, "bundles"):
        bundles[r["bundle_id"]].append(r["product_id"])
    products = {r["product_id"]: r for r in _truth(out, "products") if r["defect"] is None}
    for members in bundles.values():
        assert 2 <= len(members) <= 3
        assert len({products[m]["target_audience"] for m in members}) == 1
        assert len({products[m]["department"] for m in members}) == len(members)
    baskets = [
        set(ID_PATTERN.findall(r["product_id"]))
        for r in _events(out)
        if r["event_name"] == "purchase" and r["product_id"]
    ]
    count = Counter(i for b in baskets for i in b)
    pairs = Counter(p for b in baskets for p in itertools.combinations(sorted(b), 2))
    planted = {p for m in bundles.values() for p in itertools.combinations(sorted(m), 2)}
    lifts = [pairs[p] * len(baskets) / (count[p[0]] * count[p[1]]) for p in planted]
    assert sorted(lifts)[len(lifts) // 2] > 5
    top = {p for p, _ in pairs.most_common(len(planted))}
    assert len(top & planted) >= 0.9 * len(planted)
    whole = sum(any(set(m) <= b for m in bundles.values()) for b in baskets)
    assert whole / len(baskets) > 0.25


def test_segment_users_prefer_their_segment_products(out: Path) -> None:
    segment_of = {u["user_id"]: (u["age_group"], u["region"]) for u in _truth(out, "users")}
    favourites = defaultdict(set)
    for r in _truth(out, "segments"):
        favourites[(r["age_group"], r["region"])].add(r["product_id"])
    touches = [
        (segment_of[r["user_id"]], i)
        for r in _events(out)
        if _interest(r) and r["user_id"]
        for i in ID_PATTERN.findall(r["product_id"])
    ]
    # Compare with users who share neither the age group nor the region of the segment.
    own = other = own_total = other_total = 0
    for segment, products in favourites.items():
        for user_segment, product in touches:
            hit = product in products
            if user_segment == segment:
                own, own_total = own + hit, own_total + 1
            elif user_segment[0] != segment[0] and user_segment[1] != segment[1]:
                other, other_total = other + hit, other_total + 1
    assert own / own_total > 5 * other / other_total


def test_planted_popularity_comes_out_on_top(out: Path) -> None:
    counts = Counter(
        i for r in _events(out) if _interest(r) for i in ID_PATTERN.findall(r["product_id"])
    )
    planted = [r["product_id"] for r in sorted(_truth(out, "popular"), key=lambda r: r["rank"])]
    observed = [product for product, _ in counts.most_common(10)]
    assert len(set(planted[:5]) & set(observed)) == 5


def test_lookalikes_share_department_audience_colour_and_title(out: Path) -> None:
    groups = defaultdict(list)
    for r in _truth(out, "lookalikes"):
        groups[r["group_id"]].append(r["product_id"])
    products = {r["product_id"]: r for r in _truth(out, "products") if r["defect"] is None}
    assert groups
    for members in groups.values():
        assert 3 <= len(members) <= 5
        rows = [products[m] for m in members]
        for key in ("department", "target_audience", "color", "material"):
            assert len({r[key] for r in rows}) == 1
        stem = rows[0]["title"]
        assert all(r["title"].startswith(stem) for r in rows)


def test_answers_mix_birth_date_formats_and_defects_match(out: Path, malformed: dict) -> None:
    seen: set[tuple] = set()
    found = Counter()
    formats = Counter()
    region_of_city = defaultdict(set)
    rows = _rows(out / "user_answers.csv")
    for row in rows:
        defect = _answer_defect(row, seen, SPEC.end_date)
        found[defect] += 1
        if row["city"] and row["region"]:
            region_of_city[row["city"]].add(row["region"])
        if not defect and row["Question"] == QUESTION_BIRTH_DATE:
            formats[_parse_birth_date(row["Answer"])[1]] += 1
    assert len(formats) >= 3
    assert all(len(regions) == 1 for regions in region_of_city.values())
    assert _nonzero({d: found[d] for d in ANSWER_DEFECTS}) == _nonzero(
        malformed["user_answers.csv"]
    )
    assert set(_nonzero(malformed["user_answers.csv"])) == set(ANSWER_DEFECTS)
    assert any(not r["city"] for r in rows) and any(not r["region"] for r in rows)


def test_true_users_agree_with_their_answers(out: Path) -> None:
    users = {u["user_id"]: u for u in _truth(out, "users")}
    answered = set()
    for row in _rows(out / "user_answers.csv"):
        user = users[row["User_ID"]]
        if row["city"]:
            assert row["city"] == user["city"]
        if row["region"]:
            assert row["region"] == user["region"]
        if row["Question"] == QUESTION_BIRTH_DATE and row["Answer"]:
            parsed = _parse_birth_date(row["Answer"])
            if parsed and parsed[0] == user["birth_date"]:
                answered.add(row["User_ID"])
    assert answered == {u for u, r in users.items() if r["answered_birth_date"]}
    assert 0 < len(answered) < len(users)
    labels = {"<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"}
    for user in users.values():
        birth, end = user["birth_date"], SPEC.end_date
        age = end.year - birth.year - ((end.month, end.day) < (birth.month, birth.day))
        assert user["age"] == age and user["age_group"] in labels
        assert user["segment"] == f"{user['age_group']}|{user['region']}"


def test_images_are_pngs_of_the_declared_size(out: Path) -> None:
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == SPEC.n_products
    for path in images[:20]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.size == (64, 64)


def test_cli_writes_clean_files_without_images(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--products", "120", "--users", "50", "--events", "3000"]
    argv += ["--answers", "80", "--seed", "3", "--no-images", "--malformed-scale", "0"]
    argv += ["--end-date", "2026-06-01", "--days", "10"]
    assert main(argv) == 0
    assert not (tmp_path / "images").exists()
    malformed = json.loads((tmp_path / "truth" / "malformed.json").read_text())
    assert all(v == 0 for counts in malformed.values() for v in counts.values())
    first = _rows(tmp_path / "product_data.csv")[0]
    assert ast.literal_eval(first["other_attributes"]).get("images", []) == []
    stamps = [r["event_timestamp"] for r in _events(tmp_path)]
    assert min(stamps) >= "2026-05-22 00:00:00" and max(stamps) < "2026-06-01"


def test_invalid_spec_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="n_products=10"):
        SyntheticSpec(n_products=10)
    with pytest.raises(ValueError, match="n_answers"):
        SyntheticSpec(n_users=10, n_answers=31)
    assert main(["--out", "/nonexistent", "--products", "5"]) == 2


def test_personal_favourites_bring_shoppers_back_to_their_own_products(tmp_path: Path) -> None:
    """With personal_share, a shopper's segment visits concentrate on their own few products."""

    def repeat_share(personal_share: float) -> float:
        out = tmp_path / str(personal_share)
        generate(replace(SPEC, images=False, taste_share=0.6, personal_share=personal_share), out)
        views = [
            (r["user_id"], r["product_id"])
            for r in _events(out)
            if r["event_name"] == "product_details_page_view"
        ]
        return 1 - len(set(views)) / len(views)

    assert repeat_share(0.9) > repeat_share(0.0) + 0.05


# --- what real fashion purchase data shows: own recent items, colour variants, trends --------

# Big enough for per-user statistics, clean and without pictures so it takes a second.
BEHAVIOUR = SyntheticSpec(
    n_products=400,
    n_users=1500,
    n_events=150_000,
    n_answers=1500,
    seed=5,
    images=False,
    malformed=MalformedRates().scaled(0),
)
HOLDOUT = timedelta(days=7)


@pytest.fixture(scope="module")
def behaviour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("behaviour")
    generate(BEHAVIOUR, path)
    return path


def _touches(out: Path) -> list[tuple[str, datetime, str]]:
    """(user, time, product) of every product in an event of interest, in time order."""
    return [
        (r["user_id"], _parse_ts(r["event_timestamp"]), product)
        for r in _events(out)
        if _interest(r) and r["user_id"]
        for product in ID_PATTERN.findall(r["product_id"])
    ]


def _split(
    out: Path,
) -> tuple[dict[str, list[str]], dict[str, set[str]], list[str], dict[str, list[str]]]:
    """Before the last week: each user's products, most recent first, the week's top 12
    products overall and in each user's segment; in the last week: each user's products."""
    segment_of = {u["user_id"]: u["segment"] for u in _truth(out, "users")}
    cut = datetime.combine(BEHAVIOUR.end_date, datetime.min.time()) - HOLDOUT
    history: dict[str, dict[str, datetime]] = defaultdict(dict)
    following: dict[str, set[str]] = defaultdict(set)
    week, segment_week = Counter(), defaultdict(Counter)
    for user, ts, product in _touches(out):
        if ts < cut:
            history[user][product] = ts
            week[product] += ts >= cut - HOLDOUT
            segment_week[segment_of[user]][product] += ts >= cut - HOLDOUT
        else:
            following[user].add(product)
    recent_first = {u: sorted(seen, key=seen.get, reverse=True) for u, seen in history.items()}
    segment_top = {
        u: [p for p, _ in segment_week[segment_of[u]].most_common(12)] for u in recent_first
    }
    return recent_first, following, [p for p, _ in week.most_common(12)], segment_top


def test_every_product_has_a_style_code_and_colour_variants_share_it(out: Path) -> None:
    truth = {r["row"]: r for r in _truth(out, "products")}
    codes = {}
    for i, row in enumerate(_rows(out / "product_data.csv")):
        if truth[i]["defect"] is None:
            attrs = ast.literal_eval(row["other_attributes"])
            codes[truth[i]["product_id"]] = attrs["style_code"]
            assert attrs["style_code"] == truth[i]["style_code"]
    groups = defaultdict(list)
    for r in _truth(out, "variant_groups"):
        groups[r["group"]].append(r["product_id"])
    products = {r["product_id"]: r for r in truth.values() if r["defect"] is None}
    in_groups = sum(len(m) for m in groups.values())
    assert 0.3 <= in_groups / len(products) <= 0.4
    for code, members in groups.items():
        assert 2 <= len(members) <= 5
        assert {codes[m] for m in members} == {code}
        rows = [products[m] for m in members]
        for key in ("department", "target_audience", "material", "style_tag", "original_price"):
            assert len({r[key] for r in rows}) == 1, key
        assert len({r["color"] for r in rows}) == len(rows)
    singles = [c for p, c in codes.items() if p not in {m for g in groups.values() for m in g}]
    assert len(set(singles)) == len(singles) and not set(singles) & set(groups)


def test_own_recent_products_predict_the_next_week_best(behaviour: Path) -> None:
    history, following, popular, segment_top = _split(behaviour)
    users = [u for u in following if u in history]
    assert len(users) > 300
    own = sum(len(following[u] & set(history[u])) for u in users)
    assert own / sum(len(following[u]) for u in users) > 0.25

    def precision(lists: dict[str, list[str]]) -> float:
        hits = [len(following[u] & set(lists[u][:12])) / min(12, len(following[u])) for u in users]
        return sum(hits) / len(hits)

    assert precision(history) > 1.5 * precision(dict.fromkeys(users, popular))
    assert precision(history) > 0.8 * precision(segment_top)
    # Favourites drift: the most recent products return far more often than the oldest.
    long = [u for u in users if len(history[u]) >= 10]
    recent = sum(len(following[u] & set(history[u][:5])) for u in long)
    oldest = sum(len(following[u] & set(history[u][-5:])) for u in long)
    assert recent > 2.5 * oldest


def test_shoppers_open_colour_siblings_of_their_own_products(behaviour: Path) -> None:
    history, following, _, _ = _split(behaviour)
    group = {r["product_id"]: r["group"] for r in _truth(behaviour, "variant_groups")}
    siblings = total = 0
    for user, products in following.items():
        seen = set(history.get(user, ()))
        groups = {group[p] for p in seen if p in group}
        siblings += sum(group.get(p) in groups for p in products - seen)
        total += len(products)
    assert siblings / total > 0.02


def test_trending_products_take_off_over_the_last_weeks(behaviour: Path) -> None:
    trending = {r["product_id"] for r in _truth(behaviour, "trending")}
    summary = json.loads((behaviour / "truth" / "summary.json").read_text())
    assert len(trending) == summary["truth"]["trending_products"] >= 2
    start = datetime.combine(BEHAVIOUR.end_date, datetime.min.time()) - timedelta(BEHAVIOUR.days)
    hits, totals = Counter(), Counter()
    for _, ts, product in _touches(behaviour):
        week = (ts - start).days // 7
        hits[week] += product in trending
        totals[week] += 1
    share = [hits[w] / totals[w] for w in sorted(totals)]
    early = sum(hits[w] for w in range(5)) / sum(totals[w] for w in range(5))
    assert share[-1] > share[-2] > share[-3] > early and share[-1] > 3 * early


def test_a_realistic_share_of_customers_touch_one_or_two_products(behaviour: Path) -> None:
    products = defaultdict(set)
    for user, _, product in _touches(behaviour):
        products[user].add(product)
    few = sum(len(p) <= 2 for p in products.values()) / len(products)
    assert 0.25 <= few <= 0.35
    summary = json.loads((behaviour / "truth" / "summary.json").read_text())
    assert 0 < summary["truth"]["casual_users"] < len(products)
