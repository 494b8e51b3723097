"""What runs exist on disk and where their reports are: the index the Airflow UI plugin serves.

Run directories are `<data_root>/runs/<retailer>/<run_key>/`; a run that published has a
`run_summary.json`, every run with checks has `data_docs/index.html` once rendered, and every
run whose last task ran has its `report.html`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fashion_recs.contract import REPORT_FILE, RUN_SUMMARY_FILE


@dataclass(frozen=True)
class RunEntry:
    retailer: str
    run_key: str
    path: Path
    published: bool
    has_data_docs: bool
    has_report: bool
    modified: float

    @property
    def data_docs(self) -> Path:
        return self.path / "data_docs" / "index.html"

    def summary(self) -> dict:
        file = self.path / RUN_SUMMARY_FILE
        return json.loads(file.read_text()) if file.is_file() else {}


def list_runs(data_root: Path) -> list[RunEntry]:
    """Every run directory under `data_root`, newest first."""
    entries = []
    for run_dir in sorted((Path(data_root) / "runs").glob("*/*")):
        if not run_dir.is_dir():
            continue
        entries.append(
            RunEntry(
                retailer=run_dir.parent.name,
                run_key=run_dir.name,
                path=run_dir,
                published=(run_dir / RUN_SUMMARY_FILE).is_file(),
                has_data_docs=(run_dir / "data_docs" / "index.html").is_file(),
                has_report=(run_dir / REPORT_FILE).is_file(),
                modified=run_dir.stat().st_mtime,
            )
        )
    return sorted(entries, key=lambda e: (e.modified, e.run_key), reverse=True)


def resolve_inside(base: Path, relative: str, kind: str = "file") -> Path | None:
    """`base / relative` if it stays inside `base` and exists (as a file, or a directory with
    kind="dir"), else None: request paths never reach outside the data root, and a name no
    file can have (a NUL, a component too long) is not found rather than an error."""
    if "\x00" in relative:
        return None
    try:
        base = base.resolve()
        target = (base / relative).resolve()
        if base not in target.parents:
            return None
        exists = target.is_dir() if kind == "dir" else target.is_file()
    except (OSError, ValueError):
        return None
    return target if exists else None
