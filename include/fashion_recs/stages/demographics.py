"""Stage 4, `demographics`: the seed's Model 3 preprocessing of onboarding survey answers.

Steps follow the seed: drop duplicates and missing answers (here: quarantine them, with a
reason), turn birth-date answers written in several formats into ages, bin ages into groups
(`pd.cut`), keep one row per user with per-user filling of city/region, impute the ages that
are still missing with a regression on the user's other answers, and let city and region fill
each other. Every imputed value is flagged with how it was obtained.

The seed filled a missing region with the *city's name*; here a city's region is learned from
the rows that report both, which gives a real region instead of a copy of the city.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.config import AnswerColumns, DemographicsConfig, RetailerConfig
from fashion_recs.contract import USERS, quarantine, users_schema
from fashion_recs.quality.quarantine import (
    RowVerdicts,
    account_rows,
    enforce_reject_rate,
)
from fashion_recs.stages.raw_csv import RawCsv, read_raw_csv

log = logging.getLogger(__name__)

STAGE = "demographics"
MIN_TRAIN_USERS = 20


def parse_birth_date(text: str, formats: list[str]) -> date | None:
    """The first configured format that parses the whole answer wins."""
    value = (text or "").strip()
    for fmt in formats:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def age_on(birth: date, day: date) -> int:
    """Completed years between `birth` and `day`."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def age_groups(ages: pd.Series, cfg: DemographicsConfig) -> pd.Series:
    """`pd.cut` into the configured groups (left-closed); missing ages get the unknown label."""
    groups = pd.cut(ages, bins=cfg.age_bins, labels=cfg.age_labels, right=False)
    return groups.astype("object").where(groups.notna(), cfg.unknown_label).astype(str)


@dataclass
class CleanAnswers:
    answers: pd.DataFrame
    quarantine: pd.DataFrame


def clean_answers(
    raw: pd.DataFrame, cols: AnswerColumns, cfg: DemographicsConfig, as_of: date
) -> CleanAnswers:
    """Quarantine duplicates, empty answers, missing users and unusable birth dates."""
    frame = raw.copy()
    frame["source_row"] = np.arange(len(frame))
    verdicts = RowVerdicts(frame.index)
    flag = verdicts.flag
    raw_cols = [c for c in raw.columns]
    flag(frame.duplicated(subset=raw_cols, keep="first"), "duplicate_row", "*")
    flag(frame[cols.user_id].str.strip() == "", "missing_user_id", cols.user_id)
    flag(frame[cols.answer].str.strip() == "", "missing_answer", cols.answer)

    is_birth = frame[cols.question].str.strip() == cols.birth_date_question
    births = frame.loc[is_birth, cols.answer].map(
        lambda t: parse_birth_date(t, cfg.birth_date_formats)
    )
    frame["birth_date"] = births.reindex(frame.index)
    flag(is_birth & frame["birth_date"].isna(), "unparseable_birth_date", cols.answer)
    ages = frame["birth_date"].map(lambda b: age_on(b, as_of) if isinstance(b, date) else np.nan)
    frame["age"] = pd.to_numeric(ages, errors="coerce")
    impossible = is_birth & frame["age"].notna() & ~frame["age"].between(cfg.min_age, cfg.max_age)
    flag(impossible, "impossible_birth_date", cols.answer)

    rejected, kept_rows = verdicts.split(raw)
    kept = frame[kept_rows].copy()
    for c in [cols.user_id, cols.question, cols.city, cols.region, *cols.extra]:
        kept[c] = kept[c].str.strip()
    return CleanAnswers(kept.reset_index(drop=True), rejected)


def build_user_table(answers: pd.DataFrame, cols: AnswerColumns) -> pd.DataFrame:
    """One row per user: birth date/age from answers, location and extras filled per user.

    The seed's per-user forward/backward fill amounts to: the first non-empty value a user
    gave for a field, in file order, holds for all of that user's rows.
    """
    ordered = answers.sort_values([cols.user_id, "source_row"], kind="stable")
    fields = [cols.city, cols.region, *cols.extra]
    values = ordered[fields].replace({"": None})
    values["birth_date"] = ordered["birth_date"]
    values["age"] = ordered["age"]
    users = values.groupby(ordered[cols.user_id], sort=True).first()  # first non-null
    users = users.rename(columns={cols.city: "city", cols.region: "region"})
    both = (ordered[cols.city] != "") & (ordered[cols.region] != "")
    users["reported_both"] = both.groupby(ordered[cols.user_id]).any()
    questions = ordered[ordered[cols.question] != cols.birth_date_question]
    if len(questions):
        survey = questions.pivot_table(
            index=cols.user_id, columns=cols.question, values=cols.answer, aggfunc="first"
        )
        survey.columns = [f"q::{q}" for q in survey.columns]
        users = users.join(survey)
    users.index.name = "user_id"
    return users.reset_index()


