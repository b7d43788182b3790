"""Where lmlab talks: logs and progress on stderr, machine-readable output on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

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
