"""Plots (matplotlib, headless) and Rich tables shared by every command."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported when a plot is drawn: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics: Path, keys: Sequence[str], out: Path, title: str) -> Path | None:
    """One panel per metric against the step; returns the PNG path, or None when there is nothing to plot."""
    return out if plot_runs({"": metrics}, keys, out, title) else None


def plot_runs(runs: Mapping[str, Path], keys: Sequence[str], out: Path, title: str) -> list[str]:
    """Several runs' metrics.jsonl on one figure: one panel per metric against the step, one line per run, named
    by its key in `runs` (a single unnamed run, key "", gets no legend). Returns the runs' labels as the legend
    shows them (empty, and no file written, when there is nothing to plot)."""
    plt = _pyplot()
    rows = {name: read_metrics(path) for name, path in runs.items()}
    keys = [k for k in keys if any(k in r for run in rows.values() for r in run)]
    if not keys:
        return []
    legend_room = 0.6 if any(runs) else 0.0
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys) + legend_room), sharex=True, squeeze=False,
                             layout="constrained")
    lines: dict[str, Any] = {}
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for colour, (name, run) in enumerate(rows.items()):
            points = [(r["step"], r[key]) for r in run if key in r]
            if points:
                (lines[name],) = ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{colour}",
                                         marker="." if len(points) < 50 else None, label=name)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    labels = [name for name in rows if name in lines]
    if any(labels):
        legend = fig.legend([lines[n] for n in labels], labels, loc="outside lower center", ncols=len(labels))
        labels = [text.get_text() for text in legend.get_texts()]
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return labels


def summary_table(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in values.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def plot_accuracy(by: dict[str, dict[str, dict[str, Any]]], out: Path, title: str) -> Path | None:
    """One horizontal bar panel per breakdown (category, language, ...), accuracy in percent with n."""
    plt = _pyplot()
    panels = [(key, values) for key, values in by.items() if values]
    if not panels:
        return None
    heights = [max(1.6, 0.32 * len(values) + 0.9) for _, values in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (key, values) in zip(axes[:, 0], panels, strict=True):
        names = list(values)
        accuracy = [100 * (values[n]["accuracy"] or 0.0) for n in names]
        ax.barh(names, accuracy, color="#4c72b0")
        for y, (name, acc) in enumerate(zip(names, accuracy, strict=True)):
            ax.text(acc + 1, y, f"{acc:.1f}% (n={values[name]['n']})", va="center", fontsize=7)
        ax.set_xlim(0, 115)
        ax.invert_yaxis()
        ax.set_title(key, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("accuracy (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_lines(series: Mapping[str, Mapping[float, float]], out: Path, title: str, *, xlabel: str, ylabel: str) -> Path:
    """One line per named series of (x, y) points, e.g. recall@k against k for each retriever."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def accuracy_table(title: str, summary: dict[str, Any]) -> Table:
    """Overall accuracy, then one section per breakdown."""
    table = Table(title=title, title_justify="left")
    for column, justify in (("breakdown", "left"), ("value", "left"), ("n", "right"), ("accuracy", "right")):
        table.add_column(column, justify=justify)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    table.add_row("overall", "", str(summary["n"]), pct(summary["accuracy"]), style="bold")
    for key, values in summary["by"].items():
        table.add_section()
        for name, block in values.items():
            table.add_row(key, name, str(block["n"]), pct(block["accuracy"]))
    return table
