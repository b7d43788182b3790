"""`lmlab bench click`: the report's shape, and the same per-item predictions as lm-evaluation-harness."""

from __future__ import annotations

import json
from importlib import util
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.plugins.click.test_click import write_click


@pytest.mark.slow
def test_bench_click_reports_items_per_s_and_agreement(tmp_path: Path) -> None:
    data = write_click(tmp_path)
    result = run_cli("bench", "click", "--model", "tiny-llama", "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "click" and report["results"]["lmlab"]["items"] == 4
    assert report["results"]["lmlab"]["items_per_s"] > 0
    assert report["settings"]["device"] == "cpu" and report["settings"]["memory_source"] == "peak RSS"
    anchor = report["results"]["lm-eval"]
    if util.find_spec("lm_eval") is None:
        assert "skipped" in anchor and "ratios" in report and not report["ratios"]
    else:
        assert report["settings"]["predictions_agree"] == "4/4"
        assert report["settings"]["max_loglik_gap"] < 1e-3
        assert report["ratios"]["items_per_s_lmlab_vs_lm-eval"] > 0
