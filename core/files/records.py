"""Load records (JSONL, JSON, CSV, Parquet, saved or Hub datasets), each tagged with where it came from, and
find the bundled example data (examples/ in the source tree, installed editable)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.kernel.errors import DataError, LmlabError

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SUPPORTED = ("supported: .jsonl / .ndjson (one JSON object per line), .json (a list of objects), .csv (with a "
             "header), .parquet, a folder of such files, a saved Hugging Face dataset folder, or a Hub id like "
             "owner/name")
HUB_HINT = "no network? download it elsewhere and pass the local path, e.g. a .jsonl or a saved dataset folder"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Record:
    """One row and where it came from. `line` is 1-based: the line number for JSONL and CSV (the CSV header is
    line 1), the item index for a JSON list, the row index for Parquet and Hugging Face datasets."""

    data: dict[str, Any]
    path: str
    line: int

    def get(self, field: str, types: type | tuple[type, ...] | None = None) -> Any:
        """The value of `field`; DataError if it is absent, None, or not one of `types` (a bool is no int)."""
        value = self.data.get(field)
        if value is None:
            raise DataError("missing", path=self.path, line=self.line, field=field, hint=_present(self.data))
        if types is not None:
            allowed = types if isinstance(types, tuple) else (types,)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join(t.__name__ for t in allowed)
                raise DataError(f"expected {names}, got {_type_name(value)}", path=self.path, line=self.line,
                                field=field, hint=f"make '{field}' a {names} in every row")
        return value


class SkipLog:
    """Counts rows a method skips on purpose, by reason, so that nothing is dropped silently."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._first: dict[str, Record] = {}

    def add(self, reason: str, record: Record | None = None) -> None:
        """Count one skipped row; the first record given per reason is named in the summary."""
        self._counts[reason] += 1
        if record is not None:
            self._first.setdefault(reason, record)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def summary(self) -> str:
        """E.g. "skipped 3 rows: 2 × tie (first at a.jsonl:4), 1 × empty response"; "" if none."""
        if not self._counts:
            return ""
        firsts = {reason: f" (first at {r.path}:{r.line})" for reason, r in self._first.items()}
        parts = [f"{count} × {reason}{firsts.get(reason, '')}" for reason, count in self._counts.most_common()]
        total = self.total
        return f"skipped {total} row{'' if total == 1 else 's'}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)


def load_records(source: str | os.PathLike, *, required: Sequence[str] = (), split: str = "train") -> list[Record]:
    """Every record in `source` (a file, a folder, a saved dataset or a Hub id); DataError on any problem."""
    if isinstance(required, str):
        required = (required,)
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        records = _load_dir(path, split)
    elif path.is_file():
        records = _load_file(path)
    elif _HUB_ID.fullmatch(name) and path.suffix.lower() not in FILE_FORMATS:
        records = _load_hub(name, split)
    else:
        raise DataError("no such file or directory", path=name, hint=SUPPORTED)
    for record in records:
        for field in required:
            if record.data.get(field) is None:
                raise DataError("missing required field", path=record.path, line=record.line, field=field,
                                hint=_present(record.data))
    return records


def _load_dir(path: Path, split: str) -> list[Record]:
    if any((path / marker).is_file() for marker in HF_MARKERS):
        return _load_saved(path, split)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_FORMATS)
    if not files:
        raise DataError("contains no supported data files", path=str(path), hint=SUPPORTED)
    return [record for file in files for record in _load_file(file)]


def _load_file(path: Path) -> list[Record]:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        kind = f"'{path.suffix}'" if path.suffix else "(no extension)"
        raise DataError(f"unsupported file type {kind}", path=str(path), hint=SUPPORTED)
    if fmt == "parquet":
        return _load_parquet(path)
    parse = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}[fmt]
    return parse(_read_text(path), str(path))


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot be read ({e.strerror})", path=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text ({e.reason})", path=str(path), line=raw.count(b"\n", 0, e.start) + 1,
                        hint="re-save the file as UTF-8") from None
    if not text.strip():
        raise _empty(str(path))
    return text


