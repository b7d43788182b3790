"""ORPO's objective (Hong, Lee, Thorne 2024; the ORPO paper), from per-token log-probabilities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − eᵃ) for a < 0, stable on both sides of −ln 2 (Mächler 2012)."""
    a = a.clamp(max=-1e-7)
    return torch.where(a > -LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_odds_ratio(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """log(odds(y_w|x) / odds(y_l|x)) with odds = p / (1 − p) and log p the mean token log-prob, float32."""
    logp_w, logp_l = logp_w.float(), logp_l.float()
    return (logp_w - logp_l) - (log1mexp(logp_w) - log1mexp(logp_l))


def orpo_objective(token_logp: torch.Tensor, batch: dict[str, torch.Tensor], totals: dict[str, float],
                   beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = NLL(chosen) + λ · mean(−log σ(log odds ratio)), with each term divided by its global count.

    `token_logp` [N] are log p(target) at the positions the collator selected; `seq_id` maps each to one of
    the 2B sequences (chosen first), `completion` marks response tokens, `nll` marks the tokens of the NLL.
    """
    n_seq = batch["n_completion"].shape[0]
    half = n_seq // 2
    completion = batch["completion"]
    seq_sum = torch.zeros(n_seq, dtype=token_logp.dtype, device=token_logp.device)
    # torch.where rather than boolean indexing: a mask index needs its count on the host, a sync per step on a GPU
    seq_sum = seq_sum.index_add(0, batch["seq_id"], torch.where(completion, token_logp, 0.0))
    seq_logp = seq_sum / batch["n_completion"]
    logp_w, logp_l = seq_logp[:half], seq_logp[half:]
    nll_sum = -(token_logp * batch["nll"]).sum()
    log_odds = log_odds_ratio(logp_w, logp_l)
    ratio = F.logsigmoid(log_odds)
    tokens, examples = totals["tokens"], totals["examples"]
    loss = nll_sum / tokens - beta * ratio.sum() / examples
    metrics = {
        "nll": nll_sum.detach() / tokens,
        "log_odds_ratio": ratio.detach().sum() / examples,
        "log_odds_chosen": log_odds.detach().sum() / examples,
        "rewards/chosen": beta * logp_w.detach().sum() / examples,
        "rewards/rejected": beta * logp_l.detach().sum() / examples,
        "rewards/accuracies": (logp_w > logp_l).float().sum() / examples,
        "rewards/margins": beta * (logp_w - logp_l).detach().sum() / examples,
        "logps/chosen": logp_w.detach().sum() / examples,
        "logps/rejected": logp_l.detach().sum() / examples,
    }
    return loss, metrics
