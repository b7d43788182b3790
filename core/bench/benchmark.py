"""A benchmark declared once and run: `Benchmark` names its systems, worker, settings, ratios and table columns;
`bench_command` makes the `lmlab bench NAME` command from it, which runs each chosen system in its own worker
subprocess (or reports it as `{"skipped": reason}`: an anchor that is not installed is skipped, not faked) and prints
the report, `{"benchmark", "machine", "settings", "results", "ratios"}`, as JSON or as a table. A plugin's bench
file holds only its options, settings and runners (docs/benchmarks.md says what each benchmark measures)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import util
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmlab.core.bench.machine import cpu_count, machine, pool_gemm_peak
from lmlab.core.bench.worker import run_measured
from lmlab.core.commands import options as o
from lmlab.core.commands.builder import options_command
from lmlab.core.commands.devices import describe, has_native_bf16, peak_memory_mb, resolve_device
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import LmlabError

Settings = dict[str, Any]
Results = dict[str, dict[str, Any]]
#: ratio name → (">=" or "<=", bound)
Targets = Mapping[str, tuple[str, float]]
Row = Callable[[dict[str, Any]], Sequence[str]]


@dataclass
class BenchOptions:
    """The options of every `lmlab bench NAME`; a benchmark's options subclass this and add their own."""

    systems: str | None = o.option(None, "Comma-separated systems to run (default: all; the list is in the "
                                   "command's help).", panel=o.RUN_AND_OUTPUT)
    seed: int = o.option(42, "Seed of the model init, the data and their order.", panel=o.RUN_AND_OUTPUT)
    device: str = o.option("auto", o.DEVICE_HELP, panel=o.RUN_AND_OUTPUT, envvar="LMLAB_DEVICE")


@dataclass(frozen=True)
class System:
    """One system of a benchmark: `requires` is the importable package it needs (an anchor such as trl), with
    `install` saying how to get it; `precondition` returns why this machine cannot run it, or None."""

    requires: str | None = None
    install: str = ""
    precondition: Callable[[], str | None] | None = None

    def skip_reason(self) -> str | None:
        if self.requires is not None and util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed ({self.install})"
        return self.precondition() if self.precondition is not None else None


def ran(result: Mapping[str, Any] | None) -> bool:
    """Whether a system's result holds figures (it exists and was not skipped)."""
    return bool(result) and "skipped" not in result


def ratio(ours: float | None, anchor: float | None, digits: int = 3) -> float | None:
    """ours / anchor, rounded; None when either is missing or the anchor is not positive."""
    if ours is None or anchor is None or anchor <= 0:
        return None
    return round(ours / anchor, digits)


def lookup(result: Mapping[str, Any] | None, key: str) -> Any:
    """result[key], a dotted key reaching into nested figures ("decode_heavy.tokens_per_s"); None if absent."""
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class Ratio:
    """`name` = results[ours][key] / results[anchor][anchor_key or key], `digits` rounded; `target`: (">=" or
    "<=", bound) the report judges it against. Left out of the report when a system did not run."""

    name: str
    ours: str
    anchor: str
    key: str
    anchor_key: str | None = None
    target: tuple[str, float] | None = None
    digits: int = 3

    def value(self, results: Results) -> float | None:
        ours, anchor = results.get(self.ours), results.get(self.anchor)
        if not ran(ours) or not ran(anchor):
            return None
        return ratio(lookup(ours, self.key), lookup(anchor, self.anchor_key or self.key), self.digits)


@dataclass(frozen=True)
class Figure:
    """A figure the report lists with the ratios that is not a quotient (e.g. errors summed over systems):
    `compute(results)`, judged against `target` like a ratio."""

    name: str
    compute: Callable[[Results], float | None]
    target: tuple[str, float] | None = None

    def value(self, results: Results) -> float | None:
        return self.compute(results)