def _parse_jsonl(text: str, path: str) -> list[Record]:
    hint = "a .jsonl file holds one JSON object per line"
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line is not valid JSON ({e.msg}, column {e.colno})", path=path, line=number,
                            hint=hint) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {_type_name(value)}", path=path, line=number, hint=hint)
        records.append(Record(value, path, number))
    return records


def _parse_json(text: str, path: str) -> list[Record]:
    hint = 'a .json file holds a list of objects (or {"data": [...]}); for one object a line, use .jsonl'
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"is not valid JSON ({e.msg}, column {e.colno})", path=path, line=e.lineno, hint=hint) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("expected a list of objects or an object holding one list, got an object (keys: "
                            f"{_names(value) or 'none'})", path=path, hint=hint)
        value = lists[0]
    if not isinstance(value, list):
        raise DataError(f"expected a list of objects, got {_type_name(value)}", path=path, hint=hint)
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(f"expected each list item to be a JSON object, got {_type_name(item)} (item {index})",
                            path=path, line=index, hint=hint)
    return _numbered(value, path, "the JSON list has no items")


def _parse_csv(text: str, path: str) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    records, start = [], 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if header is None:
                duplicates = sorted({column for column in row if row.count(column) > 1})
                if duplicates:
                    raise DataError(f"duplicate column name '{duplicates[0]}'", path=path, line=line)
                header = row
            elif len(row) != len(header):
                raise DataError(f"expected {len(header)} columns (as in the header), got {len(row)}", path=path,
                                line=line, hint="quote values that contain commas")
            else:
                records.append(Record(dict(zip(header, row, strict=True)), path, line))
    except csv.Error as e:
        raise DataError(f"is not valid CSV ({e})", path=path, line=start) from None
    if not records:
        raise _empty(path, "the CSV file has a header but no data rows")
    return records


def _load_parquet(path: Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise _empty(str(path))
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"is not a readable Parquet file ({_short(e)})", path=str(path)) from None
    return _numbered(rows, str(path), "the Parquet file has no rows")


def _load_saved(path: Path, split: str) -> list[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        if _saved_without_shards(path):  # datasets saves 0 rows as 0 shards, then cannot load them
            raise _empty(str(path), "the dataset has no rows") from None
        raise DataError(f"could not load the saved dataset ({_short(e)})", path=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"has no split '{split}'", path=str(path),
                            hint=f"available splits: {_names(loaded) or 'none'}")
        loaded = loaded[split]
    return _numbered(loaded.to_list(), str(path), "the dataset has no rows")


def _saved_without_shards(path: Path) -> bool:
    try:
        return json.loads((path / "state.json").read_text(encoding="utf-8")).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def _load_hub(name: str, split: str) -> list[Record]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(f"could not be loaded from the Hugging Face Hub ({_short(e)})", path=name,
                        hint=HUB_HINT) from None
    return _numbered(loaded.to_list(), name, "the dataset has no rows")


def _numbered(rows: list[dict[str, Any]], path: str, empty: str) -> list[Record]:
    """Rows as records numbered from 1; DataError with the hint `empty` when there are none."""
    if not rows:
        raise _empty(path, empty)
    return [Record(row, path, index) for index, row in enumerate(rows, start=1)]


def _empty(path: str, hint: str = "add at least one record") -> DataError:
    return DataError("is empty", path=path, hint=hint)


def _present(data: dict[str, Any]) -> str:
    names = _names(k for k, v in data.items() if v is not None)
    return f"fields present in this row: {names}" if names else "this row has no fields"


def _names(items: Iterable[Any], limit: int = 12) -> str:
    names = [str(item) for item in items]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def examples_dir() -> Path:
    found = Path(__file__).resolve().parents[2] / "examples"
    if not found.is_dir():
        raise LmlabError("The bundled examples folder was not found next to the lmlab sources.",
                         hint="install lmlab from a clone with `pip install -e .`, or pass --data explicitly")
    return found


def example(relative: str) -> Path:
    return examples_dir() / relative
