"""Stages 8-12, frequently bought together: baskets, rules, cross-check, lists, evaluation.

Each function reads its inputs from the run's artifacts, calls the `fashion_recs.fbt`
library and writes its own Parquet artifact, returning the small summary that travels on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from fashion_recs.artifacts import RunPaths, write_artifact
from fashion_recs.config import RetailerConfig
from fashion_recs.contract import (
    BASKETS,
    FBT_CROSSCHECK,
    FBT_GATE_METRICS,
    FBT_METRICS,
    FBT_RECOMMENDATIONS,
    FBT_RULES,
)
from fashion_recs.errors import EngineMismatch, ResourceLimitExceeded
from fashion_recs.fbt.baskets import (
    BASKET_INPUT_COLUMNS,
    BasketStats,
    build_baskets,
    to_matrix,
)
from fashion_recs.fbt.evaluate import basket_completion, bundle_recovery
from fashion_recs.fbt.gate import gated_lists
from fashion_recs.fbt.matrix import BasketMatrix
from fashion_recs.fbt.mining import (
    MINERS,
    Itemsets,
    choose_engine,
    mine,
    mlxtend_itemsets,
    support_threshold,
)
from fashion_recs.fbt.recommend import coverage_by_source
from fashion_recs.fbt.rules import association_rules, compare_rules, mlxtend_rules

log = logging.getLogger(__name__)

CATALOGUE_COLUMNS = ["product_id", "department", "target_audience"]


def baskets_stage(
    config: RetailerConfig, paths: RunPaths, interactions: Path, products: Path
) -> dict[str, Any]:
    frame = pl.read_parquet(interactions, columns=list(BASKET_INPUT_COLUMNS))
    ids = pq.read_table(products, columns=["product_id"]).column(0).to_pylist()
    baskets, stats = build_baskets(frame, ids, config.fbt.baskets)
    path = write_artifact(paths, BASKETS, baskets)
    return baskets_summary(config, path, stats)


def baskets_summary(config: RetailerConfig, path: Path, stats: BasketStats) -> dict[str, Any]:
    """The baskets stage's log lines and summary (shared by both engines)."""
    log.info("baskets: %s", stats.as_dict())
    if stats.n_baskets == 0:
        log.warning(
            "no baskets: no interaction of categories %s for a catalogue product; the FBT "
            "tables will be empty",
            config.fbt.baskets.categories,
        )
    counts = {
        "stage": "baskets",
        "rows_in": stats.rows_in,
        "rows_out": stats.rows_out,
        "rows_filtered": sum(stats.dropped.values()),
        "rows_quarantined": 0,
        "reasons": {k: v for k, v in stats.dropped.items() if v},
    }
    return {"baskets": str(path), "stats": stats.as_dict(), "counts": counts}


def _mine_rules(
    config: RetailerConfig, matrix: BasketMatrix, engine: str
) -> tuple[pd.DataFrame, Itemsets]:
    mining = config.fbt.mining
    itemsets = mine(
        matrix,
        min_support=mining.min_support,
        min_count=mining.min_count,
        max_len=mining.max_len,
        engine=engine,
        max_memory_mb=mining.max_memory_mb,
    )
    return association_rules(
        itemsets, min_confidence=mining.min_confidence, min_lift=mining.min_lift
    ), itemsets


def rules_stage(config: RetailerConfig, paths: RunPaths, baskets: Path) -> dict[str, Any]:
    mining = config.fbt.mining
    matrix = to_matrix(pl.read_parquet(baskets))
    engine = choose_engine(mining.engine)
    started = time.perf_counter()
    rules, itemsets = _mine_rules(config, matrix, engine)
    seconds = time.perf_counter() - started
    path = write_artifact(paths, FBT_RULES, rules)
    if rules.empty:
        log.warning(
            "fbt: no rule passed min_support %g (%d baskets), min_confidence %g and min_lift %g "
            "on %d baskets; the rules table is empty and lists fall back. Lower "
            "fbt.mining.min_support / min_count to find rules.",
            mining.min_support,
            itemsets.min_count,
            mining.min_confidence,
            mining.min_lift,
            matrix.n_baskets,
        )
    return {
        "fbt_rules": str(path),
        "engine": engine,
        "seconds": round(seconds, 3),
        "n_baskets": matrix.n_baskets,
        "n_items": matrix.n_items,
        "min_count": itemsets.min_count,
        "itemsets_by_length": {str(k): len(itemsets.counts[k]) for k in itemsets.lengths()},
        "n_rules": len(rules),
    }


