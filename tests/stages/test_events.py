"""The events stage: chunked regex extraction, explode, filter, quarantine and accounting."""

from __future__ import annotations

import re
from datetime import date

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fashion_recs.contract import EVENT_PRODUCT_IDS, EVENTS, quarantine
from fashion_recs.errors import RejectRateExceeded
from fashion_recs.stages.events import build_events
from tests.helpers import make_config, run_paths, write_csv

HEADER = [
    "user_id",
    "event_name",
    "button_name",
    "event_timestamp",
    "product_id",
    "related_product_ids",
]
A, B, C = "a" * 24, "b" * 24, "c" * 24
UNKNOWN = "d" * 24
CATALOGUE = [A, B, C]
TS = "2026-10-30 12:00:00"


def test_noisy_cells_are_exploded_into_cleaned_slots(tmp_path) -> None:
    rows = [
        ["U1", "product_details_page_view", "", TS, f"['{A}']", ""],
        ["U1", "product_similar_items_clicking", "", TS, f" #{A} ", f'["{B}"]'],
        ["U2", "purchase", "", TS, f"{A}|{B};{C}", ""],
        ["U2", "button_click", "bag_button", TS, f"p:{C}", ""],
        ["U3", "app_open", "", TS, "", ""],  # not of interest: filtered
        ["U3", "button_click", "share_button", TS, A, ""],  # not of interest: filtered
    ]
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path)
    paths = run_paths(config)
    summary = build_events(config, paths, [source], CATALOGUE)

    events = pq.read_table(paths.path(EVENTS)).to_pandas()
    got = list(zip(events["user_id"], events["product_id"], events["product_slot"], strict=True))
    assert got == [
        ("U1", A, "product_id_cleaned"),
        ("U1", A, "product_id_cleaned"),
        ("U1", B, "product_id_cleaned2"),
        ("U2", A, "product_id_cleaned"),
        ("U2", B, "product_id_cleaned"),
        ("U2", C, "product_id_cleaned"),
        ("U2", C, "product_id_cleaned"),
    ]
    assert events["button_name"].isna().sum() == 6  # empty buttons are nulls, not ""
    assert str(events["event_ts"].dt.tz) == "UTC"
    counts = summary["counts"]
    assert (counts["rows_in"], counts["rows_out"], counts["rows_filtered"]) == (6, 4, 2)
    assert counts["rows_quarantined"] == 0 and summary["events_out"] == 7
    ids = pq.read_table(paths.path(EVENT_PRODUCT_IDS)).to_pandas().set_index("product_id")
    assert ids.loc[A, "n_events"] == 3 and bool(ids.loc[C, "in_catalogue"])


def test_malformed_rows_are_quarantined_with_reason_and_column(tmp_path) -> None:
    rows = [
        ["U1", "product_details_page_view", "", TS, A, ""],
        ["", "product_details_page_view", "", TS, A, ""],
        ["U1", "product_details_page_view", "", "not-a-date", A, ""],
        ["U1", "product_details_page_view", "", "2026-13-45 25:61:00", A, ""],
        ["U1", "product_details_page_view", "", TS, "", ""],
        ["U1", "product_details_page_view", "", TS, "[]", ""],
        ["U1", "product_details_page_view", "", TS, UNKNOWN, ""],
        ["U1", "product_details_page_view", "", TS, "null", ""],
        ["U1", "purchase", "", TS, f"{A}, {UNKNOWN}", ""],  # kept: one known id
    ]
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path, quality={"max_reject_rate": {"events": 1.0}})
    paths = run_paths(config)
    summary = build_events(config, paths, [source], CATALOGUE)

    q = pq.read_table(paths.path(quarantine("events"))).to_pandas()
    assert sorted(zip(q["reason"], q["column"], strict=True)) == [
        ("bad_timestamp", "event_timestamp"),
        ("bad_timestamp", "event_timestamp"),
        ("missing_user_id", "user_id"),
        ("no_product_id", "product_id|related_product_ids"),
        ("no_product_id", "product_id|related_product_ids"),
        ("unknown_product_id", "product_id|related_product_ids"),
        ("unknown_product_id", "product_id|related_product_ids"),
    ]
    assert set(q["source_file"]) == {str(source)}
    counts = summary["counts"]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"] == 9
    assert summary["unknown_ids"] == {"distinct": 2, "mentions": 3}  # UNKNOWN twice, "null" once
    events = pq.read_table(paths.path(EVENTS)).to_pandas()
    assert list(events["product_id"]) == [A, A]


