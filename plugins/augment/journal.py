"""The augmentation run's two files, written so that a run killed at any moment and rerun makes every item
exactly once:

- augmented.jsonl: the kept rows, the product;
- journal.jsonl: one line per finished item, its outcome (kept, filtered, duplicate, malformed, error).

A kept row is appended to augmented.jsonl before its journal line; both files are flushed and fsynced after
every chunk. On a rerun, a torn last line (the process died mid-write) is cut off, an item is done when the
journal or augmented.jsonl has it, and a kept row whose journal line was lost gets it back. Items that ended in
an error are done only once they succeed, so a rerun retries them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from lmlab.core.files.atomic import read_complete_lines, sync

FINAL = ("kept", "filtered", "duplicate", "malformed")


class Journal:
    """Both files of a run folder, opened for appending."""

    def __init__(self, folder: Path) -> None:
        self.augmented_path, self.journal_path = folder / "augmented.jsonl", folder / "journal.jsonl"
        self.kept: list[dict[str, Any]] = read_complete_lines(self.augmented_path)
        self.status: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        for row in read_complete_lines(self.journal_path):
            self._note(row)
        self.out: IO[str] = open(self.augmented_path, "a", encoding="utf-8")
        self.log: IO[str] = open(self.journal_path, "a", encoding="utf-8")
        for row in self.kept:
            if self.status.get(row["id"]) != "kept":
                self._write_journal({"id": row["id"], "status": "kept"})
        self.flush()
        self.resumed = len(self.status)

    def _note(self, row: dict[str, Any]) -> None:
        self.status[row["id"]] = row.get("status", "error")
        if row.get("status") == "error":
            self.errors[row["id"]] = str(row.get("error", ""))
        else:
            self.errors.pop(row["id"], None)

    def done(self, item_id: str) -> bool:
        return self.status.get(item_id) in FINAL

    def _write_journal(self, row: dict[str, Any]) -> None:
        self.log.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._note(row)

    def record(self, outcome: dict[str, Any], kept: dict[str, Any] | None) -> None:
        """One finished item: its kept row (if any) first, then its journal line."""
        if kept is not None:
            self.out.write(json.dumps(kept, ensure_ascii=False) + "\n")
            self.kept.append(kept)
        self._write_journal(outcome)

    def flush(self) -> None:
        sync(self.out, self.log)

    def close(self) -> None:
        self.flush()
        self.out.close()
        self.log.close()

    def counts(self) -> dict[str, int]:
        found = Counter(self.status.values())
        return {status: found.get(status, 0) for status in (*FINAL, "error")}
