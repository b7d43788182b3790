"""Peak bytes of live tensors, on any device: what `torch.cuda.max_memory_allocated()` reports on a GPU.

A benchmark's RSS on the CPU also counts what the C allocator keeps after tensors are freed, so at toy sizes it
mostly measures allocator behaviour. `TensorPeak` counts tensor storages instead: every storage an operator
creates while the mode is active, until it is freed. Written here because torch has no CPU counterpart of
`max_memory_allocated`, and `torch.distributed._tools.MemTracker` registers gradient hooks on every parameter
of the modules it tracks, which fails on the frozen parts a training step also runs.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
