"""ECE and reliability bins against hand computations, and temperature scaling recovering a known temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmlab.core.retrieval.calibration import (
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
)

PROBS = [0.05, 0.15, 0.25, 0.85, 0.95, 1.0]
LABELS = [0, 0, 1, 1, 0, 1]


def test_equal_width_ece_is_the_count_weighted_gap_per_bin() -> None:
    # bins of width 0.1: {.05}: 0 vs .05, {.15}: 0 vs .15, {.25}: 1 vs .25, {.85}: 1 vs .85, {.95, 1.0}: .5 vs .975
    expected = (0.05 + 0.15 + 0.75 + 0.15) / 6 + 2 / 6 * 0.475
    assert math.isclose(expected_calibration_error(PROBS, LABELS, bins=10), expected, abs_tol=1e-12)
    found = reliability_bins(PROBS, LABELS, bins=10)
    assert [b.count for b in found] == [1, 1, 1, 1, 2] and found[-1].upper == 1.0
    assert math.isclose(found[-1].confidence, 0.975) and found[-1].accuracy == 0.5


def test_equal_mass_bins_hold_equal_counts() -> None:
    # two bins of three: {.05, .15, .25} 1/3 vs .15, {.85, .95, 1.0} 2/3 vs .9333
    expected = 0.5 * abs(1 / 3 - 0.15) + 0.5 * abs(2 / 3 - 2.8 / 3)
    assert math.isclose(expected_calibration_error(PROBS, LABELS, bins=2, strategy="mass"), expected, abs_tol=1e-12)
    assert [b.count for b in reliability_bins(PROBS, LABELS, bins=4, strategy="mass")] == [2, 2, 1, 1]


def test_calibrated_and_degenerate_cases() -> None:
    assert expected_calibration_error([0.5] * 4, [0, 1, 1, 0]) == 0.0
    assert expected_calibration_error([], []) == 0.0
    assert expected_calibration_error([1.0, 1.0], [0, 0]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="strategy"):
        reliability_bins([0.5], [1], strategy="quantile")


def test_temperature_scaling_recovers_the_overconfidence_factor(tmp_path) -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, 20000)
    labels = rng.random(20000) < 1 / (1 + np.exp(-true_logits))
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert 2.7 < temperature < 3.3
    before = expected_calibration_error(1 / (1 + np.exp(-overconfident)), labels)
    after = expected_calibration_error(1 / (1 + np.exp(-overconfident / temperature)), labels)
    assert after < before / 3
    out = plot_reliability({"raw": reliability_bins(1 / (1 + np.exp(-overconfident)), labels),
                            "scaled": reliability_bins(1 / (1 + np.exp(-overconfident / temperature)), labels)},
                           tmp_path / "reliability.png", "test")
    assert out.stat().st_size > 0
