"""The blend: candidate lists merged by priority, the way fashion shoppers actually shop.

On fashion data a shopper's own recent items and their close look-alikes predict the next
click better than any neighbour does, and popularity in their segment catches the rest. The
blend takes, in the configured priority order: the user's recent items (repurchase), the
similar products of those items (round-robin: every recent item's best look-alike before
anyone's second), the personalised model's list (CF, embedding profile or two-tower), and
segment popularity. Each source is capped, duplicates keep their first (highest-priority)
place, and every row says which source put it there, so the metrics and the published table
can tell what the list is made of.

How many recent items and look-alikes a list should hold differs between retailers (on real
fashion data many; on a catalogue where people rarely return, few), so the caps can be learned
(`learn_caps`): every combination of a small grid is scored on the hold-out users, with
two-fold cross-fitting over users so that no user's score comes from caps chosen on their own
hold-out, and the caps that win on all users are used for the published lists.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashion_recs.errors import FashionRecsError
from fashion_recs.evaluate import metrics_from_hits, position_in_run
from fashion_recs.sort_keys import distinct, in_sorted

log = logging.getLogger(__name__)
# A progress line at least this often, well inside the 30 s an operator waits for one (a
# block's work comes on top of the interval).
PROGRESS_EVERY_S = 10.0

SOURCES = ("recent", "similar", "model", "segment_popularity")
BLEND_COLUMNS = ["user_id", "product_id", "rank", "score", "source"]


def similar_of_recent(
    recent: pd.DataFrame, similar: pd.DataFrame, n_recent: int, per_item: int
) -> pd.DataFrame:
    """Look-alikes of each user's `n_recent` best recent items, interleaved round-robin.

    `recent`: user_id, product_id, rank; `similar`: product_id, rank, similar_product_id.
    Returns user_id, product_id, rank (1.. in round-robin order), score (the similarity).
    """
    top = recent[recent["rank"] <= n_recent][["user_id", "product_id", "rank"]]
    near = similar[similar["rank"] <= per_item][
        ["product_id", "rank", "similar_product_id", "score"]
    ]
    merged = top.merge(near, on="product_id", suffixes=("_recent", "_similar"))
    merged = merged.sort_values(
        ["user_id", "rank_similar", "rank_recent"], kind="mergesort"
    ).drop_duplicates(["user_id", "similar_product_id"])
    out = pd.DataFrame(
        {
            "user_id": merged["user_id"].to_numpy(),
            "product_id": merged["similar_product_id"].to_numpy(),
            "score": merged["score"].to_numpy(dtype=np.float64),
        }
    )
    out["rank"] = (out.groupby("user_id", sort=False).cumcount() + 1).astype(np.int32)
    return out


def blend(
    user_ids: Sequence[str],
    candidates: Mapping[str, pd.DataFrame],
    priority: Sequence[str],
    caps: Mapping[str, int],
    k: int,
) -> pd.DataFrame:
    """Merge per-source ranked lists (user_id, product_id, rank) into one top-k per user.

    A source named in `priority` but missing from `candidates` is an error (a silent gap
    would make the blend look better or worse than it is); a source with no rows for a user
    simply contributes nothing. Score is k + 1 - rank, so it orders like the rank.
    """
    unknown = [s for s in priority if s not in candidates]
    if unknown:
        raise FashionRecsError(f"blend: no candidate lists for sources {unknown}")
    users = pd.Index(list(dict.fromkeys(user_ids)))
    parts = []
    for level, source in enumerate(priority):
        frame = candidates[source]
        frame = frame[frame["rank"] <= caps.get(source, k)]
        # Positions, not `isin`: over string ids it took seconds per source at 10x the demo.
        position = users.get_indexer(frame["user_id"])
        wanted = position >= 0
        frame = frame[wanted]
        parts.append(
            pd.DataFrame(
                {
                    "user_id": frame["user_id"].to_numpy(),
                    "product_id": frame["product_id"].to_numpy(),
                    "_level": level,
                    "_rank": frame["rank"].to_numpy(),
                    "source": source,
                    "_user": position[wanted],
                }
            )
        )
    merged = pd.concat(parts, ignore_index=True)
    merged = merged.sort_values(["_user", "_level", "_rank"], kind="mergesort").drop_duplicates(
        ["user_id", "product_id"]
    )
    merged["rank"] = (merged.groupby("_user", sort=False).cumcount() + 1).astype(np.int32)
    merged = merged[merged["rank"] <= k]
    merged["score"] = (k + 1 - merged["rank"]).astype(np.float64)
    return merged[BLEND_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class LearnedCaps:
    """Caps chosen on all hold-out users, and the cross-fitted lists to score the blend by."""

    caps: dict[str, int]
    lists: pd.DataFrame
    grid_scores: dict[str, float]


class CapGrid:
    """Every source's candidate rows for the hold-out users, as integer codes, once.

    Scoring a grid point is then a mask on the rows (rank within the point's cap), a drop of
    repeated (user, product) pairs and a positional count: the lists and per-user metrics
    `blend` and `per_user_metrics` give, without re-sorting and re-hashing id strings for
    every point (at 200k users a point took 5 s that way; here a fraction of a second).
    """

    def __init__(
        self,
        users: pd.Index,
        candidates: Mapping[str, pd.DataFrame],
        priority: Sequence[str],
        max_caps: Mapping[str, int],
        truth: pd.DataFrame,
        k: int,
    ) -> None:
        unknown = [s for s in priority if s not in candidates]
        if unknown:
            raise FashionRecsError(f"blend: no candidate lists for sources {unknown}")
        self.users, self.priority, self.k = users, list(priority), k
        parts = []
        for level, source in enumerate(priority):
            frame = candidates[source]
            frame = frame[(frame["rank"] <= max_caps.get(source, k)).to_numpy()]
            codes = users.get_indexer(frame["user_id"])
            known = codes >= 0
            parts.append(
                pd.DataFrame(
                    {
                        "_user": codes[known],
                        "_level": level,
                        "_rank": frame["rank"].to_numpy()[known],
                        "product_id": frame["product_id"].to_numpy()[known],
                    }
                )
            )
        rows = pd.concat(parts, ignore_index=True)
        rows = rows.sort_values(["_user", "_level", "_rank"], kind="mergesort")
        truth = truth[["user_id", "product_id"]]
        item_codes, items = pd.factorize(
            pd.concat([rows["product_id"], truth["product_id"]], ignore_index=True)
        )
        n_items = max(len(items), 1)
        self.user = rows["_user"].to_numpy(dtype=np.int64)
        self.level = rows["_level"].to_numpy(dtype=np.int64)
        self.rank = rows["_rank"].to_numpy(dtype=np.int64)
        self.pair = self.user * n_items + item_codes[: len(rows)]
        truth_users = users.get_indexer(truth["user_id"])
        in_users = truth_users >= 0
        truth_keys = distinct(
            truth_users[in_users].astype(np.int64) * n_items + item_codes[len(rows) :][in_users]
        )
        self.n_relevant = np.bincount(truth_keys // n_items, minlength=len(users))
        self.is_hit = in_sorted(truth_keys, self.pair)

    def scores(self, caps: Mapping[str, int], metric: str) -> np.ndarray:
        """Per-user `metric` (aligned with the users; 0 for users without relevant items)."""
        cap = np.asarray([caps.get(s, self.k) for s in self.priority], dtype=np.int64)
        kept = np.flatnonzero(self.rank <= cap[self.level])
        first = ~pd.Series(self.pair[kept]).duplicated().to_numpy()
        kept = kept[first]
        user = self.user[kept]
        position = position_in_run(user)
        top = position <= self.k
        hit = self.is_hit[kept] & top
        with np.errstate(divide="ignore", invalid="ignore"):
            table = metrics_from_hits(self.n_relevant, user[hit], position[hit], self.k, self.users)
        return table[metric].fillna(0.0).to_numpy()


def learn_caps(
    user_ids: Sequence[str],
    candidates: Mapping[str, pd.DataFrame],
    priority: Sequence[str],
    grid: Mapping[str, Sequence[int]],
    truth: pd.DataFrame,
    k: int,
    metric: str = "average_precision",
) -> LearnedCaps:
    """Pick the caps of the sources in `grid` that maximise the mean per-user `metric`.

    Users are split in two folds by a stable hash of their id; each fold is served the caps
    that scored best on the other fold, which is how the returned `lists` are made (an honest
    estimate of the learned blend), and `caps` are the best on all users (for production).
    """
    users = pd.Index(list(dict.fromkeys(user_ids)))
    names = sorted(grid)
    combos = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(grid[n] for n in names))
    ]
    fold = pd.Series(
        pd.util.hash_array(users.to_numpy(dtype=object)) % 2, index=users, dtype=np.int64
    )
    max_caps = {n: max(grid[n]) for n in names}
    scorer = CapGrid(users, candidates, priority, max_caps, truth, k)
    per_combo = []
    started = last = time.perf_counter()
    for i, caps in enumerate(combos, 1):
        per_combo.append(pd.Series(scorer.scores(caps, metric), index=users))
        if time.perf_counter() - last > PROGRESS_EVERY_S / 2 and i < len(combos):
            last = time.perf_counter()
            left = (last - started) / i * (len(combos) - i)
            log.info("blend caps: %d/%d grid points scored (~%.0f s left)", i, len(combos), left)
    table = pd.concat(per_combo, axis=1, keys=range(len(combos)))
    best_overall = int(table.mean().to_numpy().argmax())
    log.info(
        "blend caps: %d grid points scored in %.0f s, best %s; blending each fold's choice",
        len(combos),
        time.perf_counter() - started,
        combos[best_overall],
    )
    parts = []
    for f in (0, 1):
        trained_on = table[(fold != f).to_numpy()]
        chosen = int(trained_on.mean().to_numpy().argmax()) if len(trained_on) else best_overall
        served = users[(fold == f).to_numpy()]
        # Blended again rather than kept from the grid: holding every grid point's lists
        # cost gigabytes at 200k users.
        parts.append(blend(served, candidates, priority, {**combos[chosen]}, k))
        log.info(
            "blend caps: fold %d of 2 blended for %d users with %s (%.0f s)",
            f + 1,
            len(served),
            combos[chosen],
            time.perf_counter() - started,
        )
    crossfit = pd.concat(parts, ignore_index=True)
    crossfit["_user"] = users.get_indexer(crossfit["user_id"])
    crossfit = crossfit.sort_values(["_user", "rank"], kind="mergesort").drop(columns="_user")
    grid_scores = {
        ",".join(f"{n}={c[n]}" for n in names): round(float(v), 5)
        for c, v in zip(combos, table.mean().to_numpy(), strict=True)
    }
    return LearnedCaps(combos[best_overall], crossfit.reset_index(drop=True), grid_scores)
