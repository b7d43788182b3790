"""SIGINT/SIGTERM as a flag that long work checks at a safe point (after a training step, after a chunk of
augmentation), so it saves what it has and exits 130 instead of dying mid-write."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class StopRequest:
    """`with stop.installed():` catches SIGINT and SIGTERM; `stop.signal` is the first one received, or None."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
