"""The report's charts, drawn with matplotlib and embedded as PNG data URIs.

Figures are built with matplotlib's object API (no pyplot state, no display needed) and saved
without the software/date metadata, so the same run gives byte-identical images and the
report is reproducible.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

STATUS_COLOURS = {"success": "#4c9a6a", "failed": "#c0392b", "not run": "#b0b0b0"}
BASELINE_COLOUR = "#9aa5b1"
MODEL_COLOUR = "#3b6ea8"
CHOSEN_COLOUR = "#e08e2b"


def data_uri(fig: Figure) -> str:
    """The figure as a `data:image/png;base64,...` URI (deterministic bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(
    fig: Figure, labels: pd.Series, values: pd.Series, colours: list[str], fmt: str, title: str
) -> Axes:
    """Labelled horizontal bars, first label at the top, each bar with its value."""
    ax = fig.add_subplot()
    y = np.arange(len(values))[::-1]
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_title(title)
    for yy, value in zip(y, values, strict=True):
        ax.annotate(
            format(value, fmt),
            (value, yy),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def task_durations(tasks: pd.DataFrame) -> str | None:
    """Horizontal bars of each task's run time, coloured by status."""
    ran = tasks.dropna(subset=["seconds"])
    if ran.empty:
        return None
    fig = Figure(figsize=(8, 0.28 * len(ran) + 1))
    colours = [STATUS_COLOURS.get(s, "#777777") for s in ran["status"]]
    ax = _bars(fig, ran["task_id"], ran["seconds"], colours, ".1f", "Task run times")
    ax.set_xlabel("seconds")
    return data_uri(fig)


def model_comparison(
    metrics: pd.DataFrame,
    metric: str,
    title: str,
    baselines: set[str],
    reference: tuple[str, float] | None = None,
    highlight: str | None = None,
) -> str | None:
    """One metric across models, baselines in grey, the chosen model highlighted, and an
    optional reference line (e.g. the quality gate's bar)."""
    rows = metrics[metrics["metric"] == metric].drop_duplicates("model", keep="last")
    if rows.empty:
        return None
    rows = rows.sort_values("value", ascending=False)
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.2))
    colours = [
        CHOSEN_COLOUR if m == highlight else BASELINE_COLOUR if m in baselines else MODEL_COLOUR
        for m in rows["model"]
    ]
    ax = _bars(fig, rows["model"], rows["value"], colours, ".3f", title)
    k = rows["k"].dropna()
    ax.set_xlabel(f"{metric}@{int(k.iloc[0])}" if len(k) else metric)
    if reference is not None:
        name, value = reference
        ax.axvline(value, color="#c0392b", linestyle="--", linewidth=1)
        ax.annotate(
            name,
            (value, len(rows) - 0.5),
            xytext=(3, 0),
            textcoords="offset points",
            color="#c0392b",
            fontsize=7,
        )
    return data_uri(fig)


def grouped_metrics(metrics: pd.DataFrame, names: list[str], title: str) -> str | None:
    """Several metrics side by side for each model (e.g. precision, recall, MAP, hit rate)."""
    rows = metrics[metrics["metric"].isin(names)]
    if rows.empty:
        return None
    table = rows.pivot_table(index="model", columns="metric", values="value", aggfunc="last")
    table = table[[n for n in names if n in table.columns]]
    fig = Figure(figsize=(max(5.0, 1.1 * len(table) + 2), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / len(table.columns)
    x = np.arange(len(table))
    for i, metric in enumerate(table.columns):
        ax.bar(x + i * width - 0.4 + width / 2, table[metric].fillna(0), width, label=metric)
    ax.set_xticks(x, table.index, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return data_uri(fig)
