"""`lmlab bench orpo` end to end at toy size: the report's shape, its device, and the same tokens, weights and first
loss as TRL."""

from __future__ import annotations

import json
from importlib import util

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_tiny_bench_orpo_reports_both_systems_on_the_same_tokens() -> None:
    result = run_cli("bench", "orpo", "--rows", "4", "--batch-size", "2", "--max-steps", "1", "--max-length", "64",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == ["benchmark", "machine", "settings", "results", "ratios"]
    ours, trl = report["results"]["lmlab"], report["results"]["trl"]
    assert ours["examples_per_s"] > 0 and ours["peak_memory_mb"] > 0 and "data" not in ours
    assert report["settings"]["data"]["truncated_rows"] == 0
    # Both systems ran where the settings say (the suite pins the CPU), and the memory figures say what they read.
    assert report["settings"]["device"] == "cpu" and report["settings"]["memory_source"] == "peak RSS"
    if util.find_spec("trl") is None:
        assert trl == {"skipped": "trl is not installed (pip install trl)"} and not report["ratios"]
    else:
        assert trl["same_tokens_as_lmlab"] and trl["same_init_as_lmlab"] and trl["loss_abs_diff_vs_lmlab"] < 1e-5
        assert report["ratios"]["examples_per_s_lmlab_vs_trl"] > 0


def test_bench_orpo_on_a_missing_gpu_is_refused_with_a_hint() -> None:
    result = run_cli("bench", "orpo", "--device", "cuda", "--json")
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr, result.stderr
