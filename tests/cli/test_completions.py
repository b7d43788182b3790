"""completions/: the committed scripts are current and actually complete `lmlab` commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli import completions

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


@pytest.mark.parametrize("shell", completions.SHELLS)
def test_committed_script_is_current(shell: str) -> None:
    path = COMPLETIONS / f"lmlab.{shell}"
    assert path.is_file(), f"{path} is missing: run `python -m lmlab.cli.completions`"
    text = path.read_text(encoding="utf-8")
    assert text.strip()
    assert "_LMLAB_COMPLETE" in text
    assert text == completions.render(shell), f"{path} is stale: run `python -m lmlab.cli.completions`"


def test_check_flags_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "lmlab.bash" in capsys.readouterr().err
    assert completions.main(["--dir", str(tmp_path)]) == 0
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "lmlab.zsh").write_text("# old\n")
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "lmlab.zsh" in err and "lmlab.fish" not in err


@pytest.mark.parametrize("shell", completions.SHELLS)
def test_script_is_what_the_app_shows(shell: str) -> None:
    """The scripts are the ones `lmlab --show-completion` prints, so they speak the running app's protocol."""
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmlab.cli", "--show-completion", shell],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == completions.render(shell)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_script_completes_plugin_commands(tmp_path: Path) -> None:
    """Source the committed bash script and ask it to complete `lmlab tr<TAB>` and `lmlab train-orpo --max-s<TAB>`."""
    shim = tmp_path / "lmlab"  # the script runs `lmlab`; make it this interpreter's lmlab
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lmlab.cli "$@"\n')
    shim.chmod(0o755)
    script = (
        f'source "{COMPLETIONS / "lmlab.bash"}"; '
        'COMP_WORDS=(lmlab train-o); COMP_CWORD=1; _lmlab_completion lmlab; echo "${COMPREPLY[*]}"; '
        'COMP_WORDS=(lmlab train-orpo --max-s); COMP_CWORD=2; _lmlab_completion lmlab; echo "${COMPREPLY[*]}"'
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LMLAB_PLUGINS", None)
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["train-orpo", "--max-steps"]