def _sample(matrix: BasketMatrix, max_baskets: int, max_items: int, seed: int) -> BasketMatrix:
    """Up to `max_baskets` random baskets restricted to their `max_items` most frequent items."""
    if matrix.n_baskets > max_baskets:
        rows = np.sort(np.random.default_rng(seed).choice(matrix.n_baskets, max_baskets, False))
        matrix = matrix.take_baskets(rows)
    counts = matrix.item_counts()
    if matrix.n_items > max_items:
        order = np.lexsort((np.arange(len(counts)), -counts))[:max_items]
        keep = np.zeros(len(counts), dtype=bool)
        keep[order] = True
        matrix = matrix.keep_items(keep)
    return matrix


def crosscheck_stage(config: RetailerConfig, paths: RunPaths, baskets: Path) -> dict[str, Any]:
    """Mine a sample with every configured engine and require identical rules."""
    check = config.fbt.crosscheck
    mining = config.fbt.mining
    matrix = to_matrix(pl.read_parquet(baskets))
    sample = _sample(matrix, check.max_baskets, check.max_items, config.seed)
    log.info(
        "cross-check: a sample of %d baskets x %d products mined by every engine",
        sample.n_baskets,
        sample.n_items,
    )
    t = support_threshold(sample.n_baskets, mining.min_support, mining.min_count)
    # On a small sample the configured support may find nothing; the cross-check wants
    # itemsets to compare, so it also accepts itemsets in 0.5% of the sampled baskets.
    t = max(2, min(t, int(np.ceil(0.005 * max(sample.n_baskets, 1)))))
    rows, reference, problems, seconds = [], None, [], {}
    for engine in check.engines if check.enabled else []:
        row: dict[str, Any] = {
            "engine": engine,
            "n_baskets": sample.n_baskets,
            "n_items": sample.n_items,
            "min_count": t,
        }
        started = time.perf_counter()
        try:
            if engine.startswith("mlxtend_"):
                itemsets, frame = mlxtend_itemsets(
                    engine.removeprefix("mlxtend_"),
                    sample,
                    t,
                    mining.max_len,
                    mining.max_memory_mb << 20,
                )
                rules = mlxtend_rules(
                    frame,
                    sample.item_ids,
                    sample.n_baskets,
                    min_confidence=mining.min_confidence,
                    min_lift=mining.min_lift,
                    engine=engine,
                )
            else:
                itemsets = MINERS[engine](sample, t, mining.max_len, mining.max_memory_mb << 20)
                rules = association_rules(
                    itemsets, min_confidence=mining.min_confidence, min_lift=mining.min_lift
                )
        except ResourceLimitExceeded as exc:
            rows.append({**row, "status": "skipped", "detail": str(exc)})
            log.warning("cross-check: %s skipped: %s", engine, exc)
            continue
        seconds[engine] = round(time.perf_counter() - started, 4)
        row.update(
            status="ok",
            n_itemsets=itemsets.n_itemsets,
            n_rules=len(rules),
        )
        if reference is None:
            reference, row["identical_to_reference"], row["detail"] = rules, True, "reference"
        else:
            diff = compare_rules(rules, reference)
            row["identical_to_reference"] = not diff
            row["detail"] = "; ".join(diff) or f"identical to {rows[0]['engine']}"
            problems += [f"{engine}: {d}" for d in diff]
        rows.append(row)
    path = write_artifact(paths, FBT_CROSSCHECK, pd.DataFrame(rows))
    if problems:
        raise EngineMismatch(
            "mining engines disagree on the same baskets (see "
            + str(path)
            + "): "
            + " | ".join(problems)
        )
    compared = [r["engine"] for r in rows if r["status"] == "ok"]
    return {
        "fbt_crosscheck": str(path),
        "engines_compared": compared,
        "skipped": [r["engine"] for r in rows if r["status"] == "skipped"],
        "sample_baskets": sample.n_baskets,
        "sample_items": sample.n_items,
        "n_rules": rows[0].get("n_rules") if rows else None,
        "seconds": seconds,
    }


