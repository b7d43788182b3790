"""TEV, token embedding variability (Chung et al. 2024, METHODS §3), and the measurement it stands in for.

TEV_i = std_j(E_ij), the spread of token i's embedding row over the d embedding dimensions; we report
μ_TEV = mean_i TEV_i and σ_TEV = std_i TEV_i. Lower and flatter means more stable training. Both stds are
population stds (divide by d, resp. |V|): they describe the matrix itself, not a sample drawn from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.core.errors import LmlabError


@torch.no_grad()
def tev(embedding: Tensor) -> dict[str, float]:
    """μ_TEV and σ_TEV of an embedding matrix E [|V|, d]: one pass over E, no forward or backward pass."""
    per_token = embedding.detach().float().std(dim=1, correction=0)  # TEV_i = std_j(E_ij)
    return {"tev_mean": per_token.mean().item(), "tev_std": per_token.std(correction=0).item()}


@torch.no_grad()
def embedding_grad_variance(grads: list[Tensor]) -> float:
    """Variance across micro-batches of the embedding gradient (sample variance, M-1), averaged over elements.

    The expensive quantity TEV proxies: it needs M ≥ 2 backward passes whose gradients are kept apart.
    """
    if len(grads) < 2:
        raise LmlabError(f"gradient variance needs at least 2 micro-batches, got {len(grads)}.",
                         hint="measure it with a batch split into 2 or more micro-batches")
    mean = sum(g.float() for g in grads) / len(grads)
    return (sum((g.float() - mean).square() for g in grads) / (len(grads) - 1)).mean().item()
