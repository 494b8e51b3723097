"""A task's own peak memory, for its record in `tasks/<task_id>.json`.

When every task of a run shares one process (`dag.test()`, `fashion-recs run --in-process`),
the process's high-water mark only ever rises, so it cannot say which task needed the memory.
Linux lets a process reset its own mark (`/proc/self/clear_refs`, value 5); a task resets it when it
starts and reads it when it ends. Elsewhere the figure is the process's peak so far. The
reset also lowers what `getrusage` and a parent's `wait4` report as the process's peak, so a
whole run's peak is the largest of its tasks' records.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new high-water mark for this process; False where the platform cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last reset (or since it started)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
