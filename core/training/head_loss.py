"""The training loss of a language model straight from its final hidden states, without the [B, T, V] logits.

`F.cross_entropy` on the logits keeps them for the backward pass, and under autocast it first copies them to
float32: two copies of the largest tensor of a step. `head_cross_entropy` runs the LM head and the loss together
in chunks (core.training.logprobs), each chunk's logits in float32 only while it is used, recomputed in the backward
pass. The value and the gradients are those of the cross-entropy of the logits.
"""

from __future__ import annotations

from torch import Tensor

from lmlab.core.training.logprobs import token_logprobs


def head_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, reduction: str = "mean",
                       bias: Tensor | None = None) -> Tensor:
    """Cross-entropy of `targets` [...] (-1: ignored) under the LM head `weight` [V, C] (and `bias`) applied to
    `hidden` [..., C]; reduction "mean" or "sum" over the targets, or "none" (the targets' shape, 0 where
    ignored). In float32; no host sync (ignored positions are computed and zeroed, not filtered out)."""
    wanted = targets.flatten()
    keep = wanted != -1
    loss = -token_logprobs(hidden.flatten(0, -2), weight, wanted.clamp(min=0), bias) * keep
    if reduction == "none":
        return loss.view_as(targets)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()
