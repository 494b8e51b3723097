"""Broken exports, generated: each case is a whole file and what the stage must make of it.

Shared by `tests/faults/` and `bench/faults.py`. Every case knows how many records its file
holds (a broken record counts once), so a test can check the stage's accounting exactly
against the file's records as well as its lines.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import load_config
from fashion_recs.contract import quarantine
from fashion_recs.errors import RejectRateExceeded, SourceError
from fashion_recs.stages.demographics import build_demographics
from fashion_recs.stages.events import build_events
from fashion_recs.stages.products import build_products

AS_OF = date(2026, 11, 1)
TS = "2026-10-30 12:00:00"
BOM = b"\xef\xbb\xbf"
PRODUCT_HEADER = ["id", "title", "target_audience", "department", "price", "other_attributes"]
ANSWER_HEADER = ["User_ID", "Question", "Answer", "city", "region", "gender", "signup_channel"]
EVENT_HEADER = [
    "user_id",
    "event_name",
    "button_name",
    "event_timestamp",
    "product_id",
    "related_product_ids",
]
BIRTH = "What is your date of birth?"
N_PRODUCTS, N_ANSWERS, N_EVENTS = 20, 30, 60
PRODUCT_IDS = [f"{i:024x}" for i in range(1, N_PRODUCTS + 1)]
FILES = {"products": "product_data.csv", "answers": "user_answers.csv", "events": "events_1.csv"}
STAGES = {"products": "products", "answers": "demographics", "events": "events"}


def price(value: Any = 50.0, valid_from: str = "2026-01-01", valid_to: str | None = None) -> str:
    return str(
        [
            {
                "value": value,
                "currency": "EUR",
                "original": True,
                "valid_from": valid_from,
                "valid_to": valid_to,
            }
        ]
    )


def product_row(i: int, **changes: str) -> list[str]:
    base = {
        "id": f"ObjectId('{PRODUCT_IDS[i % N_PRODUCTS]}')",
        "title": f"Navy Dress {i}",
        "target_audience": "Women",
        "department": "Dresses",
        "price": price(),
        "other_attributes": str({"product_id": f"P{i}", "color": "navy", "style_code": f"S{i}"}),
    }
    base.update(changes)
    return [base[c] for c in PRODUCT_HEADER]


def answer_row(i: int, **changes: str) -> list[str]:
    base = {
        "User_ID": f"U{i:04d}",
        "Question": BIRTH,
        "Answer": f"19{60 + i % 40}-05-17",
        "city": ["Paris", "Lyon", "Nice"][i % 3],
        "region": ["IDF", "ARA", "PACA"][i % 3],
        "gender": ["f", "m"][i % 2],
        "signup_channel": ["app", "web"][i % 2],
    }
    base.update(changes)
    return [base[c] for c in ANSWER_HEADER]


def event_row(i: int, **changes: str) -> list[str]:
    base = {
        "user_id": f"U{i:07d}",
        "event_name": "product_details_page_view",
        "button_name": "",
        "event_timestamp": TS,
        "product_id": f"['{PRODUCT_IDS[i % N_PRODUCTS]}']",
        "related_product_ids": "",
    }
    base.update(changes)
    return [base[c] for c in EVENT_HEADER]


ROWS = {"products": product_row, "answers": answer_row, "events": event_row}
HEADERS = {"products": PRODUCT_HEADER, "answers": ANSWER_HEADER, "events": EVENT_HEADER}
SIZES = {"products": N_PRODUCTS, "answers": N_ANSWERS, "events": N_EVENTS}


def lines_of(rows: list[list[str]], header: list[str] | None = None, eol: str = "\n") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=eol)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


@dataclass
class InputCase:
    """One broken (or awkward) export and what its stage must do with it."""

    name: str
    export: str
    body: bytes
    records: int
    outcome: str = "ok"  # ok | source_error | reject_rate
    reasons: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    field_issues: dict[str, int] = field(default_factory=dict)
    message: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def data_lines(self) -> int:
        body = self.body[len(BOM) :] if self.body.startswith(BOM) else self.body
        head = body.find(b"\n") + 1
        rest = body[head:]
        return rest.count(b"\n") + (1 if rest and not rest.endswith(b"\n") else 0)


def clean(export: str, n: int | None = None, eol: str = "\n") -> tuple[bytes, list[bytes]]:
    """(header line, data lines) of a clean export."""
    rows = [ROWS[export](i) for i in range(SIZES[export] if n is None else n)]
    header = lines_of([], HEADERS[export], eol)
    return header, [lines_of([r], eol=eol) for r in rows]


def with_lines(export: str, at: dict[int, bytes], extra: list[bytes] | None = None) -> bytes:
    """A clean export whose data lines at the given positions are replaced."""
    header, rows = clean(export)
    for i, line in at.items():
        rows[i] = line
    return header + b"".join(rows) + b"".join(extra or [])


def cell(export: str, i: int, column: str, value: str) -> bytes:
    return lines_of([ROWS[export](i, **{column: value})])


TEXT_COLUMN = {"products": "title", "answers": "city", "events": "product_id"}
USER_COLUMN = {"answers": "User_ID", "events": "user_id"}


def input_cases(big: int = 2 << 20) -> list[InputCase]:
    """Every input case; `big` is the size of the oversized fields (50 MiB in the bench)."""
    cases: list[InputCase] = []
    for export in ("products", "answers", "events"):
        n = SIZES[export]
        header, rows = clean(export)
        col = TEXT_COLUMN[export]
        add = cases.append
        add(InputCase(f"{export}:clean", export, header + b"".join(rows), n))
        add(InputCase(f"{export}:bom", export, BOM + header + b"".join(rows), n))
        add(
            InputCase(
                f"{export}:crlf",
                export,
                b"".join(clean(export, eol="\r\n")[:1]) + b"".join(clean(export, eol="\r\n")[1]),
                n,
            )
        )
        add(InputCase(f"{export}:no_final_newline", export, (header + b"".join(rows))[:-1], n))
        add(
            InputCase(
                f"{export}:blank_lines",
                export,
                header + b"".join(r + (b"\n" if i % 5 == 0 else b"") for i, r in enumerate(rows)),
                n,
            )
        )
        for where in (0, n // 2, n - 1):
            quoted = cell(export, where, col, "x" * big + ",x")
            add(
                InputCase(
                    f"{export}:oversized_quoted@{where}",
                    export,
                    with_lines(export, {where: quoted}),
                    n,
                    reasons={"oversized_record": 1},
                )
            )
        unquoted = cell(export, n // 2, col, "y" * big)
        add(
            InputCase(
                f"{export}:oversized_unquoted",
                export,
                with_lines(export, {n // 2: unquoted}),
                n,
                reasons={"oversized_record": 1},
            )
        )
        stray = rows[n // 3].replace(b",", b',"', 1)
        add(
            InputCase(
                f"{export}:unbalanced_quote",
                export,
                with_lines(export, {n // 3: stray}),
                n,
                reasons={"unterminated_quote": 1},
            )
        )
        first, second = n // 4, n // 2
        add(
            InputCase(
                f"{export}:two_unbalanced_quotes",
                export,
                with_lines(
                    export,
                    {
                        first: rows[first].replace(b",", b',"', 1),
                        second: rows[second].replace(b",", b',"', 1),
                    },
                ),
                n,
                reasons={"malformed_csv_row": 1, "unterminated_quote": 1},
            )
        )
        short = b"only,three,fields\n"
        add(
            InputCase(
                f"{export}:too_few_fields",
                export,
                with_lines(export, {}, [short]),
                n + 1,
                reasons={} if export == "events" else {"malformed_csv_row": 1},
            )
        )
        header_only = InputCase(
            f"{export}:header_only",
            export,
            header,
            0,
            outcome="source_error",
            message="has no rows",
        )
        if export != "events":
            add(header_only)
        junk = b"".join(f'"{i},broken\n'.encode() for i in range(12))
        add(
            InputCase(
                f"{export}:only_malformed_rows",
                export,
                header + junk,
                12,
                outcome="reject_rate",
                message=rf"{FILES[export]}.*the whole row.*line\(s\) 2, 3",
            )
        )
    # Export-specific cases.
    _, rows = clean("events")
    body = with_lines("events", {}, []).replace(rows[3], b"U0000515 \xe9" + rows[3][8:])
    body = body.replace(rows[4], b"\xff" + rows[4][8:])
    cases.append(
        InputCase("events:latin1_user_ids", "events", body, N_EVENTS, reasons={"invalid_utf8": 2})
    )
    cases.append(
        InputCase(
            "events:nul_in_user_id",
            "events",
            with_lines("events", {5: cell("events", 5, "user_id", "U\x00X")}),
            N_EVENTS,
            reasons={"control_characters": 1},
        )
    )
    dupes = [rows[7], rows[7], rows[9]]
    cases.append(
        InputCase(
            "events:exact_duplicates",
            "events",
            with_lines("events", {}, dupes),
            N_EVENTS + 3,
            filtered={"duplicate_event": 3},
        )
    )
    cases.append(
        InputCase(
            "events:duplicates_kept",
            "events",
            with_lines("events", {}, dupes),
            N_EVENTS + 3,
            config={"events": {"duplicate_events": "keep"}},
        )
    )
    unknown = lines_of([event_row(i, product_id="f" * 24) for i in range(20)])
    cases.append(
        InputCase(
            "events:reject_rate_names_file_and_lines",
            "events",
            with_lines("events", {}, [unknown]),
            N_EVENTS + 20,
            outcome="reject_rate",
            message=r"events_1\.csv.*unknown_product_id.*line\(s\) 62, 63",
            config={"quality": {"max_reject_rate": {"events": 0.05}}},
        )
    )
    # One bad event each, with the verdict the stage must give it.
    for name, changes, reasons, filtered in (
        ("empty_user_id", {"user_id": ""}, {"missing_user_id": 1}, {}),
        ("bad_timestamp", {"event_timestamp": "2026-13-45 25:61:00"}, {"bad_timestamp": 1}, {}),
        (
            "implausible_timestamp",
            {"event_timestamp": "1900-01-01 00:00:00"},
            {"implausible_timestamp": 1},
            {},
        ),
        ("after_as_of", {"event_timestamp": "2026-11-05 10:00:00"}, {}, {"after_as_of": 1}),
        ("no_product_id", {"product_id": "[]"}, {"no_product_id": 1}, {}),
        ("unknown_product_id", {"product_id": f"['{'e' * 24}']"}, {"unknown_product_id": 1}, {}),
    ):
        cases.append(
            InputCase(
                f"events:{name}",
                "events",
                with_lines("events", {11: cell("events", 11, *next(iter(changes.items())))}),
                N_EVENTS,
                reasons=reasons,
                filtered=filtered,
            )
        )
    cases.append(
        InputCase(
            "products:nul_in_title",
            "products",
            with_lines("products", {2: cell("products", 2, "title", "Dre\x00ss")}),
            N_PRODUCTS,
            field_issues={"control_characters_removed": 1},
        )
    )
    cases.append(
        InputCase(
            "answers:nul_in_city",
            "answers",
            with_lines("answers", {2: cell("answers", 2, "city", "Pa\x00ris")}),
            N_ANSWERS,
        )
    )
    for name, value, issue, reasons in (
        (
            "price_year_2999_from",
            price(valid_from="2999-01-01"),
            "price_period_far_future",
            {"no_plausible_price_period": 1},
        ),
        ("price_year_2999_to", price(valid_to="2999-12-31"), "price_period_open_ended", {}),
        (
            "price_reversed_period",
            price(valid_from="2026-06-01", valid_to="2026-01-01"),
            "price_period_reversed",
            {"no_plausible_price_period": 1},
        ),
        (
            "price_1e-300",
            price(value=1e-300),
            "price_below_minimum",
            {"no_plausible_price_period": 1},
        ),
    ):
        cases.append(
            InputCase(
                f"products:{name}",
                "products",
                with_lines("products", {4: cell("products", 4, "price", value)}),
                N_PRODUCTS,
                reasons=reasons,
                field_issues={} if reasons else {issue: 1},
            )
        )
    cases.append(
        InputCase(
            "products:duplicate_id",
            "products",
            with_lines("products", {}, [cell("products", 3, "title", "Again")]),
            N_PRODUCTS + 1,
            reasons={"duplicate_id": 1},
        )
    )
    cases.append(
        InputCase(
            "answers:duplicate_row",
            "answers",
            with_lines("answers", {}, [clean("answers")[1][6]]),
            N_ANSWERS + 1,
            reasons={"duplicate_row": 1},
        )
    )
    return cases


@dataclass
class Outcome:
    outcome: str
    message: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    quarantine: Any = None


def run_case(case: InputCase, workdir: Path) -> Outcome:
    """Write the case's file and run its stage on it (reject-rate threshold 50 % unless the
    case sets one); the stage's outcome, message and accounting."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / FILES[case.export]
    source.write_bytes(case.body)
    overrides: dict[str, Any] = {
        "data_root": str(workdir / "data"),
        "quality": {"max_reject_rate": {s: 0.5 for s in STAGES.values()}},
        # Blocks of ~80 kB, so a big field spans blocks as it would in a real log.
        "events": {"chunk_size": 1000},
    }
    for key, value in case.config.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    config = load_config(None, overrides)
    paths = RunPaths(config.data_root_path, config.retailer, "faults")
    try:
        if case.export == "products":
            summary = build_products(config, paths, source, AS_OF)
        elif case.export == "answers":
            summary = build_demographics(config, paths, source, AS_OF)
        else:
            summary = build_events(config, paths, [source], PRODUCT_IDS, as_of=AS_OF)
    except SourceError as exc:
        return Outcome("source_error", str(exc))
    except RejectRateExceeded as exc:
        return Outcome("reject_rate", str(exc))
    q = pq.read_table(paths.path(quarantine(STAGES[case.export]))).to_pandas()
    return Outcome("ok", counts=summary["counts"], summary=summary, quarantine=q)


