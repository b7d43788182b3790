"""Run directories: runs/<command>-<timestamp>/ with config.json, metrics.jsonl, checkpoints/, summary.json."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.kernel.errors import LmlabError

VERSIONED = ("lmlab", "torch", "transformers", "accelerate", "peft", "diffusers", "datasets")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def new_run_path(command: str, output_dir: Path | None) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    return Path("runs") / f"{command}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """Options with every path made absolute, so a run is the same from any working directory: Path values,
    and strings that look like a path (a separator, a suffix or a leading ~) and name an existing file or
    folder. Model aliases, Hub ids that are not local folders and plain words are kept as typed."""
    def absolute(value: Any) -> Any:
        if isinstance(value, Path) or (isinstance(value, str) and _looks_like_path(value)
                                       and Path(value).expanduser().exists()):
            return os.path.abspath(Path(value).expanduser())
        return value

    return {key: absolute(value) for key, value in options.items()}


def _looks_like_path(text: str) -> bool:
    path = Path(text)
    return "/" in text or os.sep in text or text.startswith("~") or bool(path.suffix and path.stem)


def run_config(path: Path) -> dict[str, Any] | None:
    """The run folder's config.json, or None when it has none (or it cannot be read as a JSON object)."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def made_by(path: Path) -> str | None:
    """The lmlab command that made a run folder, as typed after `lmlab` (e.g. "pretrain", "eval click");
    runs written before it was recorded give the run name in "command"."""
    config = run_config(path) or {}
    found = config.get("cli_command", config.get("command"))
    return found if isinstance(found, str) else None


def check_run_folder(path: Path, command: str, *, overwrite: bool = False, reusable: bool = False) -> None:
    """Refuse a run folder that already holds something: a folder belongs to the run that made it. An empty or
    missing folder is fine; `reusable` accepts a folder made by the same `command` (eval reuses its answers);
    `overwrite` accepts an lmlab run folder (one with config.json), which `clear_run_folder` then empties."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise LmlabError(f"{path}: exists and is not a folder.", hint="choose another --output-dir")
    contents = sorted(p.name for p in path.iterdir())
    if not contents:
        return
    owner = made_by(path)
    if reusable and owner == command:
        return
    shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
    if overwrite and run_config(path) is not None:
        return
    if overwrite:
        raise LmlabError(f"{path} is not an lmlab run folder (no config.json; it holds {shown}), so --overwrite "
                         "will not delete it.", hint="choose another --output-dir")
    what = f"a run of `lmlab {owner}`" if owner else "files of something else"
    hint = (f"choose another --output-dir; only a folder of `lmlab {command}` is reused" if reusable
            else f"`--resume {path}` to continue it, or `--overwrite` to replace it")
    raise LmlabError(f"{path} already holds {what} ({shown}).", hint=hint)


def clear_run_folder(path: Path) -> None:
    """Delete what an earlier run left in `path` (checked by `check_run_folder(..., overwrite=True)`)."""
    if Path(path).exists():
        shutil.rmtree(path)


class RunDir:
    """One run's folder. Only the main process writes; every process knows the path."""

    def __init__(self, path: Path, *, main: bool = True, checkpoints: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        if main:
            try:
                (self.path / "checkpoints" if checkpoints else self.path).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LmlabError(f"{self.path}: cannot create the run directory ({exc.strerror}).",
                                 hint="choose another --output-dir") from exc

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, command: str, options: dict[str, Any], *, cli_command: str | None = None) -> None:
        """config.json: the run name (`command`), the lmlab command that made the run (`cli_command`, default
        `command`; `--resume` checks it), every option with its paths made absolute, versions and commit."""
        if self.main:
            write_json_atomic(self.path / "config.json", {
                "command": command, "cli_command": cli_command or command, "options": absolute_paths(options),
                "versions": versions(), "git_commit": git_commit(),
                "created": dt.datetime.now().isoformat(timespec="seconds")})

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            write_json_atomic(self.path / "summary.json", summary)
