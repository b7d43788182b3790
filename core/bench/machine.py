"""The machine a benchmark runs on: CPU, cores, versions, its measured GEMM peak, how much of the CPU other
processes took meanwhile (contention spoils ratios on small machines), and this process's memory: its RSS and peak
RSS in MiB (`core.bench.tensor_memory` counts the peak bytes of live tensors on any device)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Above this share of the CPU taken by other processes, a benchmark warns that its ratios are not trustworthy.
BUSY_SHARE = 0.1

CpuReading = tuple[float, float, float]


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(threads: int, packages: Sequence[str] = ("torch",)) -> dict[str, Any]:
    """The "machine" entry of a report: CPU, cores, threads, Python, platform and the given packages' versions."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), **{name: version(name) for name in packages},
            "threads": threads, "python": platform.python_version(), "platform": platform.platform()}


def cpu_seconds() -> CpuReading | None:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of our finished children), Linux only."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def other_cpu_share(before: CpuReading | None, after: CpuReading | None, threads: int) -> float | None:
    """Share of the CPU that processes other than our children used between two `cpu_seconds()` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return round(max(0.0, other) / ((after[0] - before[0]) * threads), 3)


def gemm_peak_flops(m: int, k: int, n: int, dtype: Any, *, runs: int = 5, min_seconds: float = 0.02,
                    device: Any = "cpu") -> float:
    """FLOP/s of an [m, k] × [k, n] matmul in `dtype` on `device` (the CPU, or a GPU: each reading of the clock
    waits for its queued work): the fastest of `runs` timed runs, each repeating the matmul for about
    `min_seconds` (so a small shape is not lost in the timer's and scheduler's noise), after one untimed run.
    What a model's step can reach at most when its GEMMs have this shape: noise (another process, a cold cache)
    only ever slows a run down, so the fastest run is the best estimate of the peak."""
    import torch

    from lmlab.core.bench.worker import clock

    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    out = torch.empty(m, n, dtype=dtype, device=device)
    single = []
    for _ in range(4):  # the first call is untimed warm-up; the fastest of the others sizes the runs
        tick = clock(device)
        torch.mm(a, b, out=out)
        single.append(clock(device) - tick)
    repeats = max(1, min(10_000, math.ceil(min_seconds / max(min(single[1:]), 1e-9))))
    times = []
    for _ in range(runs):
        tick = clock(device)
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        times.append((clock(device) - tick) / repeats)
    return 2 * m * k * n / min(times)


def pool_gemm_peak(rows: list[dict[str, Any]]) -> float:
    """Give every row the best GEMM peak any of them measured, so that their shares of it are against one bound (a
    worker's reading varies with what else ran meanwhile; its own stays as gemm_peak_gflops_worker)."""
    peak = max(r["gemm_peak_gflops"] for r in rows)
    for r in rows:
        r["gemm_peak_gflops_worker"] = r["gemm_peak_gflops"]
        r["gemm_peak_gflops"] = peak
    return peak


def rss_mb() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak, which is the best we can read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started or since `reset_peak_rss()`: VmHWM on Linux, not getrusage's
    ru_maxrss, which `reset_peak_rss()` does not reset and which in a child never drops below the RSS its parent had
    when it forked (Linux carries it over exec), hiding a small worker's own peak; elsewhere ru_maxrss."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0, /proc/self/clear_refs; False where unsupported), so that
    a transient peak while loading does not hide what the measured region costs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
