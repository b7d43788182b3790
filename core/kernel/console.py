"""Where lmlab talks: logs and progress bars on stderr, machine-readable output on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)
_quiet = False
_json = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def set_json(json_output: bool) -> None:
    global _json
    _json = json_output


def json_stdout() -> bool:
    """Whether stdout is reserved for the --json summary (a command that prints results there puts them in it)."""
    return _json


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """A log line on stderr (suppressed by --quiet)."""
    if not _quiet:
        err.print(message)


def print_json(data: Any) -> None:
    """One JSON document on stdout: what --json promises to CI scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


class Progress:
    """`total` units of work, `completed` of them already done: on a terminal (without --quiet) a bar with the label,
    n/total, an info text and the ETA; otherwise a log line from `line` (fields: label, completed, total, info) each
    `every` units, or at each tenth of the total when `every` is None. A context manager, or call `close()`."""

    def __init__(self, label: str, total: int, *, completed: int = 0, every: int | None = None,
                 line: str = "{label}: {completed}/{total}", transient: bool = False) -> None:
        self.label, self.total, self.completed = label, total, completed
        self.every, self.line = every, line
        self.logged = self._interval(completed)
        self.bar: Any = None
        if err.is_terminal and not is_quiet():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err,
                           transient=transient)
            self.task = self.bar.add_task(label, total=total, completed=completed, info="")
            self.bar.start()

    def _interval(self, completed: int) -> int:
        return completed // self.every if self.every else 10 * completed // max(1, self.total)

    def update(self, completed: int, info: str = "") -> None:
        """`completed` units are done now; `info` is shown on the bar and in the log line."""
        self.completed = completed
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, info=escape(info))
            return
        interval = self._interval(completed)
        if interval > self.logged:
            self.logged = interval
            log(self.line.format(label=self.label, completed=completed, total=self.total, info=info))

    def advance(self, n: int = 1) -> None:
        """`n` more units are done."""
        self.update(self.completed + n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
