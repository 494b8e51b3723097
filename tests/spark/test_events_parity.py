"""The spark engine's `filter_events` and `map_interactions` against the local ones.

On the small synthetic retailer (its planted defects included) through the pipeline's steps,
and on a hand-written log with every verdict the stage gives: the artifacts are equal (the
events and the per-id counts in their order, which is part of the contract; the quarantine
with its rows sorted by file and row; floats to 1e-9), and so are the summaries, quarantine
counts and reasons included.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_recs import pipeline
from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, INTERACTION_LOG, quarantine
from fashion_recs.errors import RejectRateExceeded
from fashion_recs.pipeline import make_context
from tests.conftest import retailer_overrides
from tests.helpers import make_config, run_paths

AS_OF = date(2026, 11, 1)
HEADER = "user_id,event_name,button_name,event_timestamp,product_id,related_product_ids"
A, B, C = "a" * 24, "b" * 24, "c" * 24
UNKNOWN = "d" * 24
CATALOGUE = [A, B, C]
TS = "2026-10-30 12:00:00"
# Every rule but the wishlist one, so the retailer's heart-button clicks are unmapped.
RULES = [
    {"event_name": "product_details_page_view", "category": "view", "weight": 1.0},
    {"event_name": "product_similar_items_clicking", "category": "similar_click", "weight": 2.0},
    {
        "event_name": "button_click",
        "button_name": "bag_button",
        "category": "add_to_bag",
        "weight": 4.0,
    },
    {"event_name": "purchase", "category": "purchase", "weight": 5.0},
]


def _without_paths(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without the run's own paths (each engine writes into a run of its own)."""
    out = {k: v for k, v in summary.items() if not str(v).startswith("/")}
    out["counts"] = {k: v for k, v in summary["counts"].items() if k != "quarantine_path"}
    return out


def _table(path: str | Path) -> pa.Table:
    return pq.read_table(path)


def assert_same_table(local: str | Path, spark: str | Path, keys: list[str] | None) -> None:
    """Same Arrow schema (every part too); same rows, in order (`keys` None) or sorted by
    `keys`; floats equal to 1e-9."""
    assert Path(spark).is_dir() and Path(local).is_file()
    left, right = _table(local), _table(spark)
    assert right.schema == left.schema
    for part in Path(spark).iterdir():
        assert pq.read_schema(part) == left.schema, part
    a, b = left.to_pandas(), right.to_pandas()
    if keys:
        a = a.sort_values(keys, kind="stable").reset_index(drop=True)
        b = b.sort_values(keys, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=0.0)


def _quarantine_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(_row=pd.to_numeric(frame["source_row"]))


