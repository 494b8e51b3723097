"""Personalisation: blocked sparse user-CF vs the dense cosine_similarity approach, and the
two-tower model's training throughput, side by side in one run.

Data: users x items with Zipf(0.8) item popularity and a geometric number of items per user
(mean 25), decayed weights in [0.1, 1.1): the sparsity of a fashion app's month of events.

- `ours`: `fashion_recs.personal.user_cf.UserCF` (cosine, 200 neighbours, top 12, known items
  excluded): sparse products with the neighbour selection inside sparse_dot_topn's kernel.
- `dense`: what a user would write with scikit-learn: `cosine_similarity(X)` as a dense
  users x users matrix, `argpartition` for the neighbours, a dense score matrix per block,
  known items masked, `argpartition` for the top 12. It needs users^2 x 8 bytes, so it runs
  only where that fits (it would need 80 GB at 100k users).

Each engine runs in its own process (peak RSS is its own). The parent checks that both
engines give the same lists where both ran. Then the two-tower model trains on a planted-taste
dataset; examples/s, epochs and the time to its best epoch are recorded.

    python bench/personal.py            # ours at 20k and 100k users, dense at 10k and 20k
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

RESULTS = Path(__file__).resolve().parent / "results" / "personal.json"
WORK = Path("/tmp/fashion-recs-bench-personal")
N_ITEMS = 20_000
K = 12
NEIGHBOURS = 200


def generate(n_users: int, n_items: int = N_ITEMS, seed: int = 42):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    per_user = rng.geometric(1 / 25, n_users)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.choice(n_items, len(rows), p=p)
    values = (rng.random(len(rows)) + 0.1).astype(np.float32)
    X = sp.csr_matrix((values, (rows, cols)), shape=(n_users, n_items), dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    return X


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ours(X) -> np.ndarray:
    """Top-12 item codes and scores per user from the library's UserCF."""
    import pandas as pd

    from fashion_recs.personal.matrix import UserItemMatrix
    from fashion_recs.personal.user_cf import UserCF

    users = pd.Index(np.arange(X.shape[0]).astype(str))
    items = pd.Index(np.arange(X.shape[1]).astype(str))
    model = UserCF("cosine", NEIGHBOURS, weighting="raw").fit(UserItemMatrix(X, users, items))
    lists = model.recommend(users, K)
    return _as_arrays(lists["user_id"].astype(int), lists["product_id"].astype(int), X.shape[0])


