"""Small builders shared by tests: configs pointing at temp dirs and CSV writers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fashion_recs.artifacts import RunPaths
from fashion_recs.config import RetailerConfig, load_config


def make_config(tmp_path: Path, **overrides: Any) -> RetailerConfig:
    """The project's default config with data_root (and base_dir) inside `tmp_path`."""
    raw = {"data_root": str(tmp_path / "data"), **overrides}
    return load_config(None, raw)


def run_paths(config: RetailerConfig, run_id: str = "test_run") -> RunPaths:
    return RunPaths(config.data_root_path, config.retailer, run_id)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
