"""The `lmlab` console script and `python -m lmlab.cli` (what torchrun launches), Ctrl-C handled before anything heavy
is imported: an interrupt during an import exits 130 at once (there is nothing to save yet, and a KeyboardInterrupt
inside torch's or transformers' import machinery can surface as a RecursionError or a raw traceback, or be
swallowed); anywhere else it is an ordinary KeyboardInterrupt, so a running command can save its work first."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130  # lmlab.core.kernel.errors.EXIT_INTERRUPTED, not imported here so that nothing runs first
IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    if not _importing(frame):
        raise KeyboardInterrupt
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, RuntimeError, ValueError):  # closed, or interrupted mid-write
            stream.flush()
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    """Install the Ctrl-C handler, then run the `lmlab` app."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # started with Ctrl-C ignored (`cmd &` in a script)
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        from lmlab.cli.app import main as app_main

        app_main()
    except KeyboardInterrupt:  # before the app's own handling starts (e.g. while plugins register commands)
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