def fill_locations(users: pd.DataFrame, unknown: str) -> pd.DataFrame:
    """City and region fill each other through the mapping the data itself reports."""
    users = users.copy()
    source = np.where(users["reported_both"], "reported", "user_fill")
    known = users.dropna(subset=["city", "region"])
    city_to_region = known.groupby("city")["region"].agg(lambda s: s.mode().iloc[0])
    region_to_city = known.groupby("region")["city"].agg(lambda s: s.mode().iloc[0])
    need_region = users["region"].isna() & users["city"].isin(city_to_region.index)
    users.loc[need_region, "region"] = users.loc[need_region, "city"].map(city_to_region)
    need_city = users["city"].isna() & users["region"].isin(region_to_city.index)
    users.loc[need_city, "city"] = users.loc[need_city, "region"].map(region_to_city)
    source = np.where(need_region | need_city, "city_region_map", source)
    missing = users["city"].isna() | users["region"].isna()
    source = np.where(missing, "unknown", source)
    users["city"] = users["city"].fillna(unknown)
    users["region"] = users["region"].fillna(unknown)
    users["location_source"] = source
    return users


def impute_ages(
    users: pd.DataFrame, feature_cols: list[str], cfg: DemographicsConfig, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Fill missing ages with a ridge regression on the user's categorical answers.

    Ridge rather than the seed's plain least squares: one-hot answers are collinear and a
    small penalty keeps the fit stable. The returned report holds the cross-validated mean
    absolute error next to the error of always predicting the mean age, so a run shows
    whether the regression is worth more than a constant.
    """
    users = users.copy()
    users["age_source"] = np.where(users["age"].notna(), "answer", "none")
    known = users["age"].notna()
    report: dict[str, Any] = {"n_known": int(known.sum()), "n_imputed": 0, "features": feature_cols}
    if known.sum() < MIN_TRAIN_USERS or known.all() or not feature_cols:
        return users, report
    features = users[feature_cols].astype(str).fillna("")
    model = make_pipeline(
        ColumnTransformer(
            [("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=5), feature_cols)]
        ),
        Ridge(alpha=1.0, random_state=seed),
    )
    x_known, y_known = features[known], users.loc[known, "age"].astype(float)
    folds = min(5, int(known.sum()))
    cv_pred = cross_val_predict(model, x_known, y_known, cv=folds)
    report["cv_mae_years"] = round(float(np.abs(cv_pred - y_known).mean()), 3)
    report["mean_baseline_mae_years"] = round(float(np.abs(y_known - y_known.mean()).mean()), 3)
    model.fit(x_known, y_known)
    predicted = np.clip(model.predict(features[~known]), cfg.min_age, cfg.max_age)
    users.loc[~known, "age"] = np.round(predicted, 1)
    users.loc[~known, "age_source"] = "regression"
    report["n_imputed"] = int((~known).sum())
    return users, report


def build_demographics(config: RetailerConfig, paths: RunPaths, source: Path, as_of: date) -> dict:
    """Stage entry point: survey answers to one clean, fully-filled row per user."""
    cols, cfg = config.columns.answers, config.demographics
    required = [cols.user_id, cols.question, cols.answer, cols.city, cols.region, *cols.extra]
    raw = read_raw_csv(source, required, config.quality.max_record_bytes)
    cleaned = clean_answers(raw.rows, cols, cfg, as_of)
    users = build_user_table(cleaned.answers, cols)
    users = fill_locations(users, cfg.unknown_label)
    survey_features = [c for c in users.columns if c.startswith("q::")]
    users, age_report = impute_ages(
        users, ["region", "city", *cols.extra, *survey_features], cfg, config.seed
    )
    users["age_group"] = age_groups(users["age"], cfg)
    return finish_demographics(
        config,
        paths,
        users,
        age_report,
        [raw.locate(cleaned.quarantine), raw.rejected],
        rows_in=raw.records,
        rows_out=len(cleaned.answers),
        rows_label="answer",
        raw=raw,
    )


def finish_demographics(
    config: RetailerConfig,
    paths: RunPaths,
    users: pd.DataFrame,
    age_report: dict[str, Any],
    rejected: list[pd.DataFrame],
    *,
    rows_in: int,
    rows_out: int,
    rows_label: str,
    detail: str = "",
    raw: RawCsv | None = None,
) -> dict:
    """Write the users artifact and the quarantine, count and log the rows, enforce the
    reject rate (on the first rejected frame's columns) and summarise: one ending for every
    source format's demographics stage. `rows_label` names the source rows in the log
    ("answer", "customer"), `detail` adds to it."""
    schema = users_schema(config.columns.answers.extra)
    users_path = write_artifact(paths, USERS, users[schema.names], schema)
    counts = account_rows(
        STAGE,
        rejected,
        paths.path(quarantine(STAGE)),
        rows_in=rows_in,
        rows_out=rows_out,
        lines=raw.line_counts(rejected) if raw is not None else None,
        source=str(raw.source) if raw is not None else "",
    )
    log.info(
        "demographics: %d %s rows -> %d users (%s ages imputed, CV MAE %s vs %s for the mean%s); "
        "%d quarantined %s",
        counts.rows_in,
        rows_label,
        len(users),
        age_report["n_imputed"],
        age_report.get("cv_mae_years"),
        age_report.get("mean_baseline_mae_years"),
        detail,
        counts.rows_quarantined,
        counts.reasons,
    )
    enforce_reject_rate(counts, config.quality.threshold(STAGE), pd.concat(rejected))
    return {
        "users": str(users_path),
        "counts": counts.as_dict(),
        "n_users": len(users),
        "control_characters_removed": len(raw.control_characters) if raw is not None else 0,
        "age_sources": {str(k): int(v) for k, v in users["age_source"].value_counts().items()},
        "location_sources": {
            str(k): int(v) for k, v in users["location_source"].value_counts().items()
        },
        "age_model": age_report,
    }
