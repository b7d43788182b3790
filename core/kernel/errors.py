"""One error family for everything a user can fix and the exit codes the CLI maps them to; `require` (an optional
dependency imported when first needed, a missing one being one clear error naming the pip extra); `StopRequest`."""

from __future__ import annotations

import contextlib
import importlib
import signal
from collections.abc import Iterator
from types import ModuleType
from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LmlabError(Exception):
    """A failure the user can act on: printed as one red line plus a hint, exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class DataError(LmlabError):
    """Bad input data: names the file, the line or row, and the field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}", hint)
        self.path, self.line, self.field = path, line, field


class ModelError(LmlabError):
    """A model spec that cannot be resolved or loaded."""


class TrainingDiverged(LmlabError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is kept."""


class Interrupted(LmlabError):
    """SIGINT/SIGTERM arrived; state was saved. Exit code 130."""

    exit_code = EXIT_INTERRUPTED


class CheckpointWriteFailed(LmlabError):
    """A checkpoint could not be written; its temp folder was removed, the previous one is intact. Exit code 1."""

    exit_code = EXIT_INTERNAL


class DiskFull(CheckpointWriteFailed):
    """The disk filled up while a checkpoint was written; names the path and the space left. Exit code 1."""


class StopRequest:
    """SIGINT/SIGTERM as a flag that long work checks at a safe point (after a training step, after a chunk of
    augmentation), so it saves what it has and exits 130 instead of dying mid-write. `with stop.installed():`
    catches both; `stop.signal` is the first one received, or None."""

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


def require(module: str, needed_by: str, extra: str, *, package: str | None = None,
            hint: str | None = None) -> ModuleType:
    """`import module`, or LmlabError("<needed_by> needs <package>, which is not installed.") with the extra's
    pip command as the hint (or `hint`); `package` is the distribution's name when it is not the module's."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: that is not a missing extra
        raise LmlabError(f"{needed_by} needs {package or module}, which is not installed.",
                         hint=hint or f"pip install 'lmlab[{extra}]'") from exc
