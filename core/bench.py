"""What every `lmlab bench <name>` needs (DESIGN.md, "Performance: how we measure").

- the machine: CPU model, cores, torch threads, versions;
- memory: RSS now, peak RSS (optionally reset first, Linux), in MiB;
- one system per subprocess, so its peak memory is its own: `run_worker` starts a fresh interpreter that
  calls the plugin's `"module:function"` with (system, settings) and hands its JSON result back;
- how much of the CPU other processes took while a worker ran (contention spoils ratios on small machines);
- the report shape `{"benchmark", "machine", "settings", "results", "ratios"}`, printed as one JSON object
  (`--json`) or as a Rich table with the ratios and their targets.

Core never imports a plugin: the worker's entry point is a string the plugin passes in.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError

#: Environment of every worker: quiet, offline, the parent's thread count (OMP_NUM_THREADS added per run).
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error"}
#: Above this share of the CPU taken by other processes, the report warns that the ratios are not trustworthy.
BUSY_SHARE = 0.1

Targets = Mapping[str, tuple[str, float]]


# ---------------------------------------------------------------------------------------------------------
# The machine.


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(threads: int, packages: Sequence[str] = ("torch",)) -> dict[str, Any]:
    """The "machine" entry of a report: CPU, cores, threads, Python, platform and the given packages' versions."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), **{name: version(name) for name in packages},
            "threads": threads, "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------------------
# CPU contention.


def cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of our finished children), Linux only."""
    import resource

    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def other_cpu_share(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None,
                    threads: int) -> float | None:
    """Share of the CPU that processes other than the worker used while it ran (contention spoils ratios)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return round(max(0.0, other) / ((after[0] - before[0]) * threads), 3)


# ---------------------------------------------------------------------------------------------------------
# Memory (inside a worker).


def rss_mb() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak, which is the best we can read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started or since `reset_peak_rss()`: VmHWM on Linux.

    Not getrusage's ru_maxrss there: `reset_peak_rss()` does not reset it, and a child's ru_maxrss never drops
    below the RSS its parent had when it forked (Linux carries it over exec), which hides a small worker's own
    peak. Elsewhere ru_maxrss is all there is."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0, /proc/self/clear_refs); False where unsupported.

    After a reset, `peak_rss_mb()` is the peak since this point, so a transient peak while loading does not
    hide what the measured region costs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def tensors_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """A fingerprint of named tensors (weights, batches), so a report can say two systems started from the same
    model and saw the same data."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# One system per subprocess.


def run_worker(entry: str, system: str, settings: dict[str, Any], *, threads: int,
               env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """Run `entry` ("package.module:function", called as function(system, settings) -> JSON-able dict) in a
    fresh interpreter with `threads` OpenMP threads and return its result.

    A LmlabError raised in the worker comes back as the same error; a crash becomes a LmlabError quoting the
    last lines of the worker's output."""
    code = "from lmlab.core.bench import worker_main; worker_main()"
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **WORKER_ENV, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        out, log_path = Path(tmp) / "result.json", Path(tmp) / "worker.log"
        with log_path.open("w") as log_file:
            proc = subprocess.run([sys.executable, "-c", code, entry, system, json.dumps(settings), str(out)],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=full_env, check=False)
        result = json.loads(out.read_text()) if out.exists() else None
        if result and "error" in result:
            raise LmlabError(result["error"], hint=result.get("hint"))
        if proc.returncode != 0 or result is None:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise LmlabError(f"The {system} benchmark process failed (exit code {proc.returncode}): {tail}",
                             hint=retry_hint or "rerun with LMLAB_DEBUG=1 for the worker's trace")
    return result


