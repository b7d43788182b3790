"""core/bench.py: the DESIGN.md report shape, ratios, and a worker subprocess's round trip (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.core.bench import machine, make_report, peak_rss_mb, ran, ratio, reset_peak_rss, rss_mb, run_worker
from lmlab.core.errors import LmlabError

WORKER = '''
from lmlab.core.errors import LmlabError

def run(system, settings):
    if system == "broken":
        raise LmlabError("no such system", hint="pick another")
    return {"system": system, "doubled": settings["n"] * 2}
'''


def test_report_has_the_design_shape_and_drops_uncomputable_ratios() -> None:
    results = {"ours": {"examples_per_s": 3.0}, "anchor": {"skipped": "not installed"}}
    ratios = {"examples_per_s_ours_vs_anchor": ratio(3.0, None), "peak_mem_increase_ours_vs_anchor": ratio(1, 4)}
    report = make_report("demo", machine(2, ("torch",)), {"batch_size": 4}, results, ratios)
    assert list(report) == ["benchmark", "machine", "settings", "results", "ratios"]
    assert report["benchmark"] == "demo" and report["settings"] == {"batch_size": 4}
    assert {"cpu", "cores", "torch", "threads", "python", "platform"} <= set(report["machine"])
    assert report["ratios"] == {"peak_mem_increase_ours_vs_anchor": 0.25}
    assert ran(results["ours"]) and not ran(results["anchor"]) and not ran(None)
    assert ratio(1.0, 0.0) is None
    json.dumps(report)  # what --json prints


def test_worker_round_trip_and_errors(tmp_path: Path) -> None:
    (tmp_path / "benchworker.py").write_text(WORKER)
    env = {"PYTHONPATH": str(tmp_path)}
    assert run_worker("benchworker:run", "ours", {"n": 21}, threads=1, env=env) == {"system": "ours", "doubled": 42}
    with pytest.raises(LmlabError, match="no such system") as caught:
        run_worker("benchworker:run", "broken", {"n": 1}, threads=1, env=env)
    assert caught.value.hint == "pick another"
    with pytest.raises(LmlabError, match="benchmark process failed"):
        run_worker("benchworker:missing", "ours", {"n": 1}, threads=1, env=env)


def test_memory_readings_are_positive() -> None:
    assert rss_mb() > 0 and peak_rss_mb() >= rss_mb() * 0.9
    if reset_peak_rss():
        assert peak_rss_mb() <= rss_mb() + 64  # the peak restarts from about the current RSS
