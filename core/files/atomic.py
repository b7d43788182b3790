"""Atomic, durable writes, the one way lmlab writes a whole file or folder: the content goes to a temporary sibling,
is fsynced, gets the umask's modes and is renamed over the target, and the folder is fsynced, so a reader (or a rerun
after a crash or a power loss) sees the old content or all of the new. A write that fills the disk (or the quota)
raises `DiskFull` naming the target and the space left. Append-only JSONL files that long jobs write as they go are
reread with `read_complete_lines`, which cuts off a line torn by a process that died mid-write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from lmlab.core.kernel.errors import DiskFull, LmlabError


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path next to `target` for the body to write (torch.save, safetensors, ...); renamed over `target`
    when the body returns, removed when it raises."""
    target = Path(target)
    tmp: Path | None = None
    try:
        with _disk_full_as_error(target):
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
            yield tmp
            tmp.chmod(0o666 & ~current_umask())  # mkstemp makes the file 0600
            fsync_path(tmp)
            rename_into_place(tmp, target)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file open for writing that replaces `target` when the body returns (see `atomic_path`)."""
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Replace `path` with `data` as indented JSON (ASCII; values JSON cannot hold are written as str)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with one JSON object per line (UTF-8, not escaped to ASCII)."""
    with atomic_file(path) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder through `write(tmp)` into a temp sibling and rename it into place. When `target` appeared
    meanwhile (another process finished first), theirs is as good as ours and ours is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _disk_full_as_error(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _disk_full_as_error(target):
            write(tmp)
            honour_umask(tmp)
            for path in sorted(tmp.rglob("*"), reverse=True):  # files before the folders that hold them
                if not path.is_symlink():
                    fsync_path(path)
            fsync_path(tmp)
            if not target.exists():
                rename_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def rename_into_place(staged: Path, target: Path) -> None:
    """Rename a fsynced file or folder over `target`, then fsync its folder so the rename survives a power loss."""
    os.replace(staged, target)
    fsync_path(target.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's content, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes the umask asks for (0755 / 0644 under umask 022): mkdtemp
    makes folders 0700 and safetensors writes its files 0600, which would leave outputs private."""
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk or quota, a DiskFull already raised, or torch's stream writer failing mid-file
    (what torch.save raises when the disk fills: "[enforce fail at inline_container.cc…] unexpected pos" / "file
    write failed")."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return "No space left" in text or "inline_container.cc" in text or "StorageFull" in text


def disk_full(target: Path, detail: str, *, what: str = "", hint: str | None = None) -> DiskFull:
    """The error for a write of `target` (a `what`, e.g. "checkpoint ") that filled the disk, naming the space left."""
    free = shutil.disk_usage(target.parent).free
    return DiskFull(f"Disk full while writing {what}{target}: {_size(free)} free on {target.parent} ({detail}).",
                    hint=hint or f"free some space, then run the command again: {target} was left as it was")


@contextmanager
def _disk_full_as_error(target: Path) -> Iterator[None]:
    """Turn a full disk in the body into `disk_full(target, ...)`; other failures pass through."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(target, f"{type(exc).__name__}: {exc}") from exc
        raise


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def read_complete_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of `path`, each an object with a string `id`; a torn last line is removed from the
    file. A malformed complete line is one clear error naming the file and line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
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
