"""Key/value caches for incremental decoding, shared by every architecture's `prefill` / `decode`.

A `KVCache` holds the keys and values of every layer of one transformer stack for a batch of sequences, in
buffers allocated once at their full capacity ([n_layer, B, H, capacity, d_h] each), so a decode step writes
one slot instead of concatenating (what Hugging Face's DynamicCache does, a copy of the whole cache per token).
Beside the buffers it records which slots hold a real key: left padding (batches of prompts of different
lengths) and the Block Transformer's all-pad blocks are never attended to.

One forward over the stack is `mask, is_causal = cache.begin(T, real)`, then every layer's
`k, v = cache.update(layer, k, v)` (the new keys written, the cache so far returned), then `cache.end()`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, capacity: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        # empty, not zeros: only the filled slots are ever read, and untouched pages cost no memory
        self.k = torch.empty(n_layer, batch, n_head, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.real = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.capacity, self.length, self.padded, self._pending = capacity, 0, False, 0

    @property
    def room(self) -> int:
        """Slots still free."""
        return self.capacity - self.length

    def begin(self, T: int, real: Tensor | None = None) -> tuple[Tensor | None, bool]:
        """Start a forward of T new positions (`real` [B, T]: which are not padding; None: all are). Returns the
        attention mask every layer uses, [B, 1, T, S] (True: may attend; S = length + T), or None with
        is_causal telling SDPA whether to apply its own causal mask. A query may attend to the real keys up to
        its own slot, and always to itself (so a padding query has one key, never a row of -inf)."""
        if T > self.room:
            raise ValueError(f"KV cache of {self.capacity} slots has room for {self.room}, not {T}")
        start, end = self.length, self.length + T
        if real is None:
            self.real[:, start:end] = True
        else:
            self.real[:, start:end] = real
            self.padded = self.padded or not bool(real.all())
        self._pending = T
        if not self.padded:
            if T == 1:
                return None, False
            if start == 0:
                return None, True
        slots = torch.arange(end, device=self.real.device)
        query = slots[start:end, None]
        allowed = (slots[None, :] <= query) & self.real[:, None, :end]  # [B, T, S]
        allowed |= slots[None, :] == query
        return allowed[:, None], False

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer `layer`'s new keys and values ([B, H, T, d_h]); the layer's keys and values so far."""
        start, end = self.length, self.length + self._pending
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def end(self) -> None:
        self.length += self._pending
        self._pending = 0

    def reset(self) -> None:
        """Empty the cache (the buffers are kept for reuse)."""
        self.length, self.padded = 0, False

    def keep(self, rows: Tensor) -> None:
        """Keep only these sequences of the batch (finished ones leave it)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.real = self.real[rows]
        self.padded = self.padded and not bool(self.real[:, :self.length].all())

    def merge(self, other: KVCache) -> None:
        """Append other's sequences to this batch. Both are right-aligned to the longer length (the shorter one's
        first slots become padding), so every sequence's next key lands in the same slot again."""
        length = max(self.length, other.length)
        if length > self.capacity or other.k.shape[0] != self.k.shape[0] or other.k.shape[2:] != self.k.shape[2:]:
            raise ValueError("the caches to merge differ in shape or do not fit")
        L, B, H, cap, d = self.k.shape
        # zeros, not empty: the shorter cache's new padding slots are masked, but attention still multiplies their
        # values by a weight of 0, and 0 · NaN (whatever uninitialised memory held) is NaN
        k = self.k.new_zeros(L, B + other.k.size(1), H, cap, d)
        v, real = torch.zeros_like(k), self.real.new_zeros(k.size(1), cap)
        for rows, cache in ((slice(0, B), self), (slice(B, None), other)):
            start = length - cache.length
            k[:, rows, :, start:length] = cache.k[:, :, :, :cache.length]
            v[:, rows, :, start:length] = cache.v[:, :, :, :cache.length]
            real[rows, start:length] = cache.real[:, :cache.length]
        self.k, self.v, self.real = k, v, real
        self.padded = self.padded or other.padded or self.length != other.length
        self.length = length

    def nbytes_per_sequence(self) -> int:
        """Bytes of keys and values one sequence holds now (every layer, the filled slots)."""
        n_layer, _, n_head, _, head_dim = self.k.shape
        return 2 * n_layer * n_head * self.length * head_dim * self.k.element_size()


class CacheState:
    """The decode state of a model with one stack and one cache (the GPT): the cache and every sequence's next
    position. A model with more (the Block Transformer) keeps its own state with the same three methods."""

    def __init__(self, cache: KVCache, next_position: Tensor) -> None:
        self.cache, self.next_position = cache, next_position

    def full(self) -> bool:
        return self.cache.room == 0

    def keep(self, rows: Tensor) -> None:
        self.cache.keep(rows)
        self.next_position = self.next_position[rows]

    def kv_bytes_per_sequence(self) -> int:
        return self.cache.nbytes_per_sequence()

    def merge(self, other: CacheState) -> None:
        """Sequences join the batch (continuous batching): `other` is a fresh prefill's state."""
        self.cache.merge(other.cache)
        self.next_position = torch.cat((self.next_position, other.next_position))
