"""Two torchrun processes (gloo, CPU) through the shared loop: SIGTERM reaching one process stops both after the
same step with one intact checkpoint, which resumes bit for bit; each process draws its own random numbers from
the same initial weights and gets its own stream back on resume; every `torch.load` of a resume names where its
tensors go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lmlab.core.files import checkpoint
from lmlab.core.files.runs import RunDir
from lmlab.core.kernel.errors import EXIT_INTERRUPTED
from lmlab.core.training.loop import TrainConfig, make_accelerator, train
from lmlab.core.training.report import read_metrics
from tests.core.scale_out_toy import NextToken, TinyLM

SCRIPT = Path(__file__).with_name("multiprocess_stop_toy.py")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("multiprocess")
    one = out / "one"  # a checkpoint of one process (global batch 4) for the two to resume
    torch.manual_seed(1)
    train(TinyLM(), NextToken(crash_after=None), TrainConfig(max_steps=2, batch_size=4, lr=1e-2, save_every=2),
          RunDir(one), make_accelerator("fp32"))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    # In a session of its own, so that a run stuck in a collective (a stop that did not reach every process) is
    # killed whole on timeout rather than left waiting forever.
    launch = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(out), str(one)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = launch.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        _, stderr = launch.communicate()
        pytest.fail(f"the two processes did not finish in 120 s:\n{stderr}")
    assert launch.returncode == 0, stderr
    return out, [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_and_resumes(launched) -> None:
    out, ranks = launched
    stopped = out / "stopped"
    for seen in ranks:  # process 0 got no signal, yet stops with process 1, after the same step
        assert seen["interrupted"]["exit_code"] == EXIT_INTERRUPTED
        assert "Interrupted at step 3" in seen["interrupted"]["message"]
    folder = stopped / "checkpoints" / "step-000003"
    assert checkpoint.damage(folder) is None
    assert {"rng-0.pt", "rng-1.pt"} <= {p.name for p in folder.iterdir()}
    assert not list((stopped / "checkpoints").glob(".tmp-*"))
    assert [r["step"] for r in read_metrics(stopped / "metrics.jsonl")] == [1, 2, 3, 4]
    expected = load_file(out / "straight" / "final.safetensors")
    resumed = load_file(stopped / "final.safetensors")
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name


@pytest.mark.slow
def test_processes_draw_different_numbers_from_the_same_weights_and_resume_their_own(launched) -> None:
    _, (zero, one) = launched
    assert zero["initial"] == one["initial"]
    assert len(zero["draws"]["straight"]) == 4 and zero["draws"]["straight"] != one["draws"]["straight"]
    for seen in (zero, one):  # the resume (from step 3) draws what the uninterrupted run drew at step 4
        assert seen["draws"]["stopped"] == seen["draws"]["straight"][:3]
        assert seen["draws"]["resumed"] == seen["draws"]["straight"][3:]
    # resumed from one process's checkpoint, process 1 has a stream of its own, not a copy of process 0's
    assert len(one["draws"]["widened"]) == 2 and zero["draws"]["widened"] != one["draws"]["widened"]


@pytest.mark.slow
def test_every_load_of_a_resume_has_a_map_location(launched) -> None:
    _, ranks = launched
    for rank, seen in enumerate(ranks):
        assert sorted((load["file"], load["map_location"]) for load in seen["loads"]) == [
            ("optimizer.pt", "cpu"), (f"rng-{rank}.pt", "cpu"), ("scheduler.pt", "cpu")]
