"""Per-token log-probabilities without materialising the [B, T, V] logits: only the positions a loss needs (no
padding, no ignored prompt tokens) go through the LM head, in chunks, and the backward pass recomputes each chunk's
logits instead of keeping them, so peak memory is one chunk of logits rather than the whole batch (a route TRL never
merged). Written by hand because the fused kernels that do this (Liger, Apple's cut-cross-entropy) need Triton/GPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

CHUNK_ELEMENTS = 1 << 23  # logits elements per chunk: 32 MiB in float32


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64, which gradcheck needs)."""
    return x if x.dtype == torch.float64 else x.float()


def _chunk(vocab: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab)


class _TokenLogprobs(torch.autograd.Function):
    """log p(target | hidden) = (h·W_t + b_t) − logsumexp(h·Wᵀ + b), chunked, in float32."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        n, step = hidden.shape[0], _chunk(weight.shape[0])
        acc = _upcast(hidden[:0]).dtype
        out = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        for s in range(0, n, step):
            logits = _upcast(nn.functional.linear(hidden[s:s + step], weight, bias))
            lse[s:s + step] = torch.logsumexp(logits, dim=-1)
            out[s:s + step] = logits.gather(1, targets[s:s + step, None]).squeeze(1) - lse[s:s + step]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        n, step = hidden.shape[0], _chunk(weight.shape[0])
        d_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros_like(_upcast(weight)) if ctx.needs_input_grad[1] else None
        d_bias = torch.zeros_like(_upcast(bias)) if bias is not None and ctx.needs_input_grad[2] else None
        for s in range(0, n, step):
            h, g = hidden[s:s + step], _upcast(grad[s:s + step])
            logits = _upcast(nn.functional.linear(h, weight, bias))
            # d logp_t / d logits = onehot(t) − softmax(logits)
            d_logits = torch.exp(logits - lse[s:s + step, None]).mul_(-g[:, None])
            d_logits.scatter_add_(1, targets[s:s + step, None], g[:, None])
            d_logits = d_logits.to(hidden.dtype)
            if d_hidden is not None:
                d_hidden[s:s + step] = d_logits @ weight
            if d_weight is not None:
                d_weight.addmm_(_upcast(d_logits).t(), _upcast(h))
            if d_bias is not None:
                d_bias += _upcast(d_logits).sum(0)
        return (d_hidden,
                d_weight.to(weight.dtype) if d_weight is not None else None,
                d_bias.to(bias.dtype) if d_bias is not None else None,
                None)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32 log-probabilities of `targets` [N] given final hidden states [N, H] and an LM head [V, H]."""
    return _TokenLogprobs.apply(hidden, weight, bias, targets)


def plain_head(lm: nn.Module) -> bool:
    """True when logits are exactly lm_head(hidden): no soft-capping or scaling we would skip."""
    config = getattr(lm, "config", None)
    return not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


class TokenLogprobModel(nn.Module):
    """A causal LM whose forward returns log p(targets) at `positions` of the flattened [B*T] batch (`targets[i]` is
    the token predicted at `positions[i]`). Wrapping it, rather than calling the decoder from outside, keeps DDP/FSDP
    gradient sync working."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        if not plain_head(self.lm):
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            picked = logits.reshape(-1, logits.shape[-1])[positions].float()
            return picked.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings()
        picked = hidden.reshape(-1, hidden.shape[-1])[positions]
        return token_logprobs(picked, head.weight, targets, head.bias)


def head_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, reduction: str = "mean",
                       bias: Tensor | None = None) -> Tensor:
    """Cross-entropy of `targets` [...] (-1: ignored) under the LM head `weight` [V, C] (and `bias`) applied to
    `hidden` [..., C]; reduction "mean" or "sum" over the targets, or "none" (the targets' shape, 0 where
    ignored). In float32; no host sync (ignored positions are computed and zeroed, not filtered out). The training
    loss straight from the final hidden states: `F.cross_entropy` on [B, T, V] logits would keep them for the backward
    pass (and under autocast copy them to float32 first), two copies of a step's largest tensor."""
    wanted = targets.flatten()
    keep = wanted != -1
    loss = -token_logprobs(hidden.flatten(0, -2), weight, wanted.clamp(min=0), bias) * keep
    if reduction == "none":
        return loss.view_as(targets)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()