def dense(X, block: int = 2048) -> np.ndarray:
    """The straightforward version: a dense users x users similarity from scikit-learn."""
    import scipy.sparse as sp
    from sklearn.metrics.pairwise import cosine_similarity
    from sklearn.preprocessing import normalize

    S = cosine_similarity(X, dense_output=True)  # users x users, float64
    np.fill_diagonal(S, -np.inf)
    votes = normalize(X)
    n = X.shape[0]
    users, items = [], []
    for lo in range(0, n, block):
        sims = S[lo : lo + block]
        nb = np.argpartition(-sims, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        w = np.take_along_axis(sims, nb, axis=1)
        w = np.where(w > 0, w, 0)
        rows = np.repeat(np.arange(len(nb)), NEIGHBOURS)
        weights = sp.csr_matrix((w.ravel(), (rows, nb.ravel())), shape=(len(nb), n))
        scores = (weights @ votes).toarray()
        scores[X[lo : lo + block].toarray() > 0] = -np.inf
        scores[scores <= 0] = -np.inf
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        for r in range(len(top)):
            row = top[r][np.isfinite(scores[r, top[r]])]
            row = row[np.lexsort((row, -scores[r, row]))]
            users += [lo + r] * len(row)
            items += row.tolist()
    return _as_arrays(np.asarray(users), np.asarray(items), n)


def _as_arrays(users, items, n: int) -> np.ndarray:
    """Lists as an (n, K) array of item codes, -1 where a list is short (users ascending)."""
    out = np.full((n, K), -1, dtype=np.int64)
    users, items = np.asarray(users), np.asarray(items)
    pos = np.arange(len(users)) - np.searchsorted(users, users)
    out[users, pos] = items
    return out


def child(engine: str, n_users: int, out: Path) -> None:
    X = generate(n_users)
    started = time.perf_counter()
    lists = (ours if engine == "ours" else dense)(X)
    seconds = time.perf_counter() - started
    np.save(out.with_suffix(".npy"), lists)
    out.write_text(
        json.dumps(
            {
                "engine": engine,
                "users": n_users,
                "items": N_ITEMS,
                "nnz": int(X.nnz),
                "seconds": round(seconds, 2),
                "users_per_s": round(n_users / seconds, 1),
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }
        )
    )


def run_child(engine: str, n_users: int) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{engine}_{n_users}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", engine, "--users", str(n_users)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"engine": engine, "users": n_users, "error": proc.stderr[-2000:]}
    result = json.loads(out.read_text())
    print(json.dumps(result), flush=True)
    return result


def agreement(n_users: int) -> float:
    """Share of list entries the two engines agree on (ties may order items differently)."""
    a = np.load(WORK / f"ours_{n_users}.npy")
    b = np.load(WORK / f"dense_{n_users}.npy")
    same = [len(set(x[x >= 0]) & set(y[y >= 0])) for x, y in zip(a, b, strict=True)]
    total = max(int((b >= 0).sum()), 1)
    return round(sum(same) / total, 4)


def two_tower(n_users: int = 20_000, n_items: int = 5_000, seed: int = 7) -> dict:
    """Train on planted tastes: 20 taste groups, each favouring its own 100 items."""
    import pandas as pd

    from fashion_recs.personal.two_tower import TwoTowerModel, TwoTowerParams

    rng = np.random.default_rng(seed)
    group = rng.integers(0, 20, n_users)
    per_user = rng.geometric(1 / 20, n_users)
    users = np.repeat(np.arange(n_users), per_user)
    own = rng.random(len(users)) < 0.6
    items = np.where(
        own,
        group[users] * 100 + rng.integers(0, 100, len(users)),
        rng.zipf(1.3, len(users)) % n_items,
    )
    days = rng.integers(0, 60, len(users))
    interactions = pd.DataFrame(
        {
            "user_id": users.astype(str),
            "product_id": items.astype(str),
            "event_ts": pd.Timestamp("2026-09-01", tz="UTC") + pd.to_timedelta(days, unit="D"),
            "weight": rng.choice([1.0, 2.0, 4.0, 5.0], len(users)),
        }
    )
    users_frame = pd.DataFrame(
        {
            "user_id": np.arange(n_users).astype(str),
            "age_group": (group % 7).astype(str),
            "region": (group % 6).astype(str),
        }
    )
    items_frame = pd.DataFrame(
        {
            "product_id": np.arange(n_items).astype(str),
            "department": (np.arange(n_items) // 100 % 20).astype(str),
            "color": (np.arange(n_items) % 9).astype(str),
            "target_audience": (np.arange(n_items) % 2).astype(str),
        }
    )
    params = TwoTowerParams(max_epochs=30, patience=3)
    started = time.perf_counter()
    model = TwoTowerModel.fit(interactions, users_frame, items_frame, params)
    seconds = time.perf_counter() - started
    h = model.history
    epochs = len(h.train_loss)
    per_epoch = seconds / max(epochs, 1)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": len(interactions),
        "examples_per_s": round(float(h.examples_per_s), 1),
        "epochs_run": epochs,
        "best_epoch": int(h.best_epoch),
        "best_val_recall_at_12": round(float(max(h.val_recall)), 4),
        "seconds_total": round(seconds, 2),
        "seconds_to_best_epoch": round(per_epoch * h.best_epoch, 2),
        "stopped_early": bool(h.stopped_early),
        "params": {k: getattr(params, k) for k in ("dim", "hidden", "loss", "batch_size")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--users", type=int)
    parser.add_argument("--ours", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dense", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--two-tower-users", type=int, default=20_000)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.users, WORK / f"{args.child}_{args.users}.json")
        return 0

    runs = [run_child("dense", n) for n in args.dense] + [run_child("ours", n) for n in args.ours]
    both = sorted(set(args.dense) & set(args.ours))
    agree = {str(n): agreement(n) for n in both}
    by = {(r["engine"], r["users"]): r for r in runs}
    largest = max(args.ours)
    top = by[("ours", largest)]
    speedups = {
        str(n): round(by[("dense", n)]["seconds"] / by[("ours", n)]["seconds"], 2)
        for n in both
        if "seconds" in by[("dense", n)] and "seconds" in by[("ours", n)]
    }
    tt = two_tower(args.two_tower_users)
    print(json.dumps(tt), flush=True)
    import sklearn
    import sparse_dot_topn
    import torch

    report = {
        "summary": {
            "user_cf_seconds_100k_users": by.get(("ours", 100_000), {}).get("seconds"),
            "user_cf_users_largest_run": largest,
            "peak_rss_mib": top["peak_rss_mib"],
            "speedup_vs_dense_by_users": speedups,
            "dense_peak_rss_mib_by_users": {
                str(n): by[("dense", n)].get("peak_rss_mib") for n in args.dense
            },
            "lists_agree_with_dense": agree,
            "two_tower_examples_per_s": tt["examples_per_s"],
            "two_tower_seconds_to_best_epoch": tt["seconds_to_best_epoch"],
        },
        "user_cf": runs,
        "two_tower": tt,
        "parameters": {
            "items": N_ITEMS,
            "k": K,
            "neighbours": NEIGHBOURS,
            "similarity": "cosine",
            "items_per_user": "geometric, mean 25",
            "item_popularity": "Zipf 0.8",
            "dense_skipped_above": "users^2 x 8 bytes must fit in memory (100k users: 80 GB)",
        },
        "machine": machine(),
        "versions": {
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "sparse_dot_topn": sparse_dot_topn.__version__,
            "torch": torch.__version__,
        },
        "date": now(),
    }
    write_report(RESULTS, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