def check_case(case: InputCase, got: Outcome) -> list[str]:
    """What is wrong with a stage's outcome on a case (empty when all is right)."""
    problems = []
    if got.outcome != case.outcome:
        problems.append(f"outcome {got.outcome} ({got.message[:300]}), expected {case.outcome}")
        return problems
    if case.message and not re.search(case.message, got.message):
        problems.append(f"message {got.message[:400]!r} lacks {case.message!r}")
    if got.outcome != "ok":
        return problems
    c = got.counts
    if c["rows_in"] != case.records:
        problems.append(f"rows_in {c['rows_in']} != {case.records} records in the file")
    if c["reasons"] != case.reasons:
        problems.append(f"reasons {c['reasons']} != {case.reasons}")
    if c.get("filtered_reasons", {}) != case.filtered:
        problems.append(f"filtered {c.get('filtered_reasons')} != {case.filtered}")
    lines = c.get("lines", {})
    if lines.get("lines_in") != case.data_lines:
        problems.append(f"lines_in {lines.get('lines_in')} != {case.data_lines} lines")
    if case.export == "products":
        issues = got.summary["field_issues"]
        if issues != case.field_issues:
            problems.append(f"field issues {issues} != {case.field_issues}")
    if len(got.quarantine) != c["rows_quarantined"]:
        problems.append("quarantine file and counts disagree")
    located = "source_line" in got.quarantine
    if c["rows_quarantined"] and located and got.quarantine["source_line"].isna().any():
        problems.append("a quarantined row without its line")
    return problems


def rows_unaccounted(case: InputCase, got: Outcome) -> int:
    if got.outcome != "ok":
        return 0
    c = got.counts
    return abs(case.records - c["rows_out"] - c["rows_filtered"] - c["rows_quarantined"])
