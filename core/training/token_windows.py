"""Next-token training windows over a memory-mapped token stream (`core.training.text_corpus.tokenize_corpus`), for any
architecture's training task.

Window i is tokens[i·L : i·L + L + 1] with L = block_size: its first L tokens are the input, its last L the
targets. Windows do not overlap, so an epoch shows the model every token of the split once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class TokenWindows:
    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.block_size

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """{"input_ids", "targets"}: int64 [len(indices), block_size], the targets shifted by one token."""
        L = self.block_size
        rows = torch.from_numpy(np.stack([self.tokens[i * L:i * L + L + 1] for i in indices]).astype(np.int64))
        return {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}

    def epoch_batches(self, epoch: int, global_batch: int, seed: int) -> list[list[int]]:
        """The epoch's global batches of window indices: a permutation seeded by (seed, epoch), its last batch
        filled up from the start of the permutation so that every batch is full."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        order += [order[i % n] for i in range((-n) % global_batch)]
        return [order[i:i + global_batch] for i in range(0, len(order), global_batch)]

    def evenly_spaced(self, count: int) -> list[int]:
        """Up to `count` window indices spread evenly from the first window to the last."""
        n = len(self)
        return np.linspace(0, n - 1, num=min(n, count)).astype(int).tolist()

    def sample(self, count: int, generator: torch.Generator) -> list[int]:
        """`count` window indices drawn uniformly with replacement."""
        return torch.randint(0, len(self), (count,), generator=generator).tolist()
