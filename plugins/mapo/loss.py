"""MaPO and Diffusion-DPO objectives on per-sample denoising errors (the MaPO paper).

Both take `mse_w`, `mse_l`: the mean over C, H, W of (model_pred − target)² for the winner and the loser of
each pair, which were noised with the same noise at the same timestep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over every non-batch dimension, in float32."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def snr_weight(x: torch.Tensor, s: float) -> torch.Tensor:
    """f(x) = s·x / (exp(s·x) − 1): decreasing in the error x, f(0) = 1 (MaPO's log-odds surrogate)."""
    sx = s * x
    return torch.where(sx == 0, torch.ones_like(sx), sx / torch.expm1(sx))


def mapo_terms(mse_w: torch.Tensor, mse_l: torch.Tensor, *, beta: float, snr_value: float,
               num_timesteps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair MaPO loss: mse_w − β·log σ(T·(f(mse_w) − f(mse_l))); mean over pairs gives L (docs/methods.md#mapo)."""
    f_w, f_l = snr_weight(mse_w, snr_value), snr_weight(mse_l, snr_value)
    margin = F.logsigmoid(num_timesteps * (f_w - f_l))
    per_pair = mse_w - beta * margin
    return per_pair, {"mse_w": mse_w, "mse_l": mse_l, "f_w": f_w, "f_l": f_l, "margin": margin}


def dpo_terms(mse_w: torch.Tensor, mse_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, *,
              beta_dpo: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair Diffusion-DPO loss: −log σ(−½·β·((mse_w − mse_l) − (ref_w − ref_l)))."""
    inside = -0.5 * beta_dpo * ((mse_w - mse_l) - (ref_w - ref_l))
    per_pair = -F.logsigmoid(inside)
    return per_pair, {"mse_w": mse_w, "mse_l": mse_l, "ref_w": ref_w, "ref_l": ref_l,
                      "implicit_acc": (inside > 0).float()}
