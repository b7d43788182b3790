"""MLRA, multi-head low-rank attention (Chung, Hong, An, Thorne, Yun, EMNLP 2024; docs/methods.md#mlra-attention):
each head's projection W_h (d × d_h) becomes A_h·B_h (d × r, r × d_h). With N(0, σ²) weights and a unit-variance
input x, Var(x W_h) = d σ² but Var(x A_h B_h) = d r σ⁴, r σ² times quieter (r = 25, σ = 0.02: 1/100), which limits the
growth of output variance with depth in a pre-LN stack. Rank and targets, unconfirmed in the paper, are options."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.architectures import AttentionConfig
from lmlab.core.models.transformer import CAUSAL, attend

TARGETS = ("q", "k", "v", "o")
DEFAULT_TARGETS = "q,k,v"
INIT_STD = 0.02  # nanoGPT's N(0, 0.02), which the model also gives the Linear layers here


def default_rank(cfg: AttentionConfig) -> int:
    """r = ⌊d·d_h/(d+d_h)⌋: parameters of a factorised projection ≈ a dense one's."""
    d, d_h = cfg.n_embd, cfg.n_embd // cfg.n_head
    return d * d_h // (d + d_h)


def parse_options(raw: dict[str, str], cfg: AttentionConfig) -> dict[str, Any]:
    """{'rank': '32', 'targets': 'q,k,v,o'} → {'rank': 32, 'targets': ['q', 'k', 'v', 'o']}, defaults filled in."""
    hint = f"MLRA takes rank=INT (default {default_rank(cfg)}, matching MHA's size) and targets=q,k,v,o (any subset)"
    unknown = sorted(set(raw) - {"rank", "targets"})
    if unknown:
        raise LmlabError(f"unknown MLRA option(s): {', '.join(unknown)}.", hint=hint)
    rank = raw.get("rank", str(default_rank(cfg)))
    if not rank.isdecimal() or int(rank) < 1:
        raise LmlabError(f"MLRA rank must be a positive integer, got '{rank}'.", hint=hint)
    targets = {t.strip() for t in raw.get("targets", DEFAULT_TARGETS).split(",") if t.strip()}
    if not targets or targets - set(TARGETS):
        raise LmlabError(f"MLRA targets must be a non-empty subset of q,k,v,o, got '{raw['targets']}'.",
                         hint=f"{hint}; --attn mha factorises nothing")
    return {"rank": int(rank), "targets": [t for t in TARGETS if t in targets]}


class MLRAttention(nn.Module):
    """Causal self-attention whose target projections are per-head low-rank products A_h·B_h; `qkv` and `project`
    are core's attention protocol, so MLRA also generates with a KV cache and serves as the Block Transformer's."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        d, h = cfg.n_embd, cfg.n_head
        self.n_head, self.d_head, self.dropout = h, d // h, cfg.dropout
        self.rank = r = cfg.options.get("rank", default_rank(cfg))
        targets = cfg.options.get("targets", DEFAULT_TARGETS.split(","))
        self.low_rank = [t for t in "qkv" if t in targets]
        self.dense = [t for t in "qkv" if t not in targets]
        n = len(self.low_rank)
        self.c_attn_a = nn.Linear(d, n * h * r, bias=False) if n else None  # every A_h, fused
        self.c_attn_b = nn.Parameter(torch.randn(n, h, r, self.d_head) * INIT_STD) if n else None  # B_h per head
        self.c_attn_b_bias = nn.Parameter(torch.zeros(n, h, self.d_head)) if n and cfg.bias else None
        self.c_attn = nn.Linear(d, len(self.dense) * d, bias=cfg.bias) if self.dense else None
        # a factorised o mirrors q, k, v: per head A_o,h (d_h × r), then every B_o,h (r × d) in one Linear, c_proj,
        # the last factor, so nanoGPT's residual-scaled init applies to it
        self.o_a = nn.Parameter(torch.randn(h, self.d_head, r) * INIT_STD) if "o" in targets else None
        self.c_proj = nn.Linear(h * r if "o" in targets else d, d, bias=cfg.bias)  # every B_o,h, or dense W_o
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, each [B, T, H, d_h]."""
        B, T, _ = x.shape
        parts: dict[str, Tensor] = {}
        if self.low_rank:
            z = self.c_attn_a(x).view(B, T, len(self.low_rank), self.n_head, self.rank)  # x A_h
            y = torch.einsum("btnhr,nhrd->btnhd", z, self.c_attn_b)  # (x A_h) B_h
            if self.c_attn_b_bias is not None:
                y = y + self.c_attn_b_bias
            parts.update(zip(self.low_rank, y.unbind(2), strict=True))
        if self.dense:
            y = self.c_attn(x).view(B, T, len(self.dense), self.n_head, self.d_head)
            parts.update(zip(self.dense, y.unbind(2), strict=True))
        return parts["q"], parts["k"], parts["v"]

    def project(self, y: Tensor) -> Tensor:
        """The heads' outputs y [B, T, H, d_h] → [B, T, d]."""
        if self.o_a is not None:
            y = torch.einsum("bthd,hdr->bthr", y, self.o_a)  # o_h A_o,h; c_proj then applies every B_o,h
        return self.resid_dropout(self.c_proj(y.flatten(2)))

    def forward(self, x: Tensor) -> Tensor:
        return attend(self, x, CAUSAL)  # core's causal SDPA over qkv(x), then project
