"""The top-label ECE (confidence max(p, 1 − p) of the predicted label against whether it is right) against a hand
computation, beside the positive-class ECE, and both in what `retrieve calibrate` reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmlab.core.retrieval.calibration import expected_calibration_error, risk_adjusted, top_label_calibration_error
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


def test_the_risk_aware_confidence_is_the_top_labels_lower_bound() -> None:
    """p moved toward 1/2 by κ·std, never across it: max(p, 1 − p) − κ·std, the predicted label kept."""
    probs, std = np.array(PROBS), np.array([0.1, 0.2, 0.05, 0.3, 0.1])
    adjusted = risk_adjusted(probs, std, 1.0)
    assert np.allclose(adjusted, [0.8, 0.6, 0.35, 0.5, 0.5])
    assert np.array_equal(risk_adjusted(probs, std, 0.0), probs)
    # overconfident wrong predictions (0.8 for a 0, 0.9 right) lose confidence: the top-label gap shrinks
    assert top_label_calibration_error(adjusted, LABELS, bins=10) < top_label_calibration_error(PROBS, LABELS, bins=10)


def test_calibrate_judges_the_risk_aware_confidence(tmp_path, capsys) -> None:
    """`retrieve calibrate --risk 1` on a cross-encoder sampled by MC dropout: the ECE of risk_adjusted(mean, std)."""
    import json

    from lmlab.cli.app import main
    from tests.plugins.rerank.conftest import tiny_encoder

    rows = [{"query": "which metal is liquid", "context": "Mercury. A liquid metal.", "label": 1},
            {"query": "which metal is liquid", "context": "Violin. A string instrument.", "label": 0},
            {"query": "bowed instrument", "context": "Cello. A bowed string instrument.", "label": 1},
            {"query": "bowed instrument", "context": "Glacier. Moving ice.", "label": 0}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = tiny_encoder(tmp_path / "encoder", dropout=0.3)
    try:
        main(["retrieve", "calibrate", "--model", str(encoder), "--data", str(data), "--variant", "mc-dropout",
              "--variant", "plain", "--mc-passes", "4", "--risk", "1", "--bins", "2", "-o", str(tmp_path / "run"),
              "--json"])
    except SystemExit as exit_:
        assert exit_.code == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert "risk_aware" not in results["plain"]  # one pass has no spread to be wary of
    risk = results["mc-dropout"]["risk_aware"]
    assert results["mc-dropout"]["mean_uncertainty"] > 0
    import torch

    from lmlab.core.retrieval.rerankers import resolve_reranker

    spec, folder = resolve_reranker(str(encoder), None)
    reranker = spec.open(folder, {"variant": "mc-dropout", "mc_passes": 4, "device": "cpu"})
    samples = torch.sigmoid(reranker.logits([(r["query"], r["context"]) for r in rows]).double())
    expected = quality(risk_adjusted(samples.mean(0).numpy(), samples.std(0, unbiased=False).numpy(), 1.0),
                       np.array([r["label"] for r in rows], dtype=np.float64), 2)
    assert risk == pytest.approx({"risk": 1.0, **expected}, abs=1e-6)
