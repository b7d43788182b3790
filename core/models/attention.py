"""What `pretrain --attn` chooses from: attention types registered by plugins (`register_attention`).

An attention module is causal self-attention over [B, T, C] → [B, T, C]. It must call its output projection
`c_proj` (the model scales that layer's init by 1/√(2·n_layer), nanoGPT's residual rule). Attention-specific
settings arrive as `options` (from `--attn-opt KEY=VALUE`), validated by the attention's own `parse_options`;
an attention without one takes no options. Architectures are in `lmlab.core.models.architectures`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmlab.core.kernel.plugins import collect

if TYPE_CHECKING:
    from torch import nn


@dataclass
class AttentionConfig:
    """The model's shape as an attention (or an architecture's option parser) sees it, plus attention options."""

    n_embd: int
    n_head: int
    n_layer: int
    block_size: int
    dropout: float = 0.0
    bias: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttentionSpec:
    """`build(config)` returns the attention module; `parse_options(raw, config)` turns `--attn-opt` pairs into
    its options (defaults filled in) or raises LmlabError; None means the attention takes no options."""

    name: str
    description: str
    build: Callable[[AttentionConfig], nn.Module]
    parse_options: Callable[[dict[str, str], AttentionConfig], dict[str, Any]] | None = None


def attention_types() -> dict[str, AttentionSpec]:
    return collect("register_attention", "attention", key=lambda spec: spec.name)
