"""Learning-rate schedules as multipliers of the peak rate, by optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from lmlab.core.kernel.errors import LmlabError

SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")


def check_schedule(name: str) -> None:
    """Fail early, before any model is loaded, on an unknown --schedule."""
    if name not in SCHEDULES:
        raise LmlabError(f"Unknown --schedule '{name}'.", hint=f"choose one of {', '.join(SCHEDULES)}")


def lr_lambda(name: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps, then the named decay (inverse_sqrt is the ORPO authors' choice)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "inverse_sqrt":
            return math.sqrt(max(warmup, 1)) / math.sqrt(max(step, max(warmup, 1)))
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}")
    return factor
