"""Atomic writes: a write that fails midway leaves the old content and no temporary, JSONL round-trips through the
append-only reader, a full disk is one DiskFull naming the file, and written files and folders follow the umask."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import pytest

from lmlab.core.files.atomic import (
    atomic_dir,
    atomic_file,
    atomic_path,
    read_complete_lines,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from lmlab.core.kernel.errors import EXIT_INTERNAL, DiskFull


class Boom(Exception):
    pass


def leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_a_write_that_raises_midway_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_text_atomic(target, "old\n")

    def rows():
        yield {"id": "1"}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl_atomic(target, rows())
    with pytest.raises(Boom), atomic_file(target) as f:
        f.write("half of the new content")
        f.flush()
        raise Boom
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path, "out.jsonl") == []


def test_a_write_that_completes_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old content, longer than the new\n")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    write_json_atomic(target, {"path": tmp_path, "n": 1})
    assert json.loads(target.read_text()) == {"path": str(tmp_path), "n": 1}
    assert leftovers(tmp_path, "out.txt") == []


def test_atomic_path_hands_a_sibling_and_removes_it_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"part")
        raise Boom
    assert not target.exists() and leftovers(tmp_path, "") == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and leftovers(tmp_path, "weights.bin") == []


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "Zürich → 東京", "n": [1, 2]}, {"id": "b", "nested": {"x": None}}]
    target = tmp_path / "rows.jsonl"
    write_jsonl_atomic(target, iter(rows))
    assert read_complete_lines(target) == rows
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "Zürich → 東京" in lines[0]  # one object a line, not escaped to ASCII


class FillsTheDisk:
    """A file whose writes fail as they do on a full disk."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> FillsTheDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.jsonl"
    write_text_atomic(target, "old\n")
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: FillsTheDisk(real_open(self, *args, **kwargs)))
    with pytest.raises(DiskFull) as full:
        write_jsonl_atomic(target, [{"id": str(n), "text": "x" * 100} for n in range(1000)])
    monkeypatch.undo()
    message = str(full.value)
    assert full.value.exit_code == EXIT_INTERNAL
    assert f"Disk full while writing {target}" in message and " free on " in message
    assert "No space left" in message and full.value.hint
    assert isinstance(full.value.__cause__, OSError)
    assert target.read_text() == "old\n" and leftovers(tmp_path, "results.jsonl") == []


def test_a_full_disk_under_a_library_writer_is_disk_full_too(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    with pytest.raises(DiskFull, match="model.safetensors"), atomic_path(target):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert leftovers(tmp_path, "") == []


def test_a_full_disk_while_a_folder_is_written(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        (folder / "part").write_bytes(b"x")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(DiskFull, match="Disk full while writing"):
        atomic_dir(tmp_path / "model", write)
    assert leftovers(tmp_path, "") == []


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "a")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"b")
            tmp.chmod(0o600)  # what safetensors does
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o640
