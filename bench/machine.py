"""What every benchmark result records about where it ran, and how it is saved."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Save the result (committed with the code) and print its summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
