"""Next-token windows over a token stream (lmlab.core.training.text_corpus)."""

from __future__ import annotations

import numpy as np
import torch

from lmlab.core.training.text_corpus import TokenWindows

TOKENS = np.arange(23, dtype=np.uint16)  # (23 - 1) // 4 = 5 windows of 4 inputs and 4 targets


def test_windows_are_disjoint_blocks_with_targets_shifted_by_one() -> None:
    windows = TokenWindows(TOKENS, 4)
    assert len(windows) == 5 and len(TokenWindows(TOKENS[:4], 4)) == 0 and len(TokenWindows(TOKENS[:0], 4)) == 0
    batch = windows.batch([0, 4])
    assert batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3], [16, 17, 18, 19]]
    assert batch["targets"].tolist() == [[1, 2, 3, 4], [17, 18, 19, 20]]


def test_an_epoch_is_a_seeded_permutation_in_full_batches() -> None:
    windows = TokenWindows(TOKENS, 4)
    batches = windows.epoch_batches(0, 3, seed=7)
    assert [len(b) for b in batches] == [3, 3]
    flat = [i for b in batches for i in b]
    assert sorted(flat[:5]) == list(range(5)) and flat[5] == flat[0]  # the last batch filled from the start
    assert windows.epoch_batches(0, 3, seed=7) == batches
    orders = {tuple(windows.epoch_batches(epoch, 5, seed)[0]) for epoch, seed in ((0, 7), (1, 7), (0, 8))}
    assert len(orders) == 3  # a new epoch or seed shuffles anew


def test_evenly_spaced_and_sampled_picks() -> None:
    windows = TokenWindows(TOKENS, 4)
    assert windows.evenly_spaced(3) == [0, 2, 4] and windows.evenly_spaced(50) == [0, 1, 2, 3, 4]
    picks = windows.sample(100, torch.Generator().manual_seed(0))
    assert len(picks) == 100 and set(picks) == set(range(5))
    assert windows.sample(100, torch.Generator().manual_seed(0)) == picks
