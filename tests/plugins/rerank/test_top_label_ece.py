"""The top-label ECE (confidence max(p, 1 − p) of the predicted label against whether it is right) against a hand
computation, beside the positive-class ECE, and both in what `retrieve calibrate` reports."""

from __future__ import annotations

import math

import numpy as np

from lmlab.core.retrieval.calibration import expected_calibration_error, top_label_calibration_error
from lmlab.plugins.rerank.calibrate import quality

PROBS = [0.9, 0.8, 0.3, 0.6, 0.5]
LABELS = [1, 0, 0, 1, 0]
# predicted labels 1, 1, 0, 1, 1 (p = 0.5 counts as relevant): right, wrong, right, right, wrong
# confidences max(p, 1 − p): 0.9, 0.8, 0.7, 0.6, 0.5


def test_top_label_ece_with_one_prediction_per_bin() -> None:
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6) + abs(0 - 0.5)) / 5  # 0.42
    assert math.isclose(top_label_calibration_error(PROBS, LABELS, bins=10), expected, abs_tol=1e-12)


def test_top_label_ece_differs_from_the_positive_class_ece() -> None:
    # two bins: every confidence lies in [0.5, 1]: mean confidence 0.7, 3 of 5 right
    assert math.isclose(top_label_calibration_error(PROBS, LABELS, bins=2), abs(0.6 - 0.7), abs_tol=1e-12)
    # positive class: {0.3}: 0 relevant vs 0.3; {0.9, 0.8, 0.6, 0.5}: 2/4 relevant vs mean 0.7
    positive = 1 / 5 * 0.3 + 4 / 5 * abs(0.5 - 0.7)  # 0.22
    assert math.isclose(expected_calibration_error(PROBS, LABELS, bins=2), positive, abs_tol=1e-12)
    # equal mass, 5 bins of one: the same gaps as one prediction per bin
    assert math.isclose(top_label_calibration_error(PROBS, LABELS, bins=5, strategy="mass"), 0.42, abs_tol=1e-12)


def test_calibrate_reports_both_eces() -> None:
    found = quality(np.array(PROBS), np.array(LABELS, dtype=np.float64), 2)
    assert {"ece_width", "ece_mass", "brier", "nll", "accuracy", "top_label_ece_width",
            "top_label_ece_mass"} <= set(found)
    assert math.isclose(found["top_label_ece_width"], 0.1, abs_tol=1e-12)
    assert math.isclose(found["ece_width"], 0.22, abs_tol=1e-12)
