"""Frequently-bought-together mining: our sparse engine vs mlxtend and pyfim, side by side.

Baskets: Zipf item popularity plus planted pairs, generated with a fixed seed. Each engine runs
in its own process (peak RSS is its own) from its native input, already built: a sparse
one-hot DataFrame for mlxtend, lists of item ids for pyfim, a CSR matrix for ours. Timed:
frequent itemsets (max_len 3) plus association rules at the same min_support and confidence.
The parent checks that every engine produced the same rules (`compare_rules`, 1e-9).

The lists' quality: two planted regimes (`fashion_recs.synthetic_baskets`: large fashion
orders, small grocery baskets with coarse departments), 80/20 split by basket, rules mined
with the project's defaults on the 80%; every product of a held-out basket asks its top 10
(`completion_hit_rate`). The gated lists are scored beside plain popularity and the seed's
order (rules first by confidence).

    python bench/fbt.py                 # 200k x 20k (all engines) and 2M x 100k (ours, pyfim,
                                        # mlxtend within a time limit), then list quality
    python bench/fbt.py --quick         # list quality only; engine figures kept from the
                                        # last full run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from machine import machine, now, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "fbt.json"
WORK = Path("/tmp/fashion-recs-bench-fbt")
MIN_SUPPORT = 0.001
MIN_CONFIDENCE = 0.1
MAX_LEN = 3


def generate(n_baskets: int, n_items: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of baskets: Zipf(1.1) items, sizes 1 + Poisson(2.5), and 200
    planted pairs each added to 0.15% of the baskets."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    sizes = 1 + rng.poisson(2.5, n_baskets)
    items = rng.choice(n_items, int(sizes.sum()), p=p)
    rows = np.repeat(np.arange(n_baskets), sizes)
    pairs = rng.choice(np.arange(n_items // 10, n_items), (200, 2), replace=False)
    extra_rows, extra_items = [], []
    for a, b in pairs:
        chosen = rng.choice(n_baskets, int(0.0015 * n_baskets), replace=False)
        extra_rows += [chosen, chosen]
        extra_items += [np.full(len(chosen), a), np.full(len(chosen), b)]
    rows = np.concatenate([rows, *extra_rows])
    items = np.concatenate([items, *extra_items])
    import scipy.sparse as sp

    X = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, items)), (n_baskets, n_items))
    X.sum_duplicates()
    X.sort_indices()
    return X.indptr, X.indices


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(engine: str, data: Path, out: Path) -> None:
    import scipy.sparse as sp

    from fashion_recs.fbt.matrix import BasketMatrix
    from fashion_recs.fbt.mining import MINERS, mlxtend_itemsets, support_threshold
    from fashion_recs.fbt.rules import association_rules, mlxtend_rules

    arrays = np.load(data)
    indptr, indices, n_items = arrays["indptr"], arrays["indices"], int(arrays["n_items"])
    X = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.int32), indices, indptr), (len(indptr) - 1, n_items)
    )
    m = BasketMatrix(X, np.asarray([f"i{i:06d}" for i in range(n_items)], dtype=object))
    t = support_threshold(m.n_baskets, MIN_SUPPORT, 1)
    big = 64 << 30
    if engine == "mlxtend_fpgrowth":
        import pandas as pd
        from mlxtend.frequent_patterns import fpgrowth

        onehot = pd.DataFrame.sparse.from_spmatrix(m.X.astype(bool), columns=np.arange(n_items))
        started = time.perf_counter()
        frame = fpgrowth(
            onehot, min_support=(t - 0.5) / m.n_baskets, use_colnames=True, max_len=MAX_LEN
        )
        rules = mlxtend_rules(
            frame,
            m.item_ids,
            m.n_baskets,
            min_confidence=MIN_CONFIDENCE,
            min_lift=0.0,
            engine=engine,
        )
        seconds = time.perf_counter() - started
        del mlxtend_itemsets
    else:
        transactions = m.transactions() if engine == "pyfim_fpgrowth" else None
        started = time.perf_counter()
        if engine == "pyfim_fpgrowth":
            import fim

            from fashion_recs.fbt.mining import _finish, _group

            result = fim.fpgrowth(
                [*transactions, []], target="s", supp=-t, zmin=1, zmax=MAX_LEN, report="a"
            )
            itemsets = _finish(m, t, _group(result), engine, started)
        else:
            itemsets = MINERS["sparse"](m, t, MAX_LEN, big)
        rules = association_rules(itemsets, min_confidence=MIN_CONFIDENCE, min_lift=0.0)
        seconds = time.perf_counter() - started
    rules.to_parquet(out)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rules": len(rules),
                "peak_rss_mib": peak_rss_mib(),
                "threshold_baskets": t,
            }
        )
    )


def run_child(engine: str, data: Path, timeout: float | None) -> dict:
    out = data.with_name(f"{data.stem}_{engine}.parquet")
    cmd = [sys.executable, __file__, "--child", engine, "--data", str(data), "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"finished": False, "detail": f"did not finish within {timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return {"finished": False, "detail": f"failed: {last[0]}"}
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures.update(finished=True, rules_file=str(out))
    return figures


def case(n_baskets: int, n_items: int, engines: dict[str, float | None]) -> dict:
    import pandas as pd

    from fashion_recs.fbt.rules import compare_rules

    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"baskets_{n_baskets}_{n_items}.npz"
    if not data.exists():
        indptr, indices = generate(n_baskets, n_items)
        np.savez(data, indptr=indptr, indices=indices, n_items=n_items)
    results = {}
    for engine, timeout in engines.items():
        print(f"{n_baskets:,} x {n_items:,}: {engine} ...", flush=True)
        results[engine] = run_child(engine, data, timeout)
        print(f"  {results[engine]}", flush=True)
    reference = pd.read_parquet(results["sparse"]["rules_file"])
    for engine, figures in results.items():
        if figures["finished"] and engine != "sparse":
            problems = compare_rules(pd.read_parquet(figures["rules_file"]), reference)
            figures["rules_identical_to_sparse"] = not problems
            figures["differences"] = problems
    return {"n_baskets": n_baskets, "n_items": n_items, "engines": results}


QUALITY_SIZES = {"large": (60_000, 8_000), "small": (20_000, 3_000)}


def list_quality(k: int = 10) -> dict:
    """Completion hit rate of the gated lists vs popularity on both planted regimes."""
    import pandas as pd

    from fashion_recs.config import FbtListsConfig, MiningConfig
    from fashion_recs.fbt.baskets import to_matrix
    from fashion_recs.fbt.evaluate import completion_hit_rate
    from fashion_recs.fbt.gate import gated_lists
    from fashion_recs.fbt.mining import mine
    from fashion_recs.fbt.recommend import popularity_lists
    from fashion_recs.fbt.rules import association_rules
    from fashion_recs.synthetic_baskets import planted_baskets

    out = {}
    for regime, (n_baskets, n_items) in QUALITY_SIZES.items():
        baskets, catalogue = planted_baskets(regime, n_baskets, n_items, seed=42)
        matrix = to_matrix(baskets)
        held = np.random.default_rng(0).random(matrix.n_baskets) < 0.2
        train = matrix.take_baskets(np.flatnonzero(~held))
        test = matrix.take_baskets(np.flatnonzero(held))
        mining = MiningConfig()
        rules = association_rules(
            mine(
                train,
                min_support=mining.min_support,
                min_count=mining.min_count,
                max_len=mining.max_len,
            ),
            min_confidence=mining.min_confidence,
            min_lift=mining.min_lift,
        )
        config = FbtListsConfig(top_k=k)
        started = time.perf_counter()
        lists, decision = gated_lists(rules, catalogue, train, config, seed=42)
        seconds = time.perf_counter() - started
        counts = pd.Series(train.item_counts(), index=train.item_ids.astype(str))
        popular = popularity_lists(catalogue, counts, train.n_baskets, k)
        hit, n_queries = completion_hit_rate(lists, test, k)
        pop, _ = completion_hit_rate(popular, test, k)
        out[regime] = {
            "n_baskets": n_baskets,
            "n_items": n_items,
            "mean_basket_size": round(float(matrix.basket_sizes().mean()), 3),
            "n_rules": len(rules),
            "completion_hit_rate": round(hit, 4),
            "completion_hit_rate_popularity": round(pop, 4),
            "lists_vs_popularity": round(hit / pop, 4),
            "n_queries": n_queries,
            "gate": decision.as_dict(),
            "gated_lists_seconds": round(seconds, 2),
        }
        print(f"{regime}: {out[regime]}", flush=True)
    return out


def quality_summary(quality: dict) -> dict:
    return {
        key: {regime: figures[key] for regime, figures in quality.items()}
        for key in ("completion_hit_rate", "completion_hit_rate_popularity", "lists_vs_popularity")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--mlxtend-timeout-2m", type=float, default=240.0)
    parser.add_argument("--quick", action="store_true", help="list quality only")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.out)
        return
    if args.quick:
        report = json.loads(RESULTS.read_text())
        quality = list_quality()
        report["summary"].update(quality_summary(quality))
        report["list_quality"] = quality
        report["list_quality_measured_at"] = now()
        write_report(RESULTS, report)
        return

    small = case(
        200_000, 20_000, {"sparse": None, "pyfim_fpgrowth": None, "mlxtend_fpgrowth": None}
    )
    large = case(
        2_000_000,
        100_000,
        {"sparse": None, "pyfim_fpgrowth": None, "mlxtend_fpgrowth": args.mlxtend_timeout_2m},
    )
    quality = list_quality()
    e = small["engines"]
    import mlxtend
    import pandas as pd
    import scipy

    report = {
        "summary": {
            "speedup_vs_mlxtend": round(
                e["mlxtend_fpgrowth"]["seconds"] / e["sparse"]["seconds"], 1
            ),
            "speedup_vs_pyfim": round(e["pyfim_fpgrowth"]["seconds"] / e["sparse"]["seconds"], 2),
            "rules_identical": all(
                f.get("rules_identical_to_sparse", True)
                for c in (small, large)
                for f in c["engines"].values()
                if f["finished"]
            ),
            "seconds_2m_baskets": round(large["engines"]["sparse"]["seconds"], 2),
            "seconds_200k_baskets": round(e["sparse"]["seconds"], 3),
            "rules_200k": e["sparse"]["rules"],
            "peak_rss_mib_2m_baskets": round(large["engines"]["sparse"]["peak_rss_mib"], 1),
            **quality_summary(quality),
        },
        "cases": [small, large],
        "list_quality": quality,
        "list_quality_measured_at": now(),
        "parameters": {
            "min_support": MIN_SUPPORT,
            "min_confidence": MIN_CONFIDENCE,
            "max_len": MAX_LEN,
            "data": "Zipf(1.1) items, basket size 1 + Poisson(2.5), 200 planted pairs in 0.15% "
            "of baskets each, seed 42",
            "timed": "itemsets + rules from each engine's native input (built beforehand)",
        },
        "machine": machine(),
        "versions": {
            "mlxtend": mlxtend.__version__,
            "pyfim": "6.28",
            "scipy": scipy.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
        "measured_at": now(),
    }
    write_report(RESULTS, report)


if __name__ == "__main__":
    main()
