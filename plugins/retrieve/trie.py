"""The prefix trie of page titles that constrains generative retrieval (GENRE, De Cao et al. 2021; Re3val, Song et
al. 2024). Each sequence is one title's tokens followed by EOS; titles share prefixes, and one may be a prefix of
another ("Paris", "Paris Hilton"), so a node can have the EOS child next to others.

`TitleTrie` holds the trie as tensors, for a whole batch of beams at once: its edges sorted by (parent, token), which
give each node's children as one contiguous slice (CSR). A padded row per node, or a dense node × vocabulary table,
would cost nodes × fan-out (the root of a few thousand titles has ~10^3 first tokens) or nodes × 49k; the edge list
costs one entry per edge, builds the allowed-token mask with one scatter, and advances beams with one
`torch.searchsorted` on the sorted keys (parent << 32 | token). `DictTrie` is GENRE's nested-dict trie, walked per
beam by a `prefix_allowed_tokens_fn`: the anchor.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmlab.core.files.atomic import atomic_path

DEAD = 0  # where a beam lands when it leaves the trie (or runs on past EOS): no children, nothing allowed
ROOT = 1


class TitleTrie:
    def __init__(self, parents: torch.Tensor, tokens: torch.Tensor, children: torch.Tensor, depth: int,
                 titles: int) -> None:
        """Edges sorted by (parent, token); `depth` is the longest sequence (title + EOS), `titles` their number."""
        self.parents, self.tokens, self.children = parents, tokens, children
        self.depth, self.titles = depth, titles
        nodes = max(ROOT, int(children.max()) if len(children) else 0) + 1
        self.offsets = torch.searchsorted(parents, torch.arange(nodes + 1, device=parents.device))
        self.keys = parents << 32 | tokens

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]]) -> TitleTrie:
        unique = sorted({tuple(s) for s in sequences if len(s)})
        edges: dict[tuple[int, int], int] = {}
        for seq in unique:
            node = ROOT
            for token in seq:
                node = edges.setdefault((node, token), len(edges) + ROOT + 1)
        keys = sorted(edges)
        return cls(torch.tensor([p for p, _ in keys], dtype=torch.long),
                   torch.tensor([t for _, t in keys], dtype=torch.long),
                   torch.tensor([edges[k] for k in keys], dtype=torch.long),
                   max(map(len, unique), default=0), len(unique))

    def __len__(self) -> int:
        return self.titles

    def to(self, device: torch.device | str) -> TitleTrie:
        """The trie's tensors on `device` (itself when they are there already), copied as they are: nothing is
        recomputed, so the move reads nothing back to the host."""
        if self.parents.device == torch.device(device):
            return self
        moved = copy.copy(self)
        for name in ("parents", "tokens", "children", "offsets", "keys"):
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def allowed(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every allowed continuation of a 1-D batch of nodes, as (index into `nodes`, token) tensors."""
        start = self.offsets[nodes]
        counts = self.offsets[nodes + 1] - start
        index = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
        first = torch.repeat_interleave(start - (counts.cumsum(0) - counts), counts)  # edge index minus output slot
        return index, self.tokens[first + torch.arange(len(index), device=nodes.device)]

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """BoolTensor[*nodes.shape, vocab_size]: which tokens may follow each node."""
        index, tokens = self.allowed(nodes.reshape(-1))
        mask = torch.zeros(nodes.numel(), vocab_size, dtype=torch.bool, device=nodes.device)
        mask[index, tokens] = True
        return mask.view(*nodes.shape, vocab_size)

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The child of each node by each token; DEAD where the token is not a child."""
        if not len(self.keys):
            return torch.full_like(nodes, DEAD)
        key = nodes << 32 | tokens
        at = torch.searchsorted(self.keys, key).clamp_(max=len(self.keys) - 1)
        return torch.where(self.keys[at] == key, self.children[at], DEAD)

    def save(self, path: str | Path) -> None:
        """safetensors, written to a temporary file first and renamed into place."""
        with atomic_path(path) as tmp:
            save_file({"parents": self.parents.cpu(), "tokens": self.tokens.cpu(), "children": self.children.cpu(),
                       "sizes": torch.tensor([self.depth, self.titles])}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> TitleTrie:
        saved = load_file(str(path))
        if set(saved) != {"parents", "tokens", "children", "sizes"}:
            raise ValueError(f"{path} is not a title trie (tensors: {', '.join(sorted(saved))}).")
        depth, titles = saved["sizes"].tolist()
        return cls(saved["parents"], saved["tokens"], saved["children"], depth, titles)


class DictTrie:
    """Nested dicts {token: {token: ...}}, as GENRE walks them in its `prefix_allowed_tokens_fn`."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        self.root: dict[int, dict] = {}
        self.depth = 0
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            self.depth = max(self.depth, len(seq))

    def allowed(self, prefix_tokens: Sequence[int]) -> list[int]:
        """The tokens that may follow `prefix_tokens`; [] when the prefix is not in the trie or is a whole title."""
        node = self.root
        for token in prefix_tokens:
            node = node.get(token)
            if node is None:
                return []
        return list(node)