@dataclass(frozen=True)
class Column:
    """A table column: the header, the result's (dotted) key and its format ("{:.3f}"), "–" where it is absent."""

    header: str
    key: str
    format: str = "{:.3f}"

    def cell(self, result: Mapping[str, Any]) -> str:
        value = lookup(result, self.key)
        return "–" if value is None else self.format.format(value)


@dataclass(frozen=True)
class Cell(Column):
    """A column whose cell is `text(result)`, several figures in one ("12.5% of 300"); "–" where `key` is absent."""

    text: Callable[[Mapping[str, Any]], str] = str

    def cell(self, result: Mapping[str, Any]) -> str:
        return "–" if lookup(result, self.key) is None else self.text(result)


@dataclass
class Benchmark:
    """One `lmlab bench NAME`. `settings(opts)`: what the report's settings say about the run (device and threads
    are added); `ratios` / `columns`: data, or a function of the settings where they depend on the run (e.g. one per
    context length); `prepare(opts, settings, scratch)`: parent-side work before the workers (e.g. a shared corpus in
    `scratch`), returning settings only the workers see; `finish(settings, results)`: parent-side checks between
    systems once they ran; `detail(settings)`: what the log line says about the run (threads and device are added);
    `lines(report)`: the lines printed under the table; `not_judged(report)`: ratio → why this run does not judge its
    target; `available(opts)`: the systems with preconditions that depend on the options (e.g. native bf16 on
    `--device`); `same_as`: (reference system, checks, differences) for `same_inputs`; `hoisted`: the facts `hoist`
    moves from the results to the settings; `table_rows(report)`: the table's rows when they are not one per system
    (e.g. one per system and load)."""

    name: str
    doc: str
    options: type[BenchOptions]
    systems: Mapping[str, System]
    worker: str
    settings: Callable[[Any], Settings]
    title: Callable[[Settings], str]
    columns: Sequence[Column] | Callable[[Settings], Sequence[Column]]
    ratios: Sequence[Ratio | Figure] | Callable[[Settings], Sequence[Ratio | Figure]] = ()
    detail: Callable[[Settings], str] = lambda s: ""
    versions: tuple[str, ...] = ("torch",)
    prepare: Callable[[Any, Settings, Path], Settings] | None = None
    finish: Callable[[Settings, Results], None] | None = None
    lines: Callable[[dict[str, Any]], list[str]] = field(default=lambda report: [])
    not_judged: Callable[[dict[str, Any]], dict[str, str]] = field(default=lambda report: {})
    available: Callable[[Any], Mapping[str, System]] | None = None
    same_as: tuple[str, Mapping[str, str], Mapping[str, str]] | None = None
    hoisted: Sequence[str] = ()
    table_rows: Callable[[dict[str, Any]], Results] | None = None

    def ratio_list(self, settings: Settings) -> Sequence[Ratio | Figure]:
        return self.ratios(settings) if callable(self.ratios) else self.ratios

    def targets(self, settings: Settings) -> Targets:
        return {r.name: r.target for r in self.ratio_list(settings) if r.target is not None}

    def run(self, opts: BenchOptions) -> dict[str, Any]:
        """Run the chosen systems on the options' device and return the report."""
        chosen = parse_systems(opts.systems or ",".join(self.systems), list(self.systems))
        where = device_settings(opts.device)
        threads = cpu_count()
        settings = {**self.settings(opts), **where, "threads": threads}
        systems = self.available(opts) if self.available is not None else self.systems
        with tempfile.TemporaryDirectory(prefix=f"lmlab-bench-{self.name}-") as scratch:
            private = self.prepare(opts, settings, Path(scratch)) if self.prepare is not None else {}
            detail = ", ".join(filter(None, [self.detail(settings), f"{threads} threads", where["device"]]))
            results = run_systems(self.name, systems, chosen, self.worker, {**settings, **private}, threads=threads,
                                  detail=detail)
        hoist(settings, results, self.hoisted)
        if self.same_as is not None:
            same_inputs(results, *self.same_as)
        if self.finish is not None:
            self.finish(settings, results)
        ratios = ratio_values(self.ratio_list(settings), results)
        return make_report(self.name, machine(threads, self.versions), settings, results, ratios)

    def show(self, report: dict[str, Any]) -> None:
        """The report as a table: one row per system, the ratios against their targets, then `lines`."""
        settings = report["settings"]
        columns = self.columns(settings) if callable(self.columns) else self.columns
        shown = {**report, "results": self.table_rows(report)} if self.table_rows is not None else report
        print_results(shown, self.title(settings), [c.header for c in columns],
                      lambda result: [c.cell(result) for c in columns], self.targets(settings),
                      lines=self.lines(report), not_judged=self.not_judged(report))


