"""Append-only JSONL files that long jobs write as they go and reread on a rerun: a line torn by a process that
died mid-write is cut off, so the rerun appends after the last complete row and never duplicates one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from lmlab.core.kernel.errors import LmlabError


def read_complete_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of `path`, each an object with a string `id`; a torn last line is removed from the
    file. A malformed complete line is one clear error naming the file and line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    rows = []
    for n, line in enumerate(data[:end].splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            raise LmlabError(f"{path}:{n}: not a JSON line (the file was edited by hand?).",
                             hint="restore it, or start a new run with another --output-dir") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise LmlabError(f"{path}:{n}: field 'id': missing.", hint="start a new run with another --output-dir")
        rows.append(row)
    return rows


def sync(*files: IO[str]) -> None:
    """Flush and fsync: what was appended survives a crash from here on."""
    for f in files:
        f.flush()
        os.fsync(f.fileno())