def test_many_chunks_and_files_account_for_every_row(tmp_path) -> None:
    names = ["product_details_page_view", "app_open", "purchase", "button_click"]
    rows = [
        [f"U{i}", names[i % 4], "bag_button" if i % 8 == 3 else "", TS, [A, B, C][i % 3], ""]
        for i in range(5000)
    ]
    rows[16][3] = "bad"  # a page view, so quarantined rather than filtered
    files = [
        write_csv(tmp_path / "events_1.csv", HEADER, rows[:2500]),
        write_csv(tmp_path / "events_2.csv", HEADER, rows[2500:]),
    ]
    config = make_config(tmp_path, events={"chunk_size": 1000})
    paths = run_paths(config)
    summary = build_events(config, paths, files, CATALOGUE)
    counts = summary["counts"]
    kept = sum(1 for i in range(5000) if i % 4 in (0, 2) or i % 8 == 3)
    filtered = 5000 - kept
    assert (counts["rows_in"], counts["rows_filtered"]) == (5000, filtered)
    assert counts["rows_quarantined"] == 1 and counts["rows_out"] == kept - 1
    events = pq.read_table(paths.path(EVENTS)).to_pandas()
    assert len(events) == kept - 1  # one catalogue id per kept row


def test_reject_rate_failure_names_file_column_and_reason(tmp_path) -> None:
    rows = [["U1", "product_details_page_view", "", TS, UNKNOWN, ""]] * 3
    rows.append(["U1", "product_details_page_view", "", TS, A, ""])
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path)
    with pytest.raises(RejectRateExceeded) as info:
        build_events(config, run_paths(config), [source], CATALOGUE)
    message = str(info.value)
    assert "'unknown_product_id'" in message and "product_id|related_product_ids" in message
    assert "events_quarantine.parquet" in message and "75.0%" in message


def test_rerun_gives_identical_files(tmp_path) -> None:
    rows = [["U1", "purchase", "", TS, f"{A}|{B}", C], ["U2", "app_open", "", TS, "", ""]]
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path)
    paths = run_paths(config)
    build_events(config, paths, [source], CATALOGUE)
    first = [paths.path(a).read_bytes() for a in (EVENTS, EVENT_PRODUCT_IDS, quarantine("events"))]
    build_events(config, paths, [source], CATALOGUE)
    assert [
        paths.path(a).read_bytes() for a in (EVENTS, EVENT_PRODUCT_IDS, quarantine("events"))
    ] == first


ID = st.text(alphabet="abcdef0123456789", min_size=24, max_size=24)
SEPARATORS = st.sampled_from([",", "|", ";", " ", "', '", '","'])


@given(st.lists(ID, min_size=1, max_size=4), SEPARATORS, st.sampled_from(["[{}]", "{}", " #{} "]))
def test_extractor_finds_exactly_the_ids_in_any_noisy_cell(ids, sep, wrap) -> None:
    """The seed's regex recovers the ids whatever separators and wrappers the app used."""
    cell = wrap.format(sep.join(f"'{i}'" if "[" in wrap else i for i in ids))
    import polars as pl

    extracted = pl.Series([cell]).str.extract_all("[a-zA-Z0-9]{3,}").to_list()[0]
    assert extracted == ids == re.findall("[a-zA-Z0-9]{3,}", cell)


