"""Checkpoints of sharded and replicated runs: two torchrun processes (gloo, CPU) under FSDP2 and under DDP fail
after checkpoint 2, resume from it with a new model and optimizer, and end where an uninterrupted run does and where
one process with the same global batch does; checkpoints hold whole weights, whatever the sharding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from lmlab.core.files import checkpoint
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.training.loop import _check_parallelism

SCRIPT = Path(__file__).with_name("scale_out_toy.py")
CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng-0.pt", "rng-1.pt", "state.json"}


def toy(mode: str, out: Path, batch_size: int, *extra: str) -> subprocess.CompletedProcess:
    """Run tests/core/scale_out_toy.py in one process ("single") or in two torchrun processes."""
    launcher = [sys.executable]
    if mode != "single":
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        assert torchrun, "torchrun ships with torch"
        launcher = [torchrun, "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*launcher, str(SCRIPT), mode, str(out), "--batch-size", str(batch_size), *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done


def assert_close(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    """Every tensor of `expected` is in `weights`, equal within `atol` (an FSDP checkpoint also names the output
    layer that safetensors' save_model leaves out as a tie of the embedding)."""
    assert expected.keys() <= weights.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    toy("single", out, 4)
    return out / "straight"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_two_processes_resume_exactly_and_match_one(mode: str, one_process: Path, tmp_path: Path) -> None:
    done = toy(mode, tmp_path, 2, "--stop")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert f"resumed from {stopped / 'checkpoints' / 'step-000002'} at step 2" in " ".join(done.stderr.split())
    assert [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert {p.name for p in (stopped / "checkpoints" / "step-000002").iterdir()} == CHECKPOINT_FILES

    final = load_file(straight / "final.safetensors")
    assert_close(load_file(stopped / "final.safetensors"), final, atol=0)  # bit for bit
    assert_close(final, load_file(one_process / "final.safetensors"), atol=1e-5)
    for step in ("step-000002", "step-000004"):  # whole weights in the checkpoints, not one process's shards
        assert_close(load_file(straight / "checkpoints" / step / "model.safetensors"),
                     load_file(one_process / "checkpoints" / step / "model.safetensors"), atol=1e-5)


@pytest.mark.parametrize(("kind", "fsdp2", "hint"), [(DistributedType.DEEPSPEED, False, "FSDP"),
                                                     (DistributedType.FSDP, False, "fsdp_version: 2")])
def test_deepspeed_and_fsdp1_are_refused_before_training(kind: DistributedType, fsdp2: bool, hint: str) -> None:
    with pytest.raises(LmlabError) as refused:
        _check_parallelism(SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2))
    assert hint in refused.value.hint


@pytest.mark.parametrize(("kind", "fsdp2"), [(DistributedType.NO, False), (DistributedType.MULTI_CPU, False),
                                             (DistributedType.MULTI_GPU, False), (DistributedType.FSDP, True)])
def test_one_process_ddp_and_fsdp2_are_accepted(kind: DistributedType, fsdp2: bool) -> None:
    _check_parallelism(SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2))


def test_a_checkpoint_resumes_only_under_the_sharding_that_wrote_it(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"step": 2, "fsdp": True}))
    with pytest.raises(LmlabError, match="written by a run with FSDP, resumed without it"):
        checkpoint.load(tmp_path, SimpleNamespace(is_fsdp2=False), model=None, optimizer=None, scheduler=None,
                        seed=0)
