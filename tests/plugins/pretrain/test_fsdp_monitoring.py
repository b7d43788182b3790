"""TEV and the embedding-gradient variance under FSDP2 (two torchrun processes, gloo, CPU) are the figures of the
unsharded model: measured on the shards during training, they equal what the gathered model gives after it, on
every process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fsdp_monitor_toy.py")


@pytest.mark.slow
def test_fsdp2_monitoring_matches_the_gathered_model(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), "block",
                           str(tmp_path / "figures")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"figures-{rank}.json").read_text()) for rank in (0, 1)]
    for figures in ranks:
        assert figures["sharded_param"] == "DTensor"  # the loop really measured a sharded embedding
        assert figures["during_training"]["emb_grad_var"] > 0
        assert figures["during_training"] == pytest.approx(figures["gathered"], rel=1e-5)
    assert ranks[0]["during_training"] == pytest.approx(ranks[1]["during_training"], rel=1e-6)
