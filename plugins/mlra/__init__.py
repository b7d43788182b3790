"""MLRA: multi-head low-rank attention (Chung et al. 2024), offered to `lmlab pretrain` as `--attn mlra`."""

from __future__ import annotations

from typing import Any

from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.models.architectures import AttentionSpec


@hookimpl
def register_attention(register: Any) -> None:
    from lmlab.plugins.mlra.attention import MLRAttention, parse_options

    register(AttentionSpec("mlra", "multi-head low-rank attention: W_h = A_h·B_h (options: rank, targets)",
                           build=MLRAttention, parse_options=parse_options))
