"""Small host values (row indices, per-sequence settings) to the device without waiting for it.

A plain `torch.tensor(values, device="cuda")` copies from pageable host memory, and such a copy blocks the host
until the device has finished all the work queued before it: a sync per call, per decode step. Staged through
pinned memory the copy is asynchronous (PyTorch keeps the pinned buffer alive until the copy has run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def to_device(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor of `dtype` on `device`, copied there without a host sync."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
