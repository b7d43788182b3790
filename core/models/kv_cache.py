"""Key/value caches for incremental decoding, shared by every architecture's `prefill` / `decode`. A `KVCache`
holds every layer of one stack in buffers allocated once, on the model's device and in its dtype:

    k, v   [n_layer, slots, H, capacity, d_h]   one row slot per sequence; a decode step writes one position
    real   [slots, capacity] bool               which positions hold a real key (not padding): only those are
                                                attended to

Every sequence's next key lands at the same position, `length` (one timeline: a step writes one column). A
sequence that leaves gives its slot back and the batch reads its rows through an index (nothing is copied); one
that joins (`merge`) takes a free slot, its keys right-aligned to `length` (the running rows move right only for
a longer newcomer). When every slot is taken the buffers double (the only whole copy). One forward over the stack
is `cache.begin(T, real)`, then every layer's `cache.update(layer, k, v)`, then `cache.end()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, capacity: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        # zeros, not empty: a joining sequence's padding positions are masked, but attention still multiplies
        # their values by a weight of 0, and 0 · NaN (whatever uninitialised memory held) is NaN
        self.k = torch.zeros(n_layer, batch, n_head, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.real = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.capacity, self.length, self._pending = capacity, 0, 0
        self._padded = [False] * batch  # per slot: whether its row holds padding (known on the host, no sync)
        self._use(list(range(batch)))

    def _use(self, slots: list[int]) -> None:
        """The batch is these slots, in this order."""
        self.slots = slots
        self.rows: slice | Tensor = (slice(0, len(slots)) if slots == list(range(len(slots)))
                                     else to_device(slots, torch.long, self.k.device))

    @property
    def padded(self) -> bool:
        """Whether some sequence of the batch has padding (then every forward needs a mask)."""
        return any(self._padded[s] for s in self.slots)

    @property
    def room(self) -> int:
        """Positions still free."""
        return self.capacity - self.length

    def begin(self, T: int, real: Tensor | None = None) -> tuple[Tensor | None, bool]:
        """Start a forward of T new positions (`real` [B, T]: which are not padding; None: all are). Returns the
        attention mask every layer uses, [B, 1, T, S] (True: may attend; S = length + T), or None with
        is_causal telling SDPA whether to apply its own causal mask. A query may attend to the real keys up to
        its own position, and always to itself (so a padding query has one key, never a row of -inf)."""
        if T > self.room:
            raise ValueError(f"KV cache of {self.capacity} positions has room for {self.room}, not {T}")
        start, end = self.length, self.length + T
        self.real[self.rows, start:end] = True if real is None else real
        if real is not None:
            for slot, pad in zip(self.slots, (~real).any(1).tolist(), strict=True):  # one sync, per prefill
                self._padded[slot] = self._padded[slot] or pad
        self._pending = T
        if not self.padded and (T == 1 or start == 0):  # one query sees every key; a fresh prefill is plain causal
            return None, T > 1
        positions = torch.arange(end, device=self.real.device)
        query = positions[start:end, None]
        allowed = (positions[None, :] <= query) & self.real[self.rows, None, :end]  # [B, T, S]
        allowed |= positions[None, :] == query
        return allowed[:, None], False

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer `layer`'s new keys and values ([B, H, T, d_h]); the layer's keys and values so far."""
        start, end = self.length, self.length + self._pending
        self.k[layer, self.rows, :, start:end] = k
        self.v[layer, self.rows, :, start:end] = v
        return self.k[layer, self.rows, :, :end], self.v[layer, self.rows, :, :end]

    def end(self) -> None:
        self.length += self._pending
        self._pending = 0

    def reset(self) -> None:
        """Empty the cache (the buffers and the batch's slots are kept for reuse)."""
        self.length = 0
        for slot in self.slots:
            self._padded[slot] = False

    def keep(self, rows: Sequence[int] | Tensor) -> None:
        """Keep only these sequences (positions in the batch, in the new order), freeing the others' slots."""
        rows = rows.tolist() if isinstance(rows, Tensor) else rows
        self._use([self.slots[j] for j in rows])

    def merge(self, other: KVCache) -> None:
        """Append other's sequences (a fresh prefill's cache), each in a free slot, right-aligned to the longer
        length (the shorter side's first positions become padding): the next keys share one position again."""
        length = max(self.length, other.length)
        if length > self.capacity or other.k.shape[0] != self.k.shape[0] or other.k.shape[2:] != self.k.shape[2:]:
            raise ValueError("the caches to merge differ in shape or do not fit")
        shift = length - self.length
        if shift and self.length and self.slots:  # the running rows move right (only for a longer newcomer)
            for buf in (self.k, self.v):
                buf[:, self.rows, :, shift:length] = buf[:, self.rows, :, :self.length].clone()
            self.real[self.rows, shift:length] = self.real[self.rows, :self.length].clone()
            self.real[self.rows, :shift] = False
            for slot in self.slots:
                self._padded[slot] = True
        joining = other.k.size(1)
        taken = set(self.slots)
        free = [s for s in range(self.k.size(1)) if s not in taken]
        if len(free) < joining:
            free += self._grow(len(self.slots) + joining)
        new, start = free[:joining], length - other.length
        index = to_device(new, torch.long, self.k.device)
        self.k[:, index, :, start:length] = other.k[:, other.rows, :, :other.length]
        self.v[:, index, :, start:length] = other.v[:, other.rows, :, :other.length]
        self.real[index, :start] = False
        self.real[index, start:length] = other.real[other.rows, :other.length]
        for slot, source in zip(new, other.slots, strict=True):
            self._padded[slot] = other._padded[source] or start > 0
        self.length = length
        self._use(self.slots + new)

    def _grow(self, needed: int) -> list[int]:
        """At least `needed` slots (doubling); the new free slots."""
        old = self.k.size(1)
        slots = max(needed, 2 * old)
        L, _, H, cap, d = self.k.shape
        k = self.k.new_zeros(L, slots, H, cap, d)
        v, real = torch.zeros_like(k), self.real.new_zeros(slots, cap)
        k[:, :old], v[:, :old], real[:old] = self.k, self.v, self.real
        self.k, self.v, self.real = k, v, real
        self._padded += [False] * (slots - old)
        return list(range(old, slots))

    def nbytes_per_sequence(self) -> int:
        """Bytes of keys and values one sequence holds now (every layer, the filled positions)."""
        n_layer, _, n_head, _, head_dim = self.k.shape
        return 2 * n_layer * n_head * self.length * head_dim * self.k.element_size()


class CacheState:
    """The decode state of a model with one stack and one cache (the GPT): the cache and each next position."""

    def __init__(self, cache: KVCache, next_position: Tensor) -> None:
        self.cache, self.next_position = cache, next_position

    def full(self) -> bool:
        return self.cache.room == 0

    def keep(self, rows: Sequence[int]) -> None:
        self.cache.keep(rows)
        self.next_position = self.next_position[to_device(rows, torch.long, self.next_position.device)]

    def kv_bytes_per_sequence(self) -> int:
        return self.cache.nbytes_per_sequence()

    def merge(self, other: CacheState) -> None:
        """Sequences join the batch (continuous batching): `other` is a fresh prefill's state."""
        self.cache.merge(other.cache)
        self.next_position = torch.cat((self.next_position, other.next_position))


def to_device(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` (row indices, per-sequence settings) as a tensor of `dtype` on `device`, copied there without a host
    sync: a plain `torch.tensor(values, device="cuda")` copies from pageable memory, which waits for all the work
    queued before it (a sync per decode step); staged through pinned memory the copy is asynchronous."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
