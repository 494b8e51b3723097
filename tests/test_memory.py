"""Each task's record carries its own peak memory, even when one process runs every task."""

from __future__ import annotations

import json
import sys
from datetime import date

import numpy as np
import pytest

from fashion_recs import pipeline
from fashion_recs.artifacts import RunPaths
from fashion_recs.memory import peak_rss_mib, reset_peak_rss

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self is Linux")


@LINUX
def test_a_reset_forgets_memory_already_freed_and_the_mark_rises_again() -> None:
    # Relative to what the process holds now (a test session holds hundreds of MiB).
    assert reset_peak_rss()
    held = peak_rss_mib()
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    assert peak_rss_mib() >= held + 390
    del block  # an array this large is handed back to the system at once
    assert reset_peak_rss()
    assert peak_rss_mib() < held + 100
    block = np.ones(300 * 2**20 // 8)
    assert peak_rss_mib() >= held + 290
    del block


@LINUX
def test_task_records_hold_the_peak_of_their_own_step(tmp_path, monkeypatch) -> None:
    def heavy(ctx: pipeline.RunContext) -> dict:
        block = np.ones(400 * 2**20 // 8)
        del block
        return {"counts": None}

    def light(ctx: pipeline.RunContext) -> dict:
        return {"counts": None}

    monkeypatch.setattr(pipeline, "heavy", heavy, raising=False)
    monkeypatch.setattr(pipeline, "light", light, raising=False)
    ctx = pipeline.RunContext(None, RunPaths(tmp_path, "demo", "r1"), date(2026, 11, 1), None)  # type: ignore[arg-type]
    pipeline.run_step(ctx, "heavy_task", "heavy")
    pipeline.run_step(ctx, "light_task", "light")
    records = {
        name: json.loads(ctx.paths.file("tasks", f"{name}.json").read_text())
        for name in ("heavy_task", "light_task")
    }
    assert records["heavy_task"]["peak_rss_mib"] >= 400
    # The light task ran after the heavy one in the same process: its peak is its own.
    assert records["light_task"]["peak_rss_mib"] < records["heavy_task"]["peak_rss_mib"] - 300
