"""This process's memory as a benchmark worker reads it: RSS now and the peak RSS (resettable on Linux), in MiB;
and the peak bytes of live tensors on any device (`TensorPeak`), what `torch.cuda.max_memory_allocated()` reports
on a GPU.

A benchmark's RSS on the CPU also counts what the C allocator keeps after tensors are freed, so at toy sizes it
mostly measures allocator behaviour; `TensorPeak` counts tensor storages instead. Written here because torch has
no CPU counterpart of `max_memory_allocated`, and `torch.distributed._tools.MemTracker` registers gradient hooks
on every parameter of the modules it tracks, which fails on the frozen parts a training step also runs."""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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


def _storages(values: Any) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tree_leaves(values) if isinstance(t, torch.Tensor)]


class TensorPeak(TorchDispatchMode):
    """Inside `with TensorPeak() as tracker:`, `tracker.peak` is the most bytes that storages created inside the
    block held at once, and `tracker.current` what they hold now. Views and in-place results share an input's
    storage and are not counted again; tensors that existed before the block are not counted at all."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        for storage in _storages(out):
            key = storage.data_ptr()
            if key == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = storage.nbytes()
            self.current += self._live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)
        return out