def _catalogue(products: Path) -> pd.DataFrame:
    return pq.read_table(products, columns=CATALOGUE_COLUMNS).to_pandas()


def lists_stage(
    config: RetailerConfig, paths: RunPaths, rules: Path, baskets: Path, products: Path
) -> dict[str, Any]:
    """The published lists, through the gate: never worse than popularity on held-out
    baskets (the decision is in the summary and in `fbt_metrics_gate`)."""
    matrix = to_matrix(pl.read_parquet(baskets))
    lists, decision = gated_lists(
        pd.read_parquet(rules), _catalogue(products), matrix, config.fbt.lists, config.seed
    )
    path = write_artifact(paths, FBT_RECOMMENDATIONS, lists)
    gate_path = write_artifact(paths, FBT_GATE_METRICS, decision.metric_rows())
    sources = coverage_by_source(lists)
    with_rules = int(lists.loc[lists["source"] == "rules", "product_id"].nunique())
    log.info(
        "fbt lists: %d products, %d with rules, entries by source %s",
        lists["product_id"].nunique(),
        with_rules,
        sources,
    )
    return {
        "fbt_recommendations": str(path),
        "fbt_metrics_gate": str(gate_path),
        "products": int(lists["product_id"].nunique()),
        "products_with_rules": with_rules,
        "entries_by_source": sources,
        "gate": decision.as_dict(),
    }


def evaluate_stage(
    config: RetailerConfig, paths: RunPaths, rules: Path, baskets: Path, products: Path
) -> dict[str, Any]:
    """Basket completion vs popularity, plus bundle recovery when planted truth is known."""
    catalogue = _catalogue(products)
    frame = pl.read_parquet(baskets)
    k = config.evaluation.k

    def build(train: pl.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        matrix = to_matrix(train)
        train_rules, _ = _mine_rules(config, matrix, choose_engine(config.fbt.mining.engine))
        lists, _ = gated_lists(train_rules, catalogue, matrix, config.fbt.lists, config.seed)
        popularity = pd.Series(matrix.item_counts(), index=matrix.item_ids.astype(str))
        return lists, popularity

    metrics = basket_completion(
        frame,
        build,
        holdout_days=config.evaluation.holdout_days,
        k=k,
        seed=config.seed,
        catalogue_size=len(catalogue),
    )
    truth_dir = config.evaluation.truth_dir
    bundles_file = config.resolve(truth_dir) / "bundles.parquet" if truth_dir else None
    if bundles_file is not None and bundles_file.exists():
        recovery = bundle_recovery(
            pd.read_parquet(rules), pd.read_parquet(bundles_file), config.fbt.lists.min_pair_count
        )
        extra = pd.DataFrame(
            {
                "model": "fbt_rules",
                "metric": list(recovery),
                "k": pd.array([None] * len(recovery), dtype="Int32"),
                "value": list(recovery.values()),
                "n_users": int(recovery["n_bundle_pairs"]),
            }
        )
        metrics = pd.concat([metrics, extra], ignore_index=True)
    elif truth_dir:
        log.warning(
            "fbt evaluation: no planted bundles at %s; skipping bundle recovery", bundles_file
        )
    path = write_artifact(paths, FBT_METRICS, metrics)
    values = {
        f"{r.model}/{r.metric}" + (f"@{r.k}" if pd.notna(r.k) else ""): round(float(r.value), 5)
        for r in metrics.itertuples()
    }
    log.info("fbt evaluation: %s", values)
    return {"fbt_metrics": str(path), "values": values}
