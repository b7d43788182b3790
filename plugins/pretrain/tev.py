"""TEV, token embedding variability (Chung et al. 2024; docs/methods.md#stable-pre-training-and-tev), and the
measurement it stands in for.

TEV_i = std_j(E_ij), the spread of token i's embedding row over the d embedding dimensions; we report
μ_TEV = mean_i TEV_i and σ_TEV = std_i TEV_i. Lower and flatter means more stable training. Both stds are
population stds (divide by d, resp. |V|): they describe the matrix itself, not a sample drawn from it.

Under FSDP2 the embedding (and its gradients) are DTensors holding this process's rows: the statistics are
computed on the shards and reduced over every process (each process gets the whole matrix's figure; a DTensor's
`.item()` would read this process's partial value).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from lmlab.core.kernel.errors import LmlabError


def _value(statistic: Tensor) -> float:
    """A 0-d statistic as a float; a DTensor's is reduced over the processes first (collective)."""
    return (statistic.full_tensor() if isinstance(statistic, DTensor) else statistic).item()


@torch.no_grad()
def tev(embedding: Tensor) -> dict[str, float]:
    """μ_TEV and σ_TEV of an embedding matrix E [|V|, d]: one pass over E, no forward or backward pass."""
    per_token = embedding.detach().float().std(dim=1, correction=0)  # TEV_i = std_j(E_ij)
    return {"tev_mean": _value(per_token.mean()), "tev_std": _value(per_token.std(correction=0))}


@torch.no_grad()
def embedding_grad_variance(grads: list[Tensor]) -> float:
    """Variance across micro-batches of the embedding gradient (sample variance, M-1), averaged over elements.

    The expensive quantity TEV proxies: it needs M ≥ 2 backward passes whose gradients are kept apart.
    """
    if len(grads) < 2:
        raise LmlabError(f"gradient variance needs at least 2 micro-batches, got {len(grads)}.",
                         hint="measure it with a batch split into 2 or more micro-batches")
    mean = sum(g.float() for g in grads) / len(grads)
    return _value((sum((g.float() - mean).square() for g in grads) / (len(grads) - 1)).mean())
