"""Optional dependencies, imported when first needed: a missing one is one clear error naming the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from lmlab.core.kernel.errors import LmlabError


def require(module: str, needed_by: str, extra: str, *, package: str | None = None,
            hint: str | None = None) -> ModuleType:
    """`import module`, or LmlabError("<needed_by> needs <package>, which is not installed.") with the extra's
    pip command as the hint (or `hint`); `package` is the distribution's name when it is not the module's."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: that is not a missing extra
        raise LmlabError(f"{needed_by} needs {package or module}, which is not installed.",
                         hint=hint or f"pip install 'lmlab[{extra}]'") from exc
