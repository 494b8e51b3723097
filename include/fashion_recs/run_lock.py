"""One run at a time in a run directory.

Two runs with the same run id (two `fashion-recs run` processes, two DAG runs of copies of the
DAG, two deployments on one data root) would write into one run directory and corrupt each
other's artifacts. Every step therefore claims the directory for its run's *owner* first:

- a process owner (`fashion-recs run`, a test, a step called by hand) is `host + pid`; its
  claim lives exactly as long as it holds a shared `flock` on its owner file, so a killed run
  frees the directory at once and a rerun can start straight away;
- an Airflow owner is the DAG and run id. Its tasks are separate processes with gaps between
  them, so its claim also lasts `lease_s` after its last task ended, until the run report (the
  last task) marks the run finished.

Tasks of one owner share the claim: parallel tasks, retries and reruns of a task of the same
run keep working. A step of another owner that finds a live claim fails at once with
`RunDirectoryBusy`, naming the holder (owner, host, pid, since when, last active). A claim
that is neither held nor within its lease is stale and is taken over.

Each owner has `<run_dir>/.owners/<hash>.lock` (the flock) and `<hash>.json` (who and when).
A claimant locks its own file (shared) before it tests the others (exclusive, non-blocking),
so of two runs starting together at least one sees the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fashion_recs.artifacts import read_json, write_json
from fashion_recs.errors import RunDirectoryBusy

OWNERS_DIR = ".owners"
# How long an Airflow run keeps its run directory between two of its tasks (queueing, a pool
# that is full, a retry's delay). Its run report ends the claim earlier.
AIRFLOW_LEASE_S = 1800.0


@dataclass(frozen=True)
class RunOwner:
    """Who runs in a run directory: tasks of one owner share it."""

    name: str
    lease_s: float = 0.0


def process_owner() -> RunOwner:
    """This process (its claim ends when it does)."""
    return RunOwner(f"process {socket.gethostname()} pid {os.getpid()}")


def airflow_owner(dag_id: str, run_id: str, lease_s: float = AIRFLOW_LEASE_S) -> RunOwner:
    """One Airflow DAG run: its tasks, their retries and reruns share one claim."""
    return RunOwner(f"airflow dag {dag_id} run {run_id}", lease_s)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(owner: RunOwner) -> str:
    return hashlib.sha256(owner.name.encode()).hexdigest()[:16]


def _open_locked(path: Path, mode: int) -> int:
    """An fd of `path` locked in `mode`, the file still being the one at `path` (a stale-claim
    cleaner may unlink it between our open and our lock)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _describe(info: dict[str, Any]) -> str:
    since = info.get("since", "?")
    last = info.get("last_active", "?")
    return (
        f"{info.get('owner', 'an unknown owner')} (host {info.get('host', '?')}, "
        f"pid {info.get('pid', '?')}, since {since}, last active {last})"
    )


def _info(path: Path) -> dict[str, Any]:
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _check_others(folder: Path, mine: str, run_dir: Path, run_id: str) -> None:
    """Fail if another owner's claim is live; remove the stale ones."""
    for lock in sorted(folder.glob("*.lock")):
        if lock.stem == mine:
            continue
        meta = lock.with_suffix(".json")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = _info(meta)
                why = "running a task there now"
            else:
                busy = _info(meta)
                lease_end = float(busy.get("active_until", 0.0))
                if busy and not busy.get("finished") and time.time() < lease_end:
                    why = f"between two of its tasks (its claim lapses at {busy.get('lease_end')})"
                else:
                    meta.unlink(missing_ok=True)
                    lock.unlink(missing_ok=True)
                    continue
            raise RunDirectoryBusy(
                f"run directory {run_dir} (run id {run_id!r}) is in use by {_describe(busy)}, "
                f"{why}. Two runs with one run id would overwrite each other's artifacts: "
                "wait for that run to finish or start this one under another run id. A claim "
                "ends when its process ends; an Airflow run's also lapses after its lease."
            )
        finally:
            os.close(fd)


def _write_info(meta: Path, owner: RunOwner, *, finished: bool = False) -> None:
    old = _info(meta)
    now = time.time()
    write_json(
        {
            "owner": owner.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": old.get("since") or _now(),
            "last_active": _now(),
            "active_until": now + owner.lease_s,
            "lease_end": datetime.fromtimestamp(now + owner.lease_s, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "finished": finished,
        },
        meta,
    )


@contextlib.contextmanager
def claim_run_dir(
    run_dir: Path, run_id: str, owner: RunOwner | None = None, *, finishes: bool = False
) -> Iterator[None]:
    """Hold `run_dir` for `owner` (default: this process) while the block runs.

    Raises `RunDirectoryBusy` at once when another owner's claim is live. `finishes` marks the
    owner's run finished on the way out (its run report), so its lease ends there.
    """
    owner = owner or process_owner()
    folder = Path(run_dir) / OWNERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    mine = _key(owner)
    fd = _open_locked(folder / f"{mine}.lock", fcntl.LOCK_SH)
    meta = folder / f"{mine}.json"
    try:
        _check_others(folder, mine, Path(run_dir), run_id)
        _write_info(meta, owner)
        try:
            yield
        finally:
            _write_info(meta, owner, finished=finishes)
    finally:
        os.close(fd)
