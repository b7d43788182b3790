"""Transformer pieces every architecture shares: multi-head attention, the MLP, the GPT-2 and GPT-NeoX layers, a
stack of them, rotary positions, and `attend`: the one attention computation that applies rotary positions,
padding masks and a KV cache for any registered attention that also splits into
    qkv(x) -> (q, k, v), each [B, T, H, d_h]      its projections
    project(y) -> [B, T, C]                         its output projection, y [B, T, H, d_h]
(MHA and MLRA do; one without them still trains, and generates by recomputing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.core.kernel.errors import ModelError
from lmlab.core.models.architectures import AttentionConfig, AttentionSpec
from lmlab.core.models.kv_cache import KVCache


@dataclass
class Step:
    """What every layer's attention needs for one forward over a stack (default: plain causal attention).
    positions [B, T] or [1, T]: rotary positions (a stack with a Rotary fills `rotation`, their cos and sin, once
    for all its layers); mask [B, 1, T, S] (True: may attend) or None with `is_causal`; cache: the stack's KVCache."""

    positions: Tensor | None = None
    mask: Tensor | None = None
    is_causal: bool = True
    cache: KVCache | None = None
    rotation: tuple[Tensor, Tensor] | None = None


def padded_causal_mask(real: Tensor) -> Tensor:
    """[B, 1, T, T] for an uncached forward over sequences with padding (`real` [B, T], False: padding): causal,
    padding never a key, and every query its own key (so no row is all -inf)."""
    T = real.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
    return ((causal & real[:, None, :]) | torch.eye(T, dtype=torch.bool, device=real.device))[:, None]


def supports_cache(attn: nn.Module) -> bool:
    return callable(getattr(attn, "qkv", None)) and callable(getattr(attn, "project", None))


def attend(attn: nn.Module, x: Tensor, step: Step, layer: int = 0, rotary: Rotary | None = None) -> Tensor:
    """Scaled dot-product attention softmax(q·kᵀ/√d_h + mask)·v over `attn`'s projections of x, with rotary
    positions, the step's mask and layer `layer` of its KV cache."""
    q, k, v = (t.transpose(1, 2) for t in attn.qkv(x))  # [B, H, T, d_h]
    if rotary is not None:
        cos, sin = step.rotation if step.rotation is not None else rotary.angles(step.positions, q.dtype)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
    if step.cache is not None:
        k, v = step.cache.update(layer, k, v)
    dropout = getattr(attn, "dropout", 0.0) if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, dropout_p=dropout,
                                       is_causal=step.is_causal and step.mask is None)
    return attn.project(y.transpose(1, 2))


CAUSAL = Step()
INIT_STD = 0.02


def _normal(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_normal(model: nn.Module) -> None:
    """nanoGPT's init: every Linear and Embedding weight N(0, 0.02), every Linear bias 0 (in `apply`'s order)."""
    model.apply(_normal)


def scale_residual(model: nn.Module, n_layer: int) -> None:
    """GPT-2's residual scaling: every residual projection (`*c_proj.weight`) N(0, 0.02/√(2·n_layer))."""
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * n_layer))


class CausalSelfAttention(nn.Module):
    """Multi-head attention: one fused q, k, v projection, causal SDPA, output projection `c_proj`."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        return self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)

    def project(self, y: Tensor) -> Tensor:
        return self.resid_dropout(self.c_proj(y.flatten(2)))

    def forward(self, x: Tensor) -> Tensor:
        return attend(self, x, CAUSAL)


MHA_SPEC = AttentionSpec("mha", "multi-head attention (GPT-2)", build=CausalSelfAttention)


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Layer(nn.Module):
    """One transformer layer around a registered attention. Pre-LN GPT-2 (sequential):
        x + attn(LN₁(x)), then + mlp(LN₂(·));
    GPT-NeoX (`parallel`, Pythia): x + attn(LN₁(x)) + mlp(LN₂(x))."""

    def __init__(self, cfg: AttentionConfig, attention: AttentionSpec, *, parallel: bool = False,
                 rotary: Rotary | None = None) -> None:
        super().__init__()
        self.parallel, self.rotary = parallel, rotary
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = attention.build(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.bias, cfg.dropout)
        if rotary is not None and not supports_cache(self.attn):
            raise ModelError(f"attention '{attention.name}' has no qkv/project split, which rotary positions need.",
                             hint="use --attn mha or mlra (see lmlab.core.models.transformer for the protocol)")

    def mix(self, x: Tensor, step: Step | None, layer: int) -> Tensor:
        if step is None or (step is CAUSAL and self.rotary is None):
            return self.attn(x)
        if not supports_cache(self.attn):
            raise ModelError(f"attention {type(self.attn).__name__} has no qkv/project split for masks and caches.")
        return attend(self.attn, x, step, layer, self.rotary)

    def forward(self, x: Tensor, step: Step | None = None, layer: int = 0) -> Tensor:
        if self.parallel:
            return x + self.mix(self.ln_1(x), step, layer) + self.mlp(self.ln_2(x))
        x = x + self.mix(self.ln_1(x), step, layer)
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    """`n_layer` GPT-NeoX layers (parallel residual, partial rotary positions) and a final LayerNorm."""

    def __init__(self, cfg: AttentionConfig, attention: AttentionSpec, rotary_fraction: float = 0.25) -> None:
        super().__init__()
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, rotary_fraction)
        self.h = nn.ModuleList(Layer(cfg, attention, parallel=True, rotary=self.rotary) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        step.rotation = self.rotary.angles(step.positions, x.dtype)
        for i, layer in enumerate(self.h):
            x = layer(x, step, i)
        return self.ln_f(x)

    def new_cache(self, batch: int, capacity: int, like: Tensor) -> KVCache:
        attn = self.h[0].attn
        return KVCache(len(self.h), batch, attn.n_head, self.ln_f.normalized_shape[0] // attn.n_head, capacity,
                       dtype=like.dtype, device=like.device)

    def run(self, x: Tensor, positions: Tensor, cache: KVCache, real: Tensor | None = None) -> Tensor:
        """One cached forward of x [B, T, C] at `positions`; `real` [B, T] marks the non-padding positions."""
        mask, is_causal = cache.begin(x.size(1), real)
        out = self(x, Step(positions, mask, is_causal, cache))
        cache.end()
        return out


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) in GPT-NeoX's partial form: only the first `fraction` of each
    head's dimensions rotate (Pythia: 25 %), base 10 000, the two halves of the rotated part paired (rotate_half).
    For a pair (x₁, x₂) at position m and frequency θ_i = base^(−2i/d_rot):
        (x₁, x₂) ↦ (x₁·cos mθ_i − x₂·sin mθ_i,  x₂·cos mθ_i + x₁·sin mθ_i)
    so q·k depends on the positions only through their difference."""

    def __init__(self, head_dim: int, fraction: float = 0.25, base: float = 10_000.0) -> None:
        super().__init__()
        self.dim = max(2, int(head_dim * fraction) // 2 * 2)
        inv_freq = 1.0 / base ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def angles(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(cos, sin), each [B, 1, T, d_rot], for positions [B, T] (or [1, T]: the same for every sequence):
        computed once per forward and shared by every layer."""
        angles = positions[:, None, :, None].to(self.inv_freq.dtype) * self.inv_freq  # [B, 1, T, d_rot/2]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x [B, H, T, d_h] with its first d_rot dimensions rotated by `angles`' (cos, sin)."""
        rot, rest = x[..., :self.dim], x[..., self.dim:]
        half = self.dim // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated * sin, rest), dim=-1)
