"""Shell completion scripts for `lmlab`: `python -m lmlab.cli.completions [--check] [--dir DIR]`.
Writes completions/lmlab.{bash,zsh,fish}; with `--check` writes nothing and exits 1 listing stale files.

The scripts are Typer's (what `lmlab --show-completion SHELL` prints), not click's: Typer vendors its own click,
whose runtime answers `_LMLAB_COMPLETE=complete_bash`, while click's script sends `bash_complete`, which Typer
rejects ("Shell complete not supported."), so tab would do nothing. A script depends only on the program name and
the completion variable, never on the commands (at tab time the shell runs `lmlab`, which completes against the
plugins loaded then), so generating one does not build the app and gives the same output in any environment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typer.completion import get_completion_script

PROG_NAME = "lmlab"
COMPLETE_VAR = "_LMLAB_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def render(shell: str) -> str:
    """The completion script for `shell` (bash, zsh or fish), ending in one newline."""
    if shell not in SHELLS:
        raise ValueError(f"unsupported shell {shell!r}; choose from {', '.join(SHELLS)}")
    return get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def default_dir() -> Path:
    """completions/ of the source checkout this module lives in, else of the current directory."""
    root = Path(__file__).resolve().parents[1]
    return root / "completions" if (root / "pyproject.toml").is_file() else Path.cwd() / "completions"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.cli.completions", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing stale files")
    parser.add_argument("--dir", type=Path, default=None, help="output folder (default: completions/ of the repo)")
    args = parser.parse_args(argv)
    folder: Path = args.dir or default_dir()
    stale = []
    for shell in SHELLS:
        path, text = folder / f"{PROG_NAME}.{shell}", render(shell)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    if args.check and stale:
        print("stale completion scripts (regenerate with `python -m lmlab.cli.completions`):", file=sys.stderr)
        for path in stale:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
