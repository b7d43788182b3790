"""What `pretrain --attn` and `--arch` choose from: attention types and architectures registered by plugins.

An attention module is causal self-attention over [B, T, C] → [B, T, C]. It must call its output projection
`c_proj` (the model scales that layer's init by 1/√(2·n_layer), nanoGPT's residual rule). Attention-specific
settings arrive as `options` (from `--attn-opt KEY=VALUE`), validated by the attention's own `parse_options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmlab.core.errors import LmlabError
from lmlab.core.plugins import collect

if TYPE_CHECKING:
    from torch import nn


@dataclass
class AttentionConfig:
    n_embd: int
    n_head: int
    n_layer: int
    block_size: int
    dropout: float = 0.0
    bias: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttentionSpec:
    name: str
    description: str
    build: Callable[[AttentionConfig], nn.Module]
    parse_options: Callable[[dict[str, str], AttentionConfig], dict[str, Any]] = lambda raw, cfg: dict(raw)


@dataclass
class ArchitectureSpec:
    """`build(config, attention)` returns a language model whose forward(idx, targets=None) gives (logits, loss)."""

    name: str
    description: str
    build: Callable[[Any, AttentionSpec], nn.Module]


def attention_types() -> dict[str, AttentionSpec]:
    return collect("register_attention", "attention", key=lambda spec: spec.name)


def architectures() -> dict[str, ArchitectureSpec]:
    return collect("register_architectures", "architectures", key=lambda spec: spec.name)


def parse_key_values(pairs: list[str], flag: str) -> dict[str, str]:
    """['rank=32', 'targets=q,k,v'] → {'rank': '32', 'targets': 'q,k,v'}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LmlabError(f"{flag} expects KEY=VALUE, got '{pair}'.", hint=f"e.g. {flag} rank=32")
        out[key.strip()] = value.strip()
    return out