def assert_same_quarantine(local: str | Path, spark: str | Path) -> None:
    """The events quarantine: the same rows, by file and row (the local engine writes the
    rows the CSV reader rejected before a block's classified ones)."""
    left, right = _table(local), _table(spark)
    assert right.schema == left.schema
    a = _quarantine_key(left.to_pandas()).sort_values(["source_file", "_row", "reason"])
    b = _quarantine_key(right.to_pandas()).sort_values(["source_file", "_row", "reason"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.fixture(scope="module")
def retailer_runs(
    spark: Any, retailer: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """events and interactions of the synthetic retailer on each engine, through the steps
    (spark's fed by its own events dataset), with the wishlist rule left out so some events
    are unmapped, and a logged interaction the rules do not cover."""
    overrides = retailer_overrides(retailer, tmp_path_factory.mktemp("events_parity") / "data")
    overrides["interactions"] = {"rules": RULES}
    overrides["fbt"] = {"baskets": {"categories": ["view", "add_to_bag", "purchase"]}}
    overrides["quality"] = {"max_reject_rate": {"interactions": 1.0}}
    local = make_context("local", AS_OF, None, overrides)
    remote = make_context("spark", AS_OF, None, {**overrides, "engine": "spark"})
    dl = pipeline.download(local)
    products = pipeline.products(local, dl)
    out: dict[str, Any] = {"local": {}, "spark": {}}
    logged = pd.DataFrame(
        {
            "user_id": ["U1", "U2"],
            "event_name": ["purchase", "app_open"],
            "button_name": [None, None],
            "event_ts": pd.to_datetime(["2026-10-31 10:00:00", "2026-10-31 11:00:00"], utc=True),
            "product_id": ["p1", "p2"],
            "product_slot": ["product_id_cleaned", "product_id_cleaned"],
        }
    )
    for name, ctx in (("local", local), ("spark", remote)):
        events = pipeline.events(ctx, dl, products)
        path = ctx.paths.path(INTERACTION_LOG)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(logged, schema=INTERACTION_LOG.schema), path)
        out[name]["events"] = events
        out[name]["interactions"] = pipeline.interactions(
            ctx, events, {"interaction_log": str(path)}
        )
    return out


def test_spark_events_of_the_retailer_equal_the_local_ones(retailer_runs) -> None:
    local, spark = retailer_runs["local"]["events"], retailer_runs["spark"]["events"]
    # The retailer's planted defects (truth/malformed.json), read by Spark's line reader.
    planted = {"bad_timestamp", "missing_user_id", "no_product_id", "unknown_product_id"}
    assert planted <= set(local["counts"]["reasons"]) and local["events_out"] > 10_000
    assert _without_paths(spark) == _without_paths(local)
    assert_same_table(local["events"], spark["events"], None)
    assert_same_table(local["event_product_ids"], spark["event_product_ids"], None)
    assert_same_quarantine(local["counts"]["quarantine_path"], spark["counts"]["quarantine_path"])


def test_spark_interactions_equal_the_local_ones_unmapped_quarantine_included(
    retailer_runs,
) -> None:
    local = retailer_runs["local"]["interactions"]
    spark = retailer_runs["spark"]["interactions"]
    assert local["counts"]["reasons"]["unmapped_interaction"] > 0
    assert local["logged_events"] == 2
    assert _without_paths(spark) == _without_paths(local)
    # The order (user, time, product, then the events' own order) is the contract's.
    assert_same_table(local["interactions"], spark["interactions"], None)
    assert_same_table(local["user_items"], spark["user_items"], None)
    left = _table(local["counts"]["quarantine_path"])
    right = _table(spark["counts"]["quarantine_path"])
    assert right.schema == left.schema
    pd.testing.assert_frame_equal(left.to_pandas(), right.to_pandas())


def _log(seed: int) -> list[str]:
    """Lines of a log with every verdict: kept, not of interest, missing or control-character
    users, bad, implausible and later timestamps, no id, unknown ids, several ids in a cell,
    quoted cells, exact repeats, short and long (ragged) lines."""
    import random

    rng = random.Random(seed)
    names = ["product_details_page_view", "button_click", "purchase", "app_open"]
    buttons = ["", "bag_button", "heart_button", "share_button"]
    cells = [A, f'"[""{B}""]"', f"{A}|{C}", UNKNOWN, "", f" #{C} ", f"{UNKNOWN};{B}", "x"]
    cells += [f'"{C.upper()}, {A}"', f"{B}|{B}"]
    stamps = [TS, "2026-10-30T11:00:00.5Z", "yesterday", "2030-01-01 00:00:00"]
    stamps += [
        "2026-11-03 10:00:00",
        "1999-01-01 00:00:00",
        "2026-1-5 1:2:3",
        " 2026-10-29 08:00:00",
    ]
    stamps += ["2026-10-29 08:00:00 ", "2026-02-30 00:00:00", "2026-10-31 23:59:60", ""]
    stamps += ["2026-10-30T11:00:00Z", "2026-10-30T11:00:00.1234567891Z", "2026-10-30T11:00:00.Z"]
    lines = []
    for i in range(1_500):
        user = rng.choice([f"U{i % 37}", "", " U5 ", "U\x07", '"U,9"'])
        row = [
            user,
            rng.choice(names),
            rng.choice(buttons),
            rng.choice(stamps),
            rng.choice(cells),
            rng.choice(cells),
        ]
        lines.append(",".join(row[: rng.choice([6, 6, 6, 6, 4, 2])]))
        if rng.random() < 0.05:
            lines.append(lines[-1])
        if rng.random() < 0.03:
            lines.append(lines[-1] + ",extra,fields")
    return lines


def _odd_file(path: Path) -> Path:
    """A file only the block reader reads as the local engine does: a quoted line break, a
    quote never closed, blank lines, bytes that are not UTF-8."""
    rows = [f"U{i},purchase,,{TS},{[A, B, C][i % 3]},\n".encode() for i in range(30)]
    rows[4] = f'U4,purchase,,{TS},"[""{A}"",\n""{B}""]",\n'.encode()
    rows[9] = b"\n"
    rows[12] = b"U\xe9,purchase,,2026-10-30 12:00:00," + B.encode() + b",\n"
    rows[20] = f'U20,purchase,,{TS},"{A},\n'.encode()
    rows[25] = b"\r\n"
    path.write_bytes((HEADER + "\n").encode() + b"".join(rows) + rows[0] + rows[1])
    return path


def _both(spark: Any, tmp_path: Path, files: list[Path], **overrides: Any) -> list[Any]:
    """(summary, events, ids, quarantine paths) of each engine on `files`."""
    from fashion_recs.spark.events import build_events as spark_events
    from fashion_recs.stages.events import build_events as local_events

    out = []
    for name in ("local", "spark"):
        config = make_config(tmp_path / name, **overrides)
        paths = run_paths(config)
        if name == "local":
            summary = local_events(config, paths, files, CATALOGUE, AS_OF)
        else:
            summary = spark_events(spark, config, paths, files, CATALOGUE, AS_OF)
        out.append(summary)
    return out


def test_spark_reads_a_hand_written_log_with_every_verdict_like_the_local_engine(
    spark, tmp_path, caplog
) -> None:
    files = []
    for k, ending in enumerate(["\n", "\r\n"]):
        path = tmp_path / f"events_{k + 1}.csv"
        path.write_bytes((ending.join([HEADER, *_log(k)]) + ("" if k else ending)).encode())
        files.append(path)
    files.append(_odd_file(tmp_path / "events_3.csv"))
    caplog.set_level(logging.INFO, logger="fashion_recs.spark.events")
    local, remote = _both(
        spark,
        tmp_path,
        files,
        quality={"max_reject_rate": {"events": 1.0}, "max_record_bytes": 4096},
    )
    assert set(local["counts"]["reasons"]) == {
        "missing_user_id",
        "control_characters",
        "bad_timestamp",
        "implausible_timestamp",
        "no_product_id",
        "unknown_product_id",
        "invalid_utf8",
        "unterminated_quote",
    }
    assert local["duplicate_events"] > 0 and local["rows_after_as_of"] > 0
    # The first two files are read line by line, only the third by the block reader.
    blocks = [r.getMessage() for r in caplog.records if "read in blocks" in r.getMessage()]
    assert len(blocks) == 1 and str(files[2]) in blocks[0]
    assert _without_paths(remote) == _without_paths(local)
    assert_same_table(local["events"], remote["events"], None)
    assert_same_table(local["event_product_ids"], remote["event_product_ids"], None)
    assert_same_quarantine(local["counts"]["quarantine_path"], remote["counts"]["quarantine_path"])


def test_spark_fails_on_the_reject_rate_like_the_local_engine(spark, tmp_path) -> None:
    from fashion_recs.spark.events import build_events as spark_events
    from fashion_recs.stages.events import build_events as local_events

    rows = [f"U1,product_details_page_view,,{TS},{UNKNOWN},"] * 3
    rows.append(f"U1,product_details_page_view,,{TS},{A},")
    source = tmp_path / "events_1.csv"
    source.write_text("\n".join([HEADER, *rows]) + "\n")
    messages = []
    for name in ("local", "spark"):
        config = make_config(tmp_path / name)
        paths = run_paths(config)
        with pytest.raises(RejectRateExceeded) as info:
            if name == "local":
                local_events(config, paths, [source], CATALOGUE)
            else:
                spark_events(spark, config, paths, [source], CATALOGUE)
        messages.append(str(info.value).replace(str(tmp_path / name), "<root>"))
        assert paths.path(quarantine("events")).exists()
        assert paths.path(EVENTS).exists() and paths.path(EVENT_PRODUCT_IDS).exists()
    assert messages[1] == messages[0]
    assert "'unknown_product_id'" in messages[0] and str(source) in messages[0]
