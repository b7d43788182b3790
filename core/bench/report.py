"""A benchmark's report: the shape `{"benchmark", "machine", "settings", "results", "ratios"}`, printed as
one JSON object (`--json`) or as a Rich table of the systems, then the ratios with their targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: ratio name → (">=" or "<=", bound)
Targets = Mapping[str, tuple[str, float]]
Row = Callable[[dict[str, Any]], Sequence[str]]


def ran(result: Mapping[str, Any] | None) -> bool:
    """Whether a system's result holds figures (it exists and was not skipped)."""
    return bool(result) and "skipped" not in result


def ratio(ours: float | None, anchor: float | None, digits: int = 3) -> float | None:
    """ours / anchor, rounded; None when either is missing or the anchor is not positive."""
    if ours is None or anchor is None or anchor <= 0:
        return None
    return round(ours / anchor, digits)


def make_report(benchmark: str, machine_info: dict[str, Any], settings: dict[str, Any],
                results: dict[str, dict[str, Any]], ratios: Mapping[str, float | None]) -> dict[str, Any]:
    """The report's JSON shape; ratios that could not be computed (a skipped system) are left out."""
    return {"benchmark": benchmark, "machine": machine_info, "settings": settings, "results": results,
            "ratios": {key: value for key, value in ratios.items() if value is not None}}


def target_met(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def print_ratios(console: Any, ratios: Mapping[str, float], targets: Targets,
                 not_judged: Mapping[str, str] | None = None) -> None:
    """One line per ratio, with its target and whether it was met; a ratio in `not_judged` names its target and
    why this run does not judge it (e.g. the target is judged at another size) instead of met/missed."""
    for key, value in ratios.items():
        target = targets.get(key)
        verdict = ""
        if target and not_judged and key in not_judged:
            verdict = f"  (target {target[0]} {target[1]}: [yellow]not judged here: {not_judged[key]}[/yellow])"
        elif target:
            ok = target_met(value, target)
            verdict = f"  (target {target[0]} {target[1]}: {'[green]met[/green]' if ok else '[red]missed[/red]'})"
        console.print(f"{key}: [bold]{value:.3f}[/bold]{verdict}")


def print_results(report: dict[str, Any], title: str, columns: Sequence[str], row: Row, targets: Targets, *,
                  lines: Sequence[str] = (), not_judged: Mapping[str, str] | None = None) -> None:
    """The report as a Rich table on stdout: one row per system (`row(result)` gives the cells after the
    system's name; a skipped system shows "skipped: reason"), then the ratios and their targets, then `lines`."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("system", justify="left")
    for column in columns:
        table.add_column(column, justify="right")
    for name, result in report["results"].items():
        cells = [f"[yellow]skipped: {escape(result['skipped'])}[/yellow]", *[""] * (len(columns) - 1)] \
            if not ran(result) else list(row(result))
        table.add_row(name, *cells)
    console = Console()
    console.print(table)
    print_ratios(console, report["ratios"], targets, not_judged)
    for line in lines:
        console.print(line)


def flatten_rows(results: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One row per measured system (a worker's `rows` become rows of their own) and the workers' extra facts."""
    rows: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for name, result in results.items():
        if not ran(result) or "rows" not in result:
            rows[name] = result
            continue
        share = result.get("other_processes_cpu_share")
        for row, figures in result["rows"].items():
            rows[row] = figures if not ran(figures) else {**figures, "other_processes_cpu_share": share}
        extra.update({f"{name}_{key}": value for key, value in result.items()
                      if key not in ("rows", "other_processes_cpu_share")})
    return rows, extra
