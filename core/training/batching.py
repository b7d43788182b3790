"""Deterministic, length-grouped batches: a function of (seed, epoch, global batch) only, so resuming and
changing the number of processes replay exactly the same data."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def length_grouped_batches(lengths: Sequence[int], global_batch: int, *, seed: int, epoch: int,
                           group: int = 64) -> list[list[int]]:
    """Shuffle, sort by length within groups of `group` batches (little padding), shuffle the batches.

    The last batch is filled by wrapping around the shuffled order, so no example is left out and every
    batch is full (each process always gets the same number of examples).
    """
    n = len(lengths)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    missing = (-n) % global_batch
    order += [order[i % n] for i in range(missing)]
    span = global_batch * group
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
