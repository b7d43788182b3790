"""Where the bundled example data lives (examples/ in the source tree, installed editable)."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.kernel.errors import LmlabError


def examples_dir() -> Path:
    found = Path(__file__).resolve().parents[2] / "examples"
    if not found.is_dir():
        raise LmlabError("The bundled examples folder was not found next to the lmlab sources.",
                         hint="install lmlab from a clone with `pip install -e .`, or pass --data explicitly")
    return found


def example(relative: str) -> Path:
    return examples_dir() / relative
