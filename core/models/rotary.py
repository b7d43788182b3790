"""Rotary position embedding (Su et al. 2021) in GPT-NeoX's partial form: only the first `fraction` of each head's
dimensions rotate (Pythia: 25 %), base 10 000, the two halves of the rotated part paired (NeoX's rotate_half).

For a pair (x₁, x₂) at position m and frequency θ_i = base^(−2i/d_rot):
    (x₁, x₂) ↦ (x₁·cos mθ_i − x₂·sin mθ_i,  x₂·cos mθ_i + x₁·sin mθ_i)
so q·k depends on the positions only through their difference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
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
