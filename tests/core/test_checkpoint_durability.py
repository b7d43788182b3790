"""Durable checkpoints: a damaged newest checkpoint falls back to the previous intact one (same final weights as
an uninterrupted run), a full disk mid-save is one clear error that leaves the previous checkpoint in place,
rotation counts only intact checkpoints, and a torn metrics line is dropped on resume."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab.core.files import checkpoint
from lmlab.core.kernel.errors import EXIT_INTERNAL, DiskFull, LmlabError
from lmlab.core.training.report import read_metrics
from tests.conftest import kill_after_checkpoint, run_cli
from tests.core.test_training_loop import TokenRegression, run_loop

SETTINGS = {"dropout": 0.2, "save_every": 2}


def straight(tmp_path: Path) -> torch.nn.Module:
    return run_loop(tmp_path / "straight", TokenRegression(), max_steps=6, **SETTINGS)["model"]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda step: truncate(step / "model.safetensors"), "model.safetensors has"),
    (lambda step: truncate(step / "optimizer.pt"), "optimizer.pt has"),
    (lambda step: (step / "state.json").write_text(""), "state.json is empty"),
    (lambda step: (step / "scheduler.pt").unlink(), "scheduler.pt is missing"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, capsys, damage,
                                                                    problem: str) -> None:
    expected = straight(tmp_path)
    run = tmp_path / "run"
    run_loop(run, TokenRegression(), max_steps=4, **SETTINGS)
    damage(run / "checkpoints" / "step-000004")
    capsys.readouterr()
    resumed = run_loop(run, TokenRegression(), max_steps=6, resume=True, **SETTINGS)["model"]
    warning = capsys.readouterr().err
    assert "step-000004" in warning and problem in warning and "resumed from" in warning
    assert "step-000002 at step 2" in " ".join(warning.split())
    assert_same_weights(expected, resumed)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_loop(run, TokenRegression(), max_steps=4, **SETTINGS)
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert checkpoint.damage(weights.parent) == "model.safetensors does not match its sha256 checksum"
    assert checkpoint.latest(run / "checkpoints") == run / "checkpoints" / "step-000002"


def test_no_intact_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_loop(run, TokenRegression(), max_steps=4, **SETTINGS)
    for step in ("step-000002", "step-000004"):
        (run / "checkpoints" / step / "state.json").write_text("{")
    with pytest.raises(LmlabError, match="no intact checkpoint to resume from") as refused:
        run_loop(run, TokenRegression(), max_steps=6, resume=True, **SETTINGS)
    assert "step-000002 (state.json is unreadable" in str(refused.value)


TORCH_WRITE_FAILURE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(TORCH_WRITE_FAILURE)])
def test_a_full_disk_mid_save_is_one_error_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch,
                                                                             error: Exception) -> None:
    real_save = torch.save

    def fills_the_disk(obj, f, *args, **kwargs):
        if Path(f).parent.name == ".tmp-step-000004" and Path(f).name == "optimizer.pt":
            Path(f).write_bytes(b"half a file")
            raise error
        return real_save(obj, f, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(DiskFull) as full:
        run_loop(run, TokenRegression(), max_steps=4, **SETTINGS)
    monkeypatch.undo()
    message = str(full.value)
    assert full.value.exit_code == EXIT_INTERNAL == 1
    assert "step-000004" in message and " free on " in message and "--resume" in full.value.hint
    assert not list((run / "checkpoints").glob(".tmp-step-*"))
    assert checkpoint.latest(run / "checkpoints") == run / "checkpoints" / "step-000002"
    resumed = run_loop(run, TokenRegression(), max_steps=6, resume=True, **SETTINGS)["model"]
    assert_same_weights(straight(tmp_path), resumed)


def test_rotation_keeps_the_intact_checkpoint_when_a_newer_one_is_damaged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_loop(run, TokenRegression(), max_steps=4, keep_checkpoints=2, **SETTINGS)
    truncate(run / "checkpoints" / "step-000004" / "model.safetensors")
    run_loop(run, TokenRegression(), max_steps=3, keep_checkpoints=1, resume=True, **SETTINGS)
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-000003", "step-000004"]  # step-2 rotated out, the damaged step-4 left to be seen
    assert checkpoint.latest(run / "checkpoints") == run / "checkpoints" / "step-000003"


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path: Path, capsys) -> None:
    expected = tmp_path / "straight" / "metrics.jsonl"
    straight(tmp_path)
    run = tmp_path / "run"
    run_loop(run, TokenRegression(), max_steps=4, **SETTINGS)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"loss": 0.31, "step": 5, "gra')
    capsys.readouterr()
    run_loop(run, TokenRegression(), max_steps=6, resume=True, **SETTINGS)
    assert "dropped unreadable line(s) 5" in " ".join(capsys.readouterr().err.split())
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(expected)]


def test_every_checkpoint_carries_a_manifest_of_its_files(tmp_path: Path) -> None:
    run_loop(tmp_path / "run", TokenRegression(), max_steps=2, **SETTINGS)
    folder = tmp_path / "run" / "checkpoints" / "step-000002"
    files = json.loads((folder / "state.json").read_text())["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "rng-0.pt", "scheduler.pt"]
    assert all(files[name]["size"] == (folder / name).stat().st_size for name in files)


def test_cli_resume_past_a_truncated_newest_checkpoint(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"The {w} of the {v} is long." for w in ("king", "queen", "fool")
                                for v in ("castle", "forest", "river")) * 20)
    args = ("pretrain", "--data", str(corpus), "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--block-size", "16", "--batch-size", "4", "--vocab-size", "300", "--max-steps", "12",
            "--save-every", "2", "--eval-every", "6")
    straight_run = run_cli(*args, "-o", str(tmp_path / "a"))
    assert straight_run.returncode == 0, straight_run.stderr
    killed = tmp_path / "b"
    kill_after_checkpoint(args, killed, 4)
    newest = max((killed / "checkpoints").glob("step-*"))
    truncate(newest / "model.safetensors")
    resumed = run_cli("pretrain", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert newest.name in resumed.stderr and "damaged" in resumed.stderr
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


TWO_PROCESS_DISK_FULL = '''
import errno, sys
from pathlib import Path

import torch

sys.path.insert(0, {toy_dir!r})
from scale_out_toy import NextToken, TinyLM, accelerator_for

from lmlab.core.kernel.errors import DiskFull
from lmlab.core.files.runs import RunDir
from lmlab.core.training.loop import TrainConfig, train

accelerator = accelerator_for(sys.argv[1])
out = Path(sys.argv[2])
real_save = torch.save


def fills_the_disk(obj, f, *args, **kwargs):
    if Path(f).parent.name == ".tmp-step-000004" and Path(f).name == "optimizer.pt":
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, f, *args, **kwargs)


if accelerator.is_main_process:
    torch.save = fills_the_disk
torch.manual_seed(1)
cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, save_every=2)
try:
    train(TinyLM(), NextToken(None), cfg, RunDir(out, main=accelerator.is_main_process), accelerator)
except DiskFull as full:
    (out / f"rank-{{accelerator.process_index}}.txt").write_text(str(full))
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_full_disk_on_the_main_process_stops_every_process(mode: str, tmp_path: Path) -> None:
    script = tmp_path / "disk_full.py"
    script.write_text(TWO_PROCESS_DISK_FULL.format(toy_dir=str(Path(__file__).parent)))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), mode, str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):
        assert "Disk full while writing checkpoint" in (tmp_path / "r" / f"rank-{rank}.txt").read_text()
    assert not list((tmp_path / "r" / "checkpoints").glob(".tmp-step-*"))
    assert checkpoint.latest(tmp_path / "r" / "checkpoints") == tmp_path / "r" / "checkpoints" / "step-000002"
