"""TensorPeak counts what a GPU's max_memory_allocated would: live tensor bytes created in the block."""

from __future__ import annotations

import torch

from lmlab.core.bench.tensor_memory import TensorPeak

MB = 2**20


def test_peak_is_the_most_held_at_once_and_frees_are_seen() -> None:
    with TensorPeak() as tracker:
        a = torch.ones(MB // 4)  # 1 MiB of float32
        del a
        b = torch.ones(MB // 4)
        c = torch.ones(MB // 2)  # 2 MiB, alive together with b
        assert tracker.current == 3 * MB
        del b, c
    assert tracker.peak == 3 * MB
    assert tracker.current == 0


def test_views_in_place_ops_and_older_tensors_are_not_counted() -> None:
    x = torch.zeros(MB // 4)
    with TensorPeak() as tracker:
        x.add_(1.0)
        y = x.view(256, -1)
        z = y.t()
        x.mul_(2.0)
    assert tracker.peak == 0
    assert float(z.sum()) == 2.0 * x.numel()


def test_a_training_step_counts_activations_gradients_and_optimizer_state() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256)
    params = sum(p.numel() * p.element_size() for p in layer.parameters())
    inputs = torch.randn(512, 256)
    optimizer = torch.optim.AdamW(layer.parameters())
    with TensorPeak() as tracker:
        hidden = torch.relu(layer(inputs))  # the linear output and the relu output: 512 KiB each
        hidden.pow(2).mean().backward()
        del hidden
        optimizer.step()
    activations = 2 * inputs.numel() * 4
    assert tracker.peak >= activations + params  # the gradients arrive while the activations are still held
    assert tracker.current >= 3 * params  # after the step: gradients plus AdamW's two moments stay alive
    assert tracker.current < 3 * params + 64 * 1024
