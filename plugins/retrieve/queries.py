"""Queries for `retrieve search`: from the command line, from KILT/JSONL rows (`input`, optional `id`), or from a
plain text file with one query per line."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.files.records import FILE_FORMATS, HF_MARKERS, example, load_records
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError, LmlabError


def read_queries(inline: list[str], path: str | None) -> list[tuple[str, str]]:
    """(id, text) pairs; inline queries are numbered q1, q2, ...; neither given: the bundled held-out queries."""
    if inline and path:
        raise LmlabError("Give queries with --query or with --data, not both.", hint="use one of them")
    if inline:
        return [(f"q{n}", q) for n, q in enumerate(inline, 1)]
    if path is None:
        path = str(example("retrieve/dev.jsonl"))
        log(f"no --query or --data: searching the bundled {path}")
    source = Path(path)
    if source.is_file() and source.suffix.lower() not in FILE_FORMATS:
        lines = source.read_text(encoding="utf-8").splitlines()
        found = [(f"q{n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        if not found:
            raise DataError("holds no query", path=path, hint="write one query per line")
        return found
    if source.is_dir() and not any((source / m).exists() for m in HF_MARKERS):
        raise DataError("is a folder, not a query file", path=path, hint="pass a .jsonl/.txt file")
    out = []
    for record in load_records(path, required=("input",)):
        text = record.get("input", str).strip()
        if not text:
            raise DataError("is empty", path=record.path, line=record.line, field="input",
                            hint="give every query a non-empty 'input'")
        out.append((str(record.data.get("id", f"q{record.line}")), text))
    return out