def bench_command(benchmark: Benchmark) -> Callable[..., None]:
    """The Typer command of a benchmark (`bench.command(NAME)(bench_command(BENCHMARK))`)."""
    doc = f"{benchmark.doc}\n\nSystems: {', '.join(benchmark.systems)}."
    return options_command(benchmark.options, benchmark.run, doc=doc, show=benchmark.show)


def device_settings(spec: str) -> dict[str, str]:
    """What a report's settings say about `--device spec`: the device in words (`devices.describe`) and the
    source of every peak memory figure. A GPU that is not here is refused with a hint (exit 2)."""
    device = resolve_device(spec)
    if device.type not in ("cpu", "cuda"):
        raise LmlabError(f"--device {spec}: a benchmark runs on the CPU or a CUDA GPU.", hint="use cpu, cuda or cuda:N")
    return {"device": describe(device), "memory_source": peak_memory_mb(device)[1]}


def parse_systems(text: str, known: Sequence[str]) -> list[str]:
    """`--systems a,b` → ['a', 'b'] in order, each one of `known`."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise LmlabError(f"Unknown --systems value(s): {', '.join(unknown) or '(none given)'}.",
                         hint=f"choose from {', '.join(known)}, comma-separated")
    return list(dict.fromkeys(names))


def run_systems(benchmark: str, systems: Mapping[str, System], chosen: Sequence[str], worker: str,
                settings: dict[str, Any], *, threads: int, detail: str) -> dict[str, dict[str, Any]]:
    """For each chosen system in order: skip it (with the reason) or run `worker` ("module:function") on it in
    a fresh subprocess with `threads` threads (`detail`: what the log line says about the run)."""
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        reason = systems[name].skip_reason()
        if reason is not None:
            results[name] = {"skipped": reason}
            log(f"[yellow]bench {benchmark}: {name} skipped: {escape(reason)}[/yellow]")
            continue
        log(f"bench {benchmark}: running {name} ({detail})…")
        hint = f"rerun with --systems {name} and LMLAB_DEBUG=1 for the worker's trace"
        results[name] = run_measured(worker, name, settings, threads=threads, retry_hint=hint)
    return results


def make_report(benchmark: str, machine_info: dict[str, Any], settings: dict[str, Any],
                results: dict[str, dict[str, Any]], ratios: Mapping[str, float | None]) -> dict[str, Any]:
    """The report's JSON shape; ratios that could not be computed (a skipped system) are left out."""
    return {"benchmark": benchmark, "machine": machine_info, "settings": settings, "results": results,
            "ratios": {key: value for key, value in ratios.items() if value is not None}}


def print_results(report: dict[str, Any], title: str, columns: Sequence[str], row: Row, targets: Targets, *,
                  lines: Sequence[str] = (), not_judged: Mapping[str, str] | None = None) -> None:
    """The report as a Rich table on stdout: one row per system (`row(result)` gives the cells after the
    system's name; a skipped system shows "skipped: reason"), each ratio with its target and whether it was met
    (or why this run does not judge it: `not_judged`, e.g. the target is judged at another size), then `lines`."""
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
    for key, value in report["ratios"].items():
        target = targets.get(key)
        verdict = ""
        if target and not_judged and key in not_judged:
            verdict = f"  (target {target[0]} {target[1]}: [yellow]not judged here: {not_judged[key]}[/yellow])"
        elif target:
            met = value >= target[1] if target[0] == ">=" else value <= target[1]
            verdict = f"  (target {target[0]} {target[1]}: {'[green]met[/green]' if met else '[red]missed[/red]'})"
        console.print(f"{key}: [bold]{value:.3f}[/bold]{verdict}")
    for line in lines:
        console.print(line)