def test_as_of_window_filters_later_events_and_quarantines_implausible_ones(tmp_path) -> None:
    rows = [
        ["U1", "product_details_page_view", "", "2026-10-31 23:00:00", A, ""],
        ["U1", "product_details_page_view", "", "2026-11-03 10:00:00", B, ""],  # a later run's
        ["U1", "product_details_page_view", "", "2099-01-01 00:00:00", C, ""],
        ["U1", "product_details_page_view", "", "1970-01-01 00:00:00", C, ""],
    ]
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path, quality={"max_reject_rate": {"events": 1.0}})
    paths = run_paths(config)
    summary = build_events(config, paths, [source], CATALOGUE, date(2026, 11, 1))
    counts = summary["counts"]
    assert (counts["rows_out"], counts["rows_filtered"], counts["rows_quarantined"]) == (1, 1, 2)
    assert counts["reasons"] == {"implausible_timestamp": 2}
    assert summary["rows_after_as_of"] == 1
    q = pq.read_table(paths.path(quarantine("events"))).to_pandas()
    assert set(q["column"]) == {"event_timestamp"}


def test_ids_are_case_insensitive_and_a_repeated_id_is_one_event(tmp_path) -> None:
    rows = [["U1", "purchase", "", TS, f"{A.upper()}|{A}|{B}", A]]
    source = write_csv(tmp_path / "events_1.csv", HEADER, rows)
    config = make_config(tmp_path)
    paths = run_paths(config)
    summary = build_events(config, paths, [source], CATALOGUE)
    events = pq.read_table(paths.path(EVENTS)).to_pandas()
    assert list(zip(events["product_id"], events["product_slot"], strict=True)) == [
        (A, "product_id_cleaned"),
        (B, "product_id_cleaned"),
    ]
    assert summary["counts"]["rows_out"] == 1


def test_invalid_utf8_and_a_broken_quote_are_quarantined_with_their_lines(tmp_path) -> None:
    path = tmp_path / "events_1.csv"
    header = ",".join(HEADER) + "\n"
    path.write_bytes(
        (header + f"U1,purchase,,{TS},{A},\n").encode()
        + b"U\xe9,purchase,,2026-10-30 12:00:00,"
        + B.encode()
        + b",\n"
    )
    config = make_config(tmp_path, quality={"max_reject_rate": {"events": 0.5}})
    paths = run_paths(config)
    summary = build_events(config, paths, [path], CATALOGUE)
    assert summary["counts"]["rows_out"] == 1
    assert summary["counts"]["reasons"] == {"invalid_utf8": 1}
    rejected = pq.read_table(paths.path(quarantine("events"))).to_pandas()
    assert rejected["source_line"].tolist() == ["3"]
    broken = tmp_path / "events_2.csv"
    rows = "".join(f"U{i},purchase,,{TS},{B},\n" for i in range(2, 5))
    broken.write_text(header + f'U1,purchase,,{TS},"{A},\n' + rows)
    paths = run_paths(config, "other")
    summary = build_events(config, paths, [broken], CATALOGUE)
    assert summary["counts"]["reasons"] == {"unterminated_quote": 1}
    assert summary["counts"]["rows_in"] == 4


def test_blocks_cut_at_record_ends_read_like_the_whole_file(tmp_path) -> None:
    """Quoted line breaks, empty lines and ragged lines survive any block size, with the
    file's own row numbers; blank lines are not records."""
    import polars as pl

    from fashion_recs.stages.events import read_blocks

    lines = [",".join(HEADER)]
    for i in range(40):
        cell = f'"[""{A}"",\n""{B}""]"' if i % 3 == 0 else f"p:{C}"
        lines.append(f"U{i},purchase,,{TS},{cell},")
        if i % 7 == 0:
            lines.append("")
        if i % 11 == 0:
            lines.append(f"U{i},purchase,,{TS},{A},,extra,fields")
    path = tmp_path / "events_1.csv"
    path.write_text("\n".join(lines) + "\n")
    whole = pl.read_csv(
        path, infer_schema=False, truncate_ragged_lines=True, empty_string_is_null=False
    ).select(pl.col(c).fill_null("") for c in HEADER)
    whole = whole.filter(pl.any_horizontal(pl.col(HEADER) != ""))  # blank lines are no records
    for block_bytes in (16, 100, 1 << 20):
        blocks = [block.rows for block in read_blocks(path, HEADER, block_bytes)]
        joined = pl.concat(blocks)
        assert joined["row_number"].to_list() == list(range(whole.height))
        assert joined.drop("row_number", "line_number").equals(whole)
        assert len(blocks) > 1 or block_bytes == 1 << 20


