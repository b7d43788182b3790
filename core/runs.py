"""Run directories: runs/<command>-<timestamp>/ with config.json, metrics.jsonl, checkpoints/, summary.json."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError

VERSIONED = ("lmlab", "torch", "transformers", "accelerate", "peft", "diffusers", "datasets")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{stamp}"


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

    def write_config(self, command: str, options: dict[str, Any]) -> None:
        if self.main:
            write_json_atomic(self.path / "config.json", {
                "command": command, "options": options, "versions": versions(), "git_commit": git_commit(),
                "created": dt.datetime.now().isoformat(timespec="seconds")})

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            write_json_atomic(self.path / "summary.json", summary)
