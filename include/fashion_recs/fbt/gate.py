"""The FBT gate: published lists never complete held-out baskets worse than popularity.

Like the personal gate, each run measures before it publishes. A seeded share of the run's
baskets is held out; each variant is built from the rest and scored by basket completion
(`completion_hit_rate`): the configured lists, the same without the department exclusion
(coarse departments hold complements too), each also blended five times harder toward
popularity, and plain popularity (what the baseline serves). The best variant, ties going
to the earlier one, is rebuilt on every basket and published; the decision and every score
go into the step's summary and the `fbt_metrics_gate` artifact the run report shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fashion_recs.config import FbtListsConfig
from fashion_recs.fbt.evaluate import completion_hit_rate
from fashion_recs.fbt.matrix import BasketMatrix
from fashion_recs.fbt.recommend import popularity_lists, recommend, recommend_variants

log = logging.getLogger(__name__)

MODEL = "fbt_gate"
CONFIGURED = "configured"
POPULARITY = "popularity"


@dataclass
class GateDecision:
    """What the gate measured and chose; `chosen` names the published variant."""

    chosen: str
    hit_rates: dict[str, float] = field(default_factory=dict)
    n_queries: int = 0
    k: int = 0
    reason: str = ""

    @property
    def lists_vs_popularity(self) -> float | None:
        pop = self.hit_rates.get(POPULARITY)
        mine = self.hit_rates.get(self.chosen)
        return None if not pop or mine is None else mine / pop

    def as_dict(self) -> dict:
        ratio = self.lists_vs_popularity
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "n_queries": self.n_queries,
            "hit_rates": {name: round(v, 5) for name, v in self.hit_rates.items()},
            "lists_vs_popularity": None if ratio is None else round(ratio, 4),
        }

    def metric_rows(self) -> pd.DataFrame:
        """METRICS-schema rows: each variant's held-out hit rate, the published one's ratio to
        popularity, and which variant was published (value 1)."""
        rows = [(f"hit_rate_{name}", v) for name, v in self.hit_rates.items()]
        if self.lists_vs_popularity is not None:
            rows.append(("published_vs_popularity", self.lists_vs_popularity))
        rows.append((f"published_{self.chosen}", 1.0))
        return pd.DataFrame(
            {
                "model": MODEL,
                "metric": [r[0] for r in rows],
                "k": pd.array([self.k] * len(rows), dtype="Int32"),
                "value": [float(r[1]) for r in rows],
                "n_users": self.n_queries,
            }
        )


Builder = Callable[[BasketMatrix], pd.DataFrame]


def list_configs(config: FbtListsConfig) -> dict[str, FbtListsConfig]:
    """The list variants' configs, in order of preference (popularity comes after them)."""
    out: dict[str, FbtListsConfig] = {}
    loose = config.model_copy(update={"exclude_same_department": False})
    for name, base in ((CONFIGURED, config), ("with_substitutes", loose)):
        if name == "with_substitutes" and not config.exclude_same_department:
            continue
        out[name] = base
        out[f"{name}_blend"] = base.model_copy(update={"shrinkage": max(base.shrinkage, 1.0) * 5})
    return out


def variants(
    rules: pd.DataFrame, catalogue: pd.DataFrame, config: FbtListsConfig
) -> dict[str, Builder]:
    """Each candidate way to build the lists from a basket matrix, in order of preference."""
    out: dict[str, Builder] = {
        name: (lambda m, c=c: recommend(rules, catalogue, m, c))
        for name, c in list_configs(config).items()
    }
    out[POPULARITY] = lambda m: popularity_lists(
        catalogue,
        pd.Series(m.item_counts(), index=m.item_ids.astype(str)),
        m.n_baskets,
        config.top_k,
    )
    return out


def gated_lists(
    rules: pd.DataFrame,
    catalogue: pd.DataFrame,
    matrix: BasketMatrix,
    config: FbtListsConfig,
    seed: int,
) -> tuple[pd.DataFrame, GateDecision]:
    """The lists to publish and the gate's decision (see the module docstring)."""
    builders = variants(rules, catalogue, config)
    k = config.top_k
    if not config.gate:
        return builders[CONFIGURED](matrix), GateDecision(CONFIGURED, k=k, reason="gate off")
    rng = np.random.default_rng(seed)
    held = rng.random(matrix.n_baskets) < config.gate_holdout_share
    train = matrix.take_baskets(np.flatnonzero(~held))
    test = matrix.take_baskets(np.flatnonzero(held))
    sizes = test.basket_sizes()
    n_queries = int(sizes[sizes >= 2].sum())
    if n_queries < config.gate_min_queries:
        reason = (
            f"{n_queries} held-out queries, fewer than fbt.lists.gate_min_queries "
            f"({config.gate_min_queries}): configured lists published unchecked"
        )
        log.warning("fbt gate: %s", reason)
        decision = GateDecision(CONFIGURED, n_queries=n_queries, k=k, reason=reason)
        return builders[CONFIGURED](matrix), decision
    # The variants take their time at scale (25 s at 10x the demo): say what is coming.
    log.info(
        "fbt gate: scoring %d variants (%s) on %d held-out queries of %d baskets",
        len(builders),
        ", ".join(builders),
        n_queries,
        test.n_baskets,
    )
    # The list variants share one co-occurrence pass over the training baskets.
    started = time.perf_counter()
    configs = list_configs(config)
    lists = recommend_variants(rules, catalogue, train, list(configs.values()))
    built = dict(zip(configs, lists, strict=True))
    built[POPULARITY] = builders[POPULARITY](train)
    log.info(
        "fbt gate: %d variants' lists built from %d training baskets (%.1f s)",
        len(built),
        train.n_baskets,
        time.perf_counter() - started,
    )
    hit_rates = {}
    for name, lists in built.items():
        started = time.perf_counter()
        hit_rates[name], _ = completion_hit_rate(lists, test, k)
        log.info(
            "fbt gate: %s completes %.4f of %d held-out queries (%.1f s)",
            name,
            hit_rates[name],
            n_queries,
            time.perf_counter() - started,
        )
    del built
    decision = choose_variant(hit_rates, n_queries, k)
    return builders[decision.chosen](matrix), decision


def choose_variant(
    hit_rates: dict[str, float], n_queries: int, k: int, engine: str = ""
) -> GateDecision:
    """The variant with the best held-out hit rate (ties to the earlier variant), with the
    reason, logged: a warning when the configured lists lose. Shared by both engines."""
    names = list(hit_rates)
    chosen = max(names, key=lambda name: (hit_rates[name], -names.index(name)))
    if chosen == CONFIGURED:
        reason = "the configured lists complete held-out baskets best"
    elif chosen == POPULARITY:
        reason = "no list variant beat popularity on held-out baskets: popularity published"
    else:
        reason = f"{chosen} completes held-out baskets better than the configured lists"
    decision = GateDecision(chosen, hit_rates, n_queries, k, reason)
    log_call = log.info if chosen == CONFIGURED else log.warning
    log_call("fbt gate%s: %s (%s)", engine, reason, decision.as_dict()["hit_rates"])
    return decision
