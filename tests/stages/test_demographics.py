"""The seed's Model 3 preprocessing: birth dates, age groups, imputation and location fill."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fashion_recs.config import DemographicsConfig
from fashion_recs.contract import USERS, quarantine
from fashion_recs.stages.demographics import (
    age_groups,
    age_on,
    build_demographics,
    fill_locations,
    parse_birth_date,
)
from tests.helpers import make_config, run_paths, write_csv

AS_OF = date(2026, 11, 1)
HEADER = ["User_ID", "Question", "Answer", "city", "region", "gender", "signup_channel"]
BIRTH = "What is your date of birth?"
STYLE = "Which styles do you like?"
FORMATS = DemographicsConfig().birth_date_formats


@pytest.mark.parametrize(
    "text",
    ["1990-05-17", "17/05/1990", "17.05.1990", "May 17, 1990", "1990/05/17", " 1990-05-17 "],
)
def test_birth_dates_parse_in_every_configured_format(text: str) -> None:
    assert parse_birth_date(text, FORMATS) == date(1990, 5, 17)


@pytest.mark.parametrize("text", ["rather not say", "31/31/1990", "", "1990"])
def test_unparseable_birth_dates_give_none(text: str) -> None:
    assert parse_birth_date(text, FORMATS) is None


def test_age_counts_completed_years() -> None:
    assert age_on(date(1990, 11, 1), AS_OF) == 36
    assert age_on(date(1990, 11, 2), AS_OF) == 35


def test_age_groups_are_left_closed_with_unknown_for_missing() -> None:
    groups = age_groups(pd.Series([17.9, 18.0, 24.99, 25.0, 70.0, None]), DemographicsConfig())
    assert list(groups) == ["<18", "18-24", "18-24", "25-34", "65+", "unknown"]


def test_city_and_region_fill_each_other_from_reported_pairs() -> None:
    users = pd.DataFrame(
        {
            "city": ["Lyon", "Lyon", None, "Nice", None],
            "region": ["East", "East", "East", None, None],
            "reported_both": [True, True, False, False, False],
        }
    )
    filled = fill_locations(users, "unknown")
    assert list(filled["region"]) == ["East", "East", "East", "unknown", "unknown"]
    assert list(filled["city"]) == ["Lyon", "Lyon", "Lyon", "Nice", "unknown"]
    assert list(filled["location_source"]) == [
        "reported",
        "reported",
        "city_region_map",
        "unknown",
        "unknown",
    ]


def survey_rows() -> list[list[str]]:
    """40 users: young ones like streetwear, older ones classic; the last 5 give no birth date."""
    rows = []
    for i in range(40):
        young = i % 2 == 0
        birth = "2001-03-04" if young else "1971-03-04"
        style = "streetwear" if young else "classic"
        user = f"U{i:03d}"
        if i < 35:
            rows.append([user, BIRTH, birth, "Lyon", "East", "f", "app"])
        rows.append([user, STYLE, style, "Lyon", "" if i % 5 else "East", "f", "app"])
    return rows


def test_build_demographics_imputes_flags_and_quarantines(tmp_path) -> None:
    rows = survey_rows()
    rows += [
        rows[0],  # exact duplicate
        ["U900", BIRTH, "1850-01-01", "Lyon", "East", "m", "web"],
        ["U901", BIRTH, "rather not say", "Lyon", "East", "m", "web"],
        ["U902", STYLE, "", "Lyon", "East", "m", "web"],
        ["", STYLE, "classic", "Lyon", "East", "m", "web"],
    ]
    source = write_csv(tmp_path / "user_answers.csv", HEADER, rows)
    config = make_config(tmp_path, quality={"max_reject_rate": {"demographics": 1.0}})
    paths = run_paths(config)
    summary = build_demographics(config, paths, source, AS_OF)

    q = pq.read_table(paths.path(quarantine("demographics"))).to_pandas()
    assert sorted(q["reason"]) == [
        "duplicate_row",
        "impossible_birth_date",
        "missing_answer",
        "missing_user_id",
        "unparseable_birth_date",
    ]
    users = pq.read_table(paths.path(USERS)).to_pandas().set_index("user_id")
    assert len(users) == 40  # U900-U902 had nothing usable left
    assert users.loc["U000", "age"] == 25 and users.loc["U000", "age_source"] == "answer"
    imputed = users[users["age_source"] == "regression"]
    assert list(imputed.index) == ["U035", "U036", "U037", "U038", "U039"]
    # The style answer predicts age: imputed young users come out far younger than old ones.
    assert imputed.loc["U036", "age"] < 35 < imputed.loc["U037", "age"]
    assert set(users["age_group"]) <= {"25-34", "55-64", "18-24", "35-44", "45-54"}
    assert (users["region"] == "East").all()
    assert summary["counts"]["rows_in"] == len(rows)
    assert summary["age_model"]["cv_mae_years"] < summary["age_model"]["mean_baseline_mae_years"]
