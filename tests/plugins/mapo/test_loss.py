"""MaPO and Diffusion-DPO losses equal the MaPO paper written plainly, on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.plugins.mapo.task import denoising_error, dpo_terms, mapo_terms, snr_weight


def plain_mapo(pred_w, pred_l, target_w, target_l, beta=0.1, s=0.5, T=1000):  # noqa: ANN001, ANN201
    losses = []
    for pw, pl, tw, tl in zip(pred_w, pred_l, target_w, target_l, strict=True):
        mse_w = ((pw - tw) ** 2).mean().item()
        mse_l = ((pl - tl) ** 2).mean().item()
        f_w = s * mse_w / (math.exp(s * mse_w) - 1)
        f_l = s * mse_l / (math.exp(s * mse_l) - 1)
        margin = -math.log1p(math.exp(-T * (f_w - f_l)))  # log sigmoid
        losses.append((mse_w, margin))
    return sum(m for m, _ in losses) / len(losses) - beta * sum(g for _, g in losses) / len(losses)


def plain_dpo(mse_w, mse_l, ref_w, ref_l, beta=5000.0):  # noqa: ANN001, ANN201
    terms = []
    for a, b, c, d in zip(mse_w, mse_l, ref_w, ref_l, strict=True):
        x = -0.5 * beta * ((a - b) - (c - d))
        terms.append(math.log1p(math.exp(-x)))  # -log sigmoid(x)
    return sum(terms) / len(terms)


def test_mapo_matches_plain_formula() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64) * 0.7
    error = denoising_error(pred, target)
    per_pair, terms = mapo_terms(error[:3].double(), error[3:].double(), beta=0.1, snr_value=0.5, num_timesteps=1000)
    expected = plain_mapo(pred[:3], pred[3:], target[:3], target[3:])
    assert per_pair.mean().item() == pytest.approx(expected, rel=1e-5)
    assert set(terms) >= {"mse_w", "mse_l", "f_w", "f_l", "margin"}


def test_dpo_matches_plain_formula() -> None:
    mse_w, mse_l = torch.tensor([0.50, 0.71, 0.90]), torch.tensor([0.52, 0.70, 0.95])
    ref_w, ref_l = torch.tensor([0.51, 0.70, 0.93]), torch.tensor([0.51, 0.72, 0.94])
    per_pair, terms = dpo_terms(mse_w, mse_l, ref_w, ref_l, beta_dpo=5000.0)
    expected = plain_dpo(mse_w.tolist(), mse_l.tolist(), ref_w.tolist(), ref_l.tolist())
    assert per_pair.mean().item() == pytest.approx(expected, rel=1e-5)
    assert terms["implicit_acc"].tolist() == [1.0, 0.0, 1.0]


def test_snr_weight_is_decreasing_and_one_at_zero() -> None:
    x = torch.tensor([0.0, 0.01, 0.1, 1.0, 10.0])
    f = snr_weight(x, 0.5)
    assert f[0] == 1.0 and torch.isfinite(f).all()
    assert (f[1:] < f[:-1]).all()


def test_mapo_rewards_a_lower_winner_error() -> None:
    lower, higher = torch.tensor([0.1]), torch.tensor([0.2])
    good, _ = mapo_terms(lower, higher, beta=0.1, snr_value=0.5, num_timesteps=1000)
    bad, _ = mapo_terms(higher, lower, beta=0.1, snr_value=0.5, num_timesteps=1000)
    assert good.item() < bad.item()
