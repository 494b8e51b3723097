"""Stage 7, `evaluate`: the popularity baselines scored on a temporal hold-out, every run.

Popularity (overall, and per age group x region segment falling back to age group or region
alone, as the routing does) is what the routing serves to shoppers it knows little about, and
it is the bar every personalised model must clear before it is published for routing. Scoring
it every run, on the last `holdout_days` calendar days of interactions, gives the run's metrics
table its reference rows and shows drift from day to day.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fashion_recs.config import RetailerConfig
from fashion_recs.evaluate import (
    evaluate_all,
    popularity_predictions,
    relevant_items,
    segment_popularity_predictions,
    temporal_split,
)

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ["age_group", "region"]


def evaluate_baselines(
    config: RetailerConfig, interactions: pd.DataFrame, users: pd.DataFrame, n_products: int
) -> pd.DataFrame:
    """Metrics rows (METRICS schema) for `popularity` and `segment_popularity`."""
    k = config.evaluation.k
    train, test = temporal_split(interactions, config.evaluation.holdout_days)
    truth = relevant_items(test)
    test_users = truth["user_id"].drop_duplicates().sort_values().reset_index(drop=True)
    log.info(
        "evaluate: %d train events, %d test events, %d warm test users",
        len(train),
        len(test),
        len(test_users),
    )
    segments = (
        pd.DataFrame({"user_id": test_users})
        .merge(users[["user_id", *SEGMENT_COLUMNS]], on="user_id", how="left")
        .replace({config.demographics.unknown_label: np.nan})
    )
    candidates = {
        "popularity": popularity_predictions(train, test_users, k),
        "segment_popularity": segment_popularity_predictions(train, segments, SEGMENT_COLUMNS, k),
    }
    return pd.concat(
        [
            evaluate_all(truth, preds, k=k, catalogue_size=n_products, model=name)
            for name, preds in candidates.items()
        ],
        ignore_index=True,
    )