def run_measured(entry: str, system: str, settings: dict[str, Any], *, threads: int,
                 env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """`run_worker`, plus the CPU share other processes took meanwhile (`other_processes_cpu_share`), with a
    warning on stderr when it is above 10 %."""
    from lmlab.core.console import log

    before = cpu_seconds()
    result = run_worker(entry, system, settings, threads=threads, env=env, retry_hint=retry_hint)
    other = other_cpu_share(before, cpu_seconds(), threads)
    result["other_processes_cpu_share"] = other
    if other is not None and other > BUSY_SHARE:
        log(f"[yellow]warning: other processes used {other:.0%} of the CPU during the {system} run; they slow "
            "the systems unevenly, so rerun on a quiet machine before trusting the ratios[/yellow]")
    return result


def worker_main() -> None:
    """Entry point of a worker process: argv = ["module:function", system, settings JSON, result path]."""
    entry, system, settings, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    module, _, name = entry.partition(":")
    function: Callable[[str, dict[str, Any]], dict[str, Any]] = getattr(importlib.import_module(module), name)
    try:
        result = function(system, settings)
    except LmlabError as exc:
        out.write_text(json.dumps({"error": exc.message, "hint": exc.hint}))
        sys.exit(2)
    out.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------
# The report.


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
    """DESIGN.md's JSON shape; ratios that could not be computed (a skipped system) are left out."""
    return {"benchmark": benchmark, "machine": machine_info, "settings": settings, "results": results,
            "ratios": {key: value for key, value in ratios.items() if value is not None}}


def target_met(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def print_ratios(console: Any, ratios: Mapping[str, float], targets: Targets) -> None:
    """One line per ratio, with its target and whether it was met."""
    for key, value in ratios.items():
        target = targets.get(key)
        verdict = ""
        if target:
            ok = target_met(value, target)
            verdict = f"  (target {target[0]} {target[1]}: {'[green]met[/green]' if ok else '[red]missed[/red]'})"
        console.print(f"{key}: [bold]{value:.3f}[/bold]{verdict}")


def emit(report: dict[str, Any], json_output: bool, print_table: Callable[[dict[str, Any]], None]) -> None:
    """`--json`: the report as one JSON object on stdout; otherwise the benchmark's own Rich table."""
    if json_output:
        from lmlab.core.console import print_json

        print_json(report)
    else:
        print_table(report)


def parse_systems(text: str, known: Sequence[str]) -> list[str]:
    """`--systems a,b` → ['a', 'b'] in order, each one of `known`."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise LmlabError(f"Unknown --systems value(s): {', '.join(unknown) or '(none given)'}.",
                         hint=f"choose from {', '.join(known)}, comma-separated")
    return list(dict.fromkeys(names))


class _Finished(Exception):
    """Raised after the last timed step, so the loop stops before its final save."""


class _Replay:
    """Wraps a TrainTask: replays a fixed batch order, then records peak memory and ends the run."""

    def __init__(self, task: Any, order: list[list[int]], peak: Callable[[], float]) -> None:
        self.task, self.order, self.peak = task, order, peak
        self.peak_rss_mb = 0.0

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return [*self.order, [-1] * global_batch]

    def collate(self, indices: list[int]) -> Any:
        if indices[0] < 0:
            self.peak_rss_mb = self.peak()
            raise _Finished
        return self.task.collate(indices)

    def __getattr__(self, name: str) -> Any:  # counts, loss, after_step: the wrapped task's
        return getattr(self.task, name)


def replay_training(model: Any, task: Any, order: list[list[int]], cfg: Any,
                    peak: Callable[[], float] = peak_rss_mb, precision: str = "auto"
                    ) -> tuple[list[dict[str, Any]], float]:
    """Run the real shared training loop over exactly `order` (one batch per step) in a throwaway run
    directory; returns the per-step metrics and the peak memory (MB) read after the last step."""
    from lmlab.core.runs import RunDir
    from lmlab.core.training import make_accelerator, train

    replay = _Replay(task, order, peak)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-run-") as tmp:
        run = RunDir(Path(tmp))
        try:
            train(model, replay, cfg, run, make_accelerator(precision))
        except _Finished:
            pass
        records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    return records, replay.peak_rss_mb
