"""The ensemble's members under DDP: two torchrun processes (gloo, CPU) train a 2-member reranker on different
queries for a few steps and end with identical members, because each member runs through the wrapped module's
forward and its gradients are all-reduced (a member called directly bypasses DDP, and the ranks drift apart)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.rerank.conftest import tiny_encoder

SCRIPT = Path(__file__).with_name("ddp_members_toy.py")


@pytest.mark.slow
def test_members_stay_identical_across_ranks(rerank_files: dict[str, Path], tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    encoder = tiny_encoder(tmp_path / "encoder")
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path),
                           str(encoder), str(rerank_files["index"]), str(rerank_files["train"])],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    ranks = [json.loads((tmp_path / f"members-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ranks[0]) == 2 and ranks[0][0] != ranks[0][1]  # two members, each its own weights
    assert ranks[0] == ranks[1]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
