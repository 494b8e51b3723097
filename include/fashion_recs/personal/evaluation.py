"""The hold-out every personalised model and baseline of a run is scored on.

One temporal split per run (the last `holdout_days` calendar days of the evaluation config,
the same cut as the popularity baselines of the `evaluate` stage), so every number in the
metrics table answers the same question: given what happened before the cutoff, what did each
user touch after it? Models are fitted on a matrix decayed to the cutoff, never to the run's
as-of, so nothing from the hold-out leaks into training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from fashion_recs.evaluate import (
    before_cutoff,
    evaluate_all,
    holdout_cutoff,
    relevant_items,
    temporal_split,
)
from fashion_recs.personal.matrix import UserItemMatrix, user_item_matrix


@dataclass(frozen=True)
class HoldoutSplit:
    """Train interactions and matrix, and the truth of the warm hold-out users.

    The train events are selected again when a model asks for them (`train`): most models
    need only the matrix, and a copy of every event before the cutoff held through a whole
    step cost the ranker over a gigabyte at 10x the demo.
    """

    interactions: pd.DataFrame
    truth: pd.DataFrame
    users: pd.Index
    cutoff: pd.Timestamp
    matrix: UserItemMatrix

    @cached_property
    def train(self) -> pd.DataFrame:
        """The events before the cutoff, in their order (`temporal_split`'s train)."""
        in_train = before_cutoff(self.interactions, self.cutoff)
        return self.interactions[in_train].reset_index(drop=True)


def holdout_split(
    interactions: pd.DataFrame,
    items: pd.Index,
    *,
    holdout_days: int,
    half_life_days: float,
) -> HoldoutSplit:
    """Split off the last `holdout_days` calendar days; the matrix covers train users only.

    The cutoff is `holdout_cutoff`'s, the one `temporal_split` cuts at, so the train events,
    the truth and the matrix's decay date describe the same instant.
    """
    train, test = temporal_split(interactions, holdout_days)
    truth = relevant_items(test)
    del test
    cutoff = holdout_cutoff(interactions["event_ts"].max(), holdout_days)
    matrix = user_item_matrix(train, items, as_of=cutoff, half_life_days=half_life_days)
    users = pd.Index(truth["user_id"].drop_duplicates().sort_values(), name="user_id")
    return HoldoutSplit(interactions, truth, users, cutoff, matrix)


def score_lists(
    lists: pd.DataFrame, split: HoldoutSplit, *, k: int, catalogue_size: int, model: str
) -> pd.DataFrame:
    """Metrics rows (METRICS schema) of one model's hold-out lists."""
    return evaluate_all(split.truth, lists, k=k, catalogue_size=catalogue_size, model=model)
