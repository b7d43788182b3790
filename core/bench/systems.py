"""What every `lmlab bench <name>` shares (docs/benchmarks.md): its systems and the loop
that runs them.

A benchmark declares its systems by name (`System`: the package an anchor needs, a precondition such as native
bf16). `run_systems` skips each chosen system that cannot run here (`{"skipped": reason}` and one yellow log
line: an anchor that is not installed is reported as skipped, not faked) and runs every other one in its own
worker subprocess. Every system runs on the bench's `--device` (`device_settings`: the settings name it and the
source of its peak memory; core.bench.worker keeps each worker on it). The rest lives beside this module:
bench.machine (CPU, versions, contention, GEMM peak), bench.memory (RSS), bench.worker (the subprocess, and how
a worker times and reads memory on its device), core.bench.replay (timing the real training loop) and
core.bench.report (the report's shape, ratios, targets and table).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import util
from typing import TYPE_CHECKING, Any

from lmlab.core.bench.worker import clock, run_measured
from lmlab.core.kernel.errors import LmlabError

if TYPE_CHECKING:
    import torch


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


def device_settings(spec: str) -> dict[str, str]:
    """What a report's settings say about `--device spec`: the device in words (`devices.describe`) and the
    source of every peak memory figure. A GPU that is not here is refused with a hint (exit 2)."""
    from lmlab.core.commands.devices import describe, peak_memory_mb, resolve_device

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
    from rich.markup import escape

    from lmlab.core.kernel.console import log

    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        reason = systems[name].skip_reason()
        if reason is not None:
            results[name] = {"skipped": reason}
            log(f"[yellow]bench {benchmark}: {name} skipped: {escape(reason)}[/yellow]")
            continue
        log(f"bench {benchmark}: running {name} ({detail})…")
        results[name] = run_measured(worker, name, settings, threads=threads,
                                     retry_hint=f"rerun with --systems {name} and LMLAB_DEBUG=1 for the worker's "
                                                "trace")
    return results


def median_seconds(fn: Callable[[], Any], repeats: int = 3,
                   device: torch.device | None = None) -> tuple[float, Any]:
    """Median wall-clock seconds of `repeats` calls of `fn` after one warm-up call, and the last call's result;
    with `device`, each reading of the clock waits for the device's queued work first."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = clock(device) if device is not None else time.perf_counter()
        out = fn()
        times.append((clock(device) if device is not None else time.perf_counter()) - start)
    return statistics.median(times), out
