"""Two torchrun processes (gloo, CPU) with batch 2 each follow the same loss trajectory as one process with
batch 4: the shared loop divides every loss term by its global count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

ARGS = ("train-orpo", "--max-steps", "4", "--max-length", "64", "--lr", "1e-3", "--schedule", "cosine")


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "lmlab.cli", *ARGS,
                          "--batch-size", "2", "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr
    one = run_cli(*ARGS, "--batch-size", "4", "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    assert len(losses(tmp_path / "one")) == 4
