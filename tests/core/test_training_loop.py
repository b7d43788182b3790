"""The shared loop driven directly with a toy task: global-count normalisation, gradient accumulation, the NaN
guard and bit-for-bit resume."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab.core.files.runs import RunDir
from lmlab.core.kernel.errors import StopRequest, TrainingDiverged
from lmlab.core.training.loop import TrainConfig, _step, make_accelerator, train
from lmlab.core.training.report import read_metrics

DIM = 3


class TokenRegression:
    """Per-token squared error on sequences of unequal length, divided by the global token count: the mean over
    the global batch's tokens, whatever the split into micro-batches. `nan_from` poisons the loss from that
    optimizer step on (with grad_accum 1)."""

    def __init__(self, n: int = 16, nan_from: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.lengths = [1 + (3 * i) % 8 for i in range(n)]
        self.x = [torch.randn(length, DIM, generator=g) for length in self.lengths]
        self.y = [torch.randn(length, generator=g) for length in self.lengths]
        self.nan_from, self.calls = nan_from, 0

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch)).tolist()
        return [order[i:i + global_batch] for i in range(0, len(order) - global_batch + 1, global_batch)]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        width = max(self.lengths[i] for i in indices)
        x, y, mask = torch.zeros(len(indices), width, DIM), torch.zeros(len(indices), width), torch.zeros(
            len(indices), width)
        for row, i in enumerate(indices):
            x[row, :self.lengths[i]], y[row, :self.lengths[i]], mask[row, :self.lengths[i]] = self.x[i], self.y[i], 1
        return {"x": x, "y": y, "mask": mask}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"tokens": float(batch["mask"].sum())}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.calls += 1
        squared = (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2 * batch["mask"]
        loss = squared.sum() / totals["tokens"]
        if self.nan_from is not None and self.calls >= self.nan_from:
            loss = loss * float("nan")
        return loss, {"tokens": batch["mask"].sum() / totals["tokens"]}


def toy_model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(8, 1))


def run_loop(path: Path, task: TokenRegression, *, dropout: float = 0.0, resume: bool = False,
             **cfg: int | float | str) -> dict:
    settings = {"max_steps": 3, "batch_size": 4, "grad_accum": 1, "lr": 0.05, "schedule": "constant",
                "save_every": 50, "seed": 7, **cfg}
    return train(toy_model(dropout), task, TrainConfig(**settings), RunDir(path), make_accelerator("fp32"),
                 resume=resume)


def test_micro_batches_are_normalised_by_the_global_token_count(tmp_path: Path) -> None:
    task = TokenRegression()
    first = task.batches(0, 4)[0]
    model = toy_model()
    big = task.collate(first)
    loss, _ = task.loss(model, big, task.counts(big))
    loss.backward()
    expected_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    halves = [task.collate(first[:2]), task.collate(first[2:])]
    naive = sum(task.loss(model, half, task.counts(half))[0].item() for half in halves) / 2
    assert naive != pytest.approx(loss.item(), rel=1e-3)  # the micro-batches' token counts really differ

    for name, batch_size, accum in (("big", 4, 1), ("accum", 2, 2)):
        run_loop(tmp_path / name, TokenRegression(), max_steps=1, batch_size=batch_size, grad_accum=accum)
        step = read_metrics(tmp_path / name / "metrics.jsonl")[0]
        assert step["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert step["grad_norm"] == pytest.approx(expected_norm, rel=1e-6)
        assert step["tokens"] == pytest.approx(1.0)


def test_accumulated_micro_batches_give_the_big_batchs_weights(tmp_path: Path) -> None:
    big = run_loop(tmp_path / "big", TokenRegression(), max_steps=5, batch_size=4, grad_accum=1)["model"]
    accum = run_loop(tmp_path / "accum", TokenRegression(), max_steps=5, batch_size=2, grad_accum=2)["model"]
    untrained = toy_model().state_dict()
    for name, value in big.state_dict().items():
        torch.testing.assert_close(accum.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, untrained[name])


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as caught:
        run_loop(tmp_path / "run", TokenRegression(nan_from=3), max_steps=6, save_every=2)
    message = str(caught.value)
    good = tmp_path / "run" / "checkpoints" / "step-000002"
    assert "diverged at step 3" in message and str(good) in message
    weights = load_file(good / "model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    straight = run_loop(tmp_path / "straight", TokenRegression(), dropout=0.2, max_steps=6, save_every=2)["model"]
    run_loop(tmp_path / "resumed", TokenRegression(), dropout=0.2, max_steps=4, save_every=2)
    resumed = run_loop(tmp_path / "resumed", TokenRegression(), dropout=0.2, max_steps=6, save_every=2,
                       resume=True)["model"]
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    rows = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]


class MetaAccelerator:
    """One process whose device is `meta`: any CPU tensor that meets the model's raises, and so does any read-back
    but the one `tolist` the test counts."""

    device = torch.device("meta")

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        return tensor

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


@pytest.mark.parametrize(("world", "reads"), [(1, 1), (2, 2)])
def test_a_step_runs_on_the_models_device_and_reads_back_once(monkeypatch, world: int, reads: int) -> None:
    """Batches moved to the model's device, counts taken from the host batch (a count of a meta tensor raises),
    the stop flag and gradient norm made there; one read-back a step (several processes: one more, for the global
    counts)."""
    read: list[torch.device] = []

    def tolist(tensor: torch.Tensor) -> list[float]:
        read.append(tensor.device)
        return [0.0] * tensor.numel()

    model = toy_model().to("meta")
    trainable = list(model.parameters())
    task = TokenRegression()
    indices = task.batches(0, 4 * world)[0]
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    record, stopping = _step(model, task, MetaAccelerator(), None, indices,
                             TrainConfig(batch_size=2, grad_accum=2), world, 0, trainable, StopRequest())
    assert read == [torch.device("meta")] * reads
    assert set(record) == {"loss", "tokens", "grad_norm"} and stopping is False
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in trainable)