@given(
    st.lists(st.lists(st.integers(0, 30), max_size=40), max_size=8),
    st.booleans(),
    st.sampled_from([2, 3, 64]),
)
def test_seen_rows_tells_repeats_like_a_set(batches, spread: bool, max_runs: int) -> None:
    """The run set marks exactly the hashes a plain set has seen (earlier in the same batch or
    in an earlier one), however the batches fall: hashes sharing a bitmap bucket (small
    values) or spread over the buckets, runs merged early or late."""
    import numpy as np

    from fashion_recs.stages.events import SeenRows

    class Few(SeenRows):
        MAX_RUNS = max_runs

    seen, reference = Few(), set()
    for batch in batches:
        values = np.array(batch, dtype=np.uint64)
        if spread:  # a multiplicative hash: distinct values, scattered top bits
            values = values * np.uint64(0x9E3779B97F4A7C15)
        expected = []
        for value in values.tolist():
            expected.append(value in reference)
            reference.add(value)
        assert seen.repeats(values).tolist() == expected
        assert len(seen.runs) < max_runs


@given(
    st.lists(st.sampled_from(["a", "b", "c", "", "view", "buy"]), max_size=30), st.integers(0, 12)
)
def test_one_of_matches_is_in_for_short_and_long_lists(values, n_wanted) -> None:
    """The comparisons used for a few events of interest select what `is_in` selects."""
    import polars as pl

    from fashion_recs.stages.events import one_of

    wanted = (["a", "view", "zz"] * 5)[:n_wanted]
    frame = pl.DataFrame({"event": values}, schema={"event": pl.String})
    fast = frame.select(one_of("event", wanted)).to_series().to_list()
    assert fast == frame.select(pl.col("event").is_in(wanted)).to_series().to_list()


def _stage_outputs(
    tmp_path, name: str, files, reader: str, max_record_bytes: int = 1 << 20
) -> tuple[dict, dict]:
    """The stage's summary (paths left out) and every table it wrote, for one reader."""
    config = make_config(
        tmp_path / reader / name,
        events={"reader": reader, "chunk_size": 1_000},
        quality={"max_reject_rate": {"events": 1.0}, "max_record_bytes": max_record_bytes},
    )
    paths = run_paths(config)
    summary = build_events(config, paths, files, CATALOGUE, date(2026, 11, 1))
    summary = {k: v for k, v in summary.items() if k not in ("events", "event_product_ids")}
    summary["counts"] = {k: v for k, v in summary["counts"].items() if k != "quarantine_path"}
    tables = {
        p.name: pq.read_table(p)
        for p in (
            paths.path(EVENTS),
            paths.path(EVENT_PRODUCT_IDS),
            paths.path(quarantine("events")),
        )
    }
    return summary, tables


