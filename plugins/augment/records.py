"""The instances RADA works with: seeds, external-store rows and generated rows share one shape,
(id, input, output, context), read from any format `lmlab.core.files.records` loads and checked field by field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.core.files.records import Record, load_records
from lmlab.core.kernel.errors import DataError

ALIASES = {"input": ("input", "question"), "output": ("output", "answer"), "context": ("context", "passage")}
FIELDS_HINT = "each row needs 'input' (or 'question') and 'output' (or 'answer'), and a 'context' for QA"


@dataclass(frozen=True)
class Instance:
    """One (input, output[, context]) example; `source` names the file or pooled dataset it came from."""

    id: str
    input: str
    output: str
    context: str | None = None
    source: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _text(record: Record, field: str, required: bool) -> str | None:
    """The first alias of `field` present in the row, as non-empty text."""
    for name in ALIASES[field]:
        if record.data.get(name) is not None:
            value = record.get(name, str)
            if not value.strip():
                raise DataError("is empty", path=record.path, line=record.line, field=name, hint=FIELDS_HINT)
            return value
    if required:
        raise DataError("missing", path=record.path, line=record.line, field=ALIASES[field][0], hint=FIELDS_HINT)
    return None


def instance(record: Record, *, need_context: bool) -> Instance:
    """The Instance in one row; DataError naming file, line and field for anything missing or mistyped."""
    raw_id = record.data.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise DataError(f"expected a string or an integer, got {type(raw_id).__name__}", path=record.path,
                        line=record.line, field="id", hint="give each row a unique id, or none")
    key = str(raw_id) if raw_id is not None else f"{Path(record.path).stem}:{record.line}"
    source = record.data.get("source")
    return Instance(id=key, input=_text(record, "input", True), output=_text(record, "output", True),
                    context=_text(record, "context", need_context),
                    source=str(source) if source is not None else Path(record.path).stem)


def load_instances(paths: str | Sequence[str], *, need_context: bool = False) -> list[Instance]:
    """Every instance in `paths` (files, folders, saved datasets); ids must be unique across them."""
    paths = [paths] if isinstance(paths, str) else paths
    found: list[Instance] = []
    where: dict[str, str] = {}
    for path in paths:
        for record in load_records(path):
            item = instance(record, need_context=need_context)
            if item.id in where:
                raise DataError(f"duplicate id '{item.id}' (first at {where[item.id]})", path=record.path,
                                line=record.line, field="id", hint="ids must be unique across the files given")
            where[item.id] = f"{record.path}:{record.line}"
            found.append(item)
    if not found:
        raise DataError("has no rows", path=", ".join(paths), hint="add at least one instance")
    return found


def embed_text(item: Instance) -> str:
    """What is embedded for retrieval, for store rows and seeds alike: the input, then its context."""
    return item.input if not item.context else f"{item.input}\n{item.context}"


def from_row(row: dict[str, Any]) -> Instance:
    """An Instance from a vector store's metadata row (written by `Instance.as_row`)."""
    return Instance(id=str(row["id"]), input=row["input"], output=row["output"], context=row.get("context"),
                    source=row.get("source"))
