"""A request cache: answers keyed by (model identity, request kind, request), so an interrupted evaluation
resumes without redoing finished requests and a different model never reuses another's answers (SQLite: one
file, a transaction per chunk, nothing to install)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmlab.core.kernel.errors import LmlabError


def request_key(identity: str, kind: str, request: Any) -> str:
    payload = json.dumps({"model": identity, "kind": kind, "request": asdict(request)}, sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class RequestCache:
    """One SQLite table `answers(key, answer)`; `run` computes only the requests it has no answer for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self.db.commit()
        except sqlite3.Error as exc:
            raise LmlabError(f"{self.path}: cannot open the request cache ({exc}).",
                             hint="choose another --output-dir, or delete the damaged cache.sqlite") from exc
        self.hits = self.computed = 0

    def close(self) -> None:
        self.db.close()

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def run(self, identity: str, kind: str, requests: Sequence[Any], compute: Callable[[list[Any]], list[Any]],
            *, chunk: int = 32, progress: Callable[[int], None] | None = None) -> list[Any]:
        """Answers for `requests` in order. Missing ones are computed longest first, `chunk` at a time, and
        each chunk is committed before the next starts (an interruption loses at most one chunk)."""
        keys = [request_key(identity, kind, r) for r in requests]
        answers = {key: answer for key in dict.fromkeys(keys) if (answer := self.get(key)) is not None}
        found = sum(1 for k in keys if k in answers)
        self.hits += found
        if progress is not None:
            progress(found)
        todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in answers}
        order = sorted(todo, key=lambda k: -todo[k].size())
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            results = compute([todo[k] for k in part])
            with self.db:
                rows = [(k, json.dumps(a, ensure_ascii=False)) for k, a in zip(part, results, strict=True)]
                self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", rows)
            answers.update(zip(part, results, strict=True))
            self.computed += len(part)
            if progress is not None:
                progress(sum(1 for k in keys if k in part))
        return [answers[k] for k in keys]