def same_inputs(results: Results, reference: str, checks: Mapping[str, str],
                differences: Mapping[str, str] | None = None) -> None:
    """For every other system that ran beside `reference`: result[label] = whether result[key] equals the
    reference's, for each key → label of `checks` (e.g. {"tokens_sha256": "same_tokens_as_lmlab"}), and
    result[label] = |result[key] − reference's| for each key → label of `differences` (e.g. a first loss)."""
    ref = results.get(reference)
    if not ran(ref):
        return
    for name, result in results.items():
        if name != reference and ran(result):
            for key, label in checks.items():
                result[label] = result.get(key) == ref.get(key)
            for key, label in (differences or {}).items():
                result[label] = abs(result[key] - ref[key])


def hoist(settings: Settings, results: Results, keys: Sequence[str]) -> None:
    """Move facts every worker reports alike from the results to the settings: the value if all agree, else a list."""
    for key in keys:
        values = [r.pop(key) for r in results.values() if ran(r) and key in r]
        if values:
            settings[key] = values[0] if all(v == values[0] for v in values) else values


def flatten_results(results: Results) -> dict[str, Any]:
    """For a `finish`: each worker's `rows` become rows of `results` of their own, in place, where the worker stood;
    returns the workers' extra facts (`{system}_{key}`)."""
    rows: Results = {}
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
    results.clear()
    results.update(rows)
    return extra


def no_native_bf16(spec: str) -> str | None:
    """Why `--device spec` cannot run bf16 autocast natively (`devices.has_native_bf16`: a CPU with AVX512-BF16 /
    AMX, a GPU from Ampere on; elsewhere bf16 is emulated, slower than fp32), or None: a bf16 system's precondition."""
    device = resolve_device(spec)
    if has_native_bf16(device):
        return None
    return "this CPU has no native bfloat16 (AVX512-BF16 / AMX)" if device.type == "cpu" else \
        f"{spec} has no native bfloat16"


def bf16_systems(systems: Mapping[str, System], names: Sequence[str], spec: str) -> dict[str, System]:
    """`systems` with those in `names` skipped where `--device spec` has no native bf16 (for an `available`)."""
    return {name: replace(system, precondition=lambda: no_native_bf16(spec)) if name in names else system
            for name, system in systems.items()}


def share_gemm_peak(results: Results, group: Callable[[str], Any], key: str,
                    share: Callable[[dict[str, Any], float], float]) -> None:
    """Pool the GEMM peak of the systems that ran, group by group (`group(name)`: e.g. the precision; None leaves a
    system out), to the best any of them measured (`machine.pool_gemm_peak`: each worker's own reading varies with
    what else ran), and set result[key] = share(result, peak GFLOP/s) against that one bound (e.g. MFU)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for name, result in results.items():
        if ran(result) and group(name) is not None:
            groups.setdefault(group(name), []).append(result)
    for rows in groups.values():
        peak = pool_gemm_peak(rows)
        for result in rows:
            result[key] = share(result, peak)


def same_for_all(results: Results, key: str, label: str) -> None:
    """Whether every system that ran reported the same (dotted) `key` (a hash of its prompts or batches): `label`
    is set beside that key in each of them ("decode_heavy.prompts_sha256" → result["decode_heavy"][label])."""
    measured = [result for result in results.values() if ran(result)]
    same = len({lookup(result, key) for result in measured}) == 1
    parent = key.rpartition(".")[0]
    for result in measured:
        (lookup(result, parent) if parent else result)[label] = same


def ratio_values(ratios: Sequence[Ratio | Figure], results: Results) -> dict[str, float]:
    """The ratios that `results` allow (a skipped system's are left out, as in the report), by name."""
    return {r.name: value for r in ratios if (value := r.value(results)) is not None}