def _log_lines(n: int, seed: int) -> list[str]:
    """A log of every kind of row the stage tells apart, one record a line."""
    import random

    rng = random.Random(seed)
    names = ["product_details_page_view", "button_click", "purchase", "app_open"]
    buttons = ["", "bag_button", "heart_button", "share_button"]
    cells = [A, f'"[""{B}""]"', f"{A}|{C}", UNKNOWN, "", f" #{C} ", f"{UNKNOWN};{B}", "x"]
    lines = []
    for i in range(n):
        user = rng.choice([f"U{i % 97}", "", " U5 ", "U\x07"])
        ts = rng.choice([TS, "2026-10-30T11:00:00.5Z", "yesterday", "2030-01-01 00:00:00"])
        row = [
            user,
            rng.choice(names),
            rng.choice(buttons),
            ts,
            rng.choice(cells),
            rng.choice(cells),
        ]
        lines.append(",".join(row[: rng.choice([6, 6, 6, 6, 4])]))
        if rng.random() < 0.05:
            lines.append(lines[-1])  # an exact repeat (a double submission)
        if rng.random() < 0.03:
            lines.append(lines[-1] + ",extra,fields")
    return lines


@pytest.mark.parametrize("seed", [0, 1])
def test_the_streaming_reader_writes_what_the_block_reader_writes(tmp_path, seed) -> None:
    from fashion_recs.stages.events import single_line_records

    header = ",".join(HEADER)
    files = []
    for k, ending in enumerate(["\n", "\r\n"]):
        lines = _log_lines(3_000, seed * 10 + k)
        path = tmp_path / f"events_{k + 1}.csv"
        path.write_bytes((ending.join([header, *lines]) + ("" if k else ending)).encode())
        assert single_line_records(path, 1 << 20) == len(lines)  # the streaming reader's file
        files.append(path)
    streamed = _stage_outputs(tmp_path, "log", files, "auto")
    blocks = _stage_outputs(tmp_path, "log", files, "blocks")
    assert streamed[0] == blocks[0]
    assert set(streamed[0]["counts"]["reasons"]) == {
        "missing_user_id",
        "control_characters",
        "bad_timestamp",
        "implausible_timestamp",
        "no_product_id",
        "unknown_product_id",
    }
    assert streamed[0]["duplicate_events"] > 0
    for name, table in blocks[1].items():
        assert streamed[1][name].equals(table), name


@pytest.mark.parametrize(
    "tail",
    [
        "\nU9,purchase,,{ts},{a},\n",  # a blank line
        'U9,purchase,,{ts},"[""{a}"",\n""{b}""]",\n',  # a line break inside quotes
        'U9,purchase,,{ts},"{a},\nU10,purchase,,{ts},{b},\n',  # a quote never closed
        "U9,purchase,,{ts},{a},{pad}\n",  # a record longer than the limit
    ],
)
def test_files_the_streaming_reader_cannot_take_go_to_the_block_reader(tmp_path, tail) -> None:
    from fashion_recs.stages.events import single_line_records

    head = ",".join(HEADER) + "\n" + "".join(f"U{i},purchase,,{TS},{A},\n" for i in range(5))
    path = tmp_path / "events_1.csv"
    path.write_text(head + tail.format(ts=TS, a=A, b=B, pad="z" * 2_000))
    assert single_line_records(path, 1_024) is None
    clean = tmp_path / "clean" / "events_1.csv"
    clean.parent.mkdir()
    clean.write_text(head)
    assert single_line_records(clean, 1_024) == 5
    streamed = _stage_outputs(tmp_path, "odd", [clean, path], "auto", 1_024)
    blocks = _stage_outputs(tmp_path, "odd", [clean, path], "blocks", 1_024)
    assert streamed[0] == blocks[0]
    for name, table in blocks[1].items():
        assert streamed[1][name].equals(table), name


def test_not_utf8_a_byte_order_mark_or_a_two_line_header_is_for_the_block_reader(tmp_path):
    from fashion_recs.stages.events import single_line_records

    row = f"U1,purchase,,{TS},{A},\n".encode()
    header = (",".join(HEADER) + "\n").encode()
    cases = {
        "latin1": header + row + b"U\xe9,purchase,,2026-10-30 12:00:00,x,\n",
        "bom": b"\xef\xbb\xbf" + header + row,
        "header": b'"user\nid",' + header.split(b",", 1)[1] + row,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
        assert single_line_records(path, 1 << 20) is None, name
