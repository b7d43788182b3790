"""Calibration of binary predictions such as a reranker's P(relevant): expected calibration error, reliability
diagrams and temperature scaling (Guo et al., ICML 2017). Per bin, confidence is the mean prediction and accuracy the
fraction of positives; bins are equal width over [0, 1] (the last one closed) or equal mass (sizes differing by at most
one: Nixon et al. 2019's adaptive ECE)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

STRATEGIES = ("width", "mass")


class Bin(NamedTuple):
    lower: float
    upper: float
    count: int
    confidence: float  # mean predicted probability in the bin
    accuracy: float  # fraction of positive labels in the bin


def _arrays(probs: Sequence[float], labels: Sequence[int | bool]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"{p.shape} probabilities for {y.shape} labels")
    if len(p) and (np.any(p < 0) or np.any(p > 1) or not np.all(np.isfinite(p))):
        raise ValueError("probabilities must lie in [0, 1]")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("labels must be 0 or 1")
    return p, y


def reliability_bins(probs: Sequence[float], labels: Sequence[int | bool], bins: int = 10,
                     strategy: str = "width") -> list[Bin]:
    """The non-empty bins of the reliability diagram, lowest first."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}' (use one of: {', '.join(STRATEGIES)})")
    p, y = _arrays(probs, labels)
    if strategy == "width":
        index = np.minimum((p * bins).astype(int), bins - 1)  # [k/B, (k+1)/B), with 1.0 in the last bin
        groups = [np.flatnonzero(index == k) for k in range(bins)]
        edges = [(k / bins, (k + 1) / bins) for k in range(bins)]
    else:
        groups = np.array_split(np.argsort(p, kind="stable"), min(bins, len(p)) or 1)
        edges = [(float(p[g].min()), float(p[g].max())) if len(g) else (0.0, 0.0) for g in groups]
    return [Bin(lo, hi, len(g), float(p[g].mean()), float(y[g].mean()))
            for g, (lo, hi) in zip(groups, edges, strict=True) if len(g)]


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int | bool], bins: int = 10,
                               strategy: str = "width") -> float:
    """ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| over the bins of `strategy`; 0 for no predictions."""
    found = reliability_bins(probs, labels, bins, strategy)
    total = sum(b.count for b in found)
    return math.fsum(b.count / total * abs(b.accuracy - b.confidence) for b in found) if total else 0.0


def top_label_calibration_error(probs: Sequence[float], labels: Sequence[int | bool], bins: int = 10,
                                strategy: str = "width") -> float:
    """The top-label ECE: the ECE of the predicted label's confidence max(p, 1 − p) against whether that label is
    right ((p ≥ 0.5) = label), where `expected_calibration_error` is the positive class's (p against the label)."""
    p, y = _arrays(probs, labels)
    return expected_calibration_error(np.maximum(p, 1.0 - p), ((p >= 0.5) == (y == 1)).astype(int), bins, strategy)


def risk_adjusted(probs: np.ndarray, std: np.ndarray, risk: float) -> np.ndarray:
    """P(relevant) moved toward 1/2 by κ·std without crossing it: the top label's confidence becomes its lower bound
    max(p, 1 − p) − κ·std (as the risk-aware score P − κ·std ranks), the predicted label unchanged."""
    shrunk = np.maximum(np.abs(probs - 0.5) - risk * std, 0.0)
    return 0.5 + np.sign(probs - 0.5) * shrunk


def fit_temperature(logits: Sequence[float] | np.ndarray, labels: Sequence[int | bool], *, low: float = 0.05,
                    high: float = 20.0, steps: int = 80) -> float:
    """The temperature T minimising the mean binary cross-entropy of sigmoid(logit / T) on a dev split, by a
    golden-section search over log T (the NLL is unimodal in T for a fixed set of logits). Logits of shape
    [S, N] (S ensemble members or dropout passes) are scaled alike and their probabilities averaged first."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        if s.ndim == 1:
            return float(np.mean(np.logaddexp(0.0, s) - y * s))  # −[y log σ(s) + (1 − y) log(1 − σ(s))]
        p = np.clip(np.mean(1.0 / (1.0 + np.exp(-s)), axis=0), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(steps):
        if nll(c) < nll(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return math.exp((a + b) / 2)


def plot_reliability(curves: Mapping[str, Sequence[Bin]], out: Path, title: str) -> Path:
    """Reliability diagrams side by side, one panel per named model, with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, found) in zip(axes[0], curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.bar([(b.lower + b.upper) / 2 for b in found], [b.accuracy for b in found],
               width=[max(b.upper - b.lower, 0.02) for b in found], alpha=0.6, edgecolor="black", linewidth=0.5)
        ax.plot([b.confidence for b in found], [b.accuracy for b in found], marker="o", markersize=3)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted probability", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("fraction relevant", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
