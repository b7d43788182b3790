"""Pieces of the shared loop a user relies on: data order, schedules, chunked log-probs, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.core.files import checkpoint
from lmlab.core.training.logprobs import token_logprobs
from lmlab.core.training.trainer import length_grouped_batches, lr_lambda


def test_batches_are_deterministic_full_and_cover_every_example() -> None:
    lengths = [5, 90, 12, 33, 7, 64, 2, 18, 40, 41, 3]
    a = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a == length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a != length_grouped_batches(lengths, 4, seed=1, epoch=1)
    assert all(len(b) == 4 for b in a)
    assert set(i for b in a for i in b) == set(range(len(lengths)))
    for batch in a:  # grouped: each batch is sorted longest first
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_schedules() -> None:
    assert [round(lr_lambda("linear", 2, 10)(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_lambda("cosine", 0, 10)(5) == pytest.approx(0.5)
    assert lr_lambda("inverse_sqrt", 4, 100)(16) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 10)(9) == 1.0


def test_chunked_logprobs_match_log_softmax_and_gradcheck() -> None:
    torch.manual_seed(0)
    h = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 30, (40,))
    expected = (h @ w.T).log_softmax(-1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(token_logprobs(h, w, t), expected)
    assert torch.autograd.gradcheck(lambda h, w: token_logprobs(h, w, t), (h, w))


def test_incomplete_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "step-000002").mkdir()
    (tmp_path / "step-000002" / "state.json").write_text(json.dumps({"step": 2}))
    (tmp_path / "step-000004").mkdir()  # crashed mid-write: no state.json
    (tmp_path / ".tmp-step-000006").mkdir()
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000002"


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected
