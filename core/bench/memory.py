"""This process's memory as a benchmark worker reads it: RSS now and the peak RSS (resettable on Linux), in MiB."""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
