"""`lmlab doctor`: the smoke check runs every command once on the CPU at its smallest size, and says per step its
exit code and peak memory (what a GPU user runs on their machine with --device cuda)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.core.commands.doctor import PEAK_MEMORY_DIR, steps
from tests.conftest import run_cli


@pytest.mark.slow
def test_every_step_passes_on_the_cpu_and_reports_its_peak_memory(tmp_path: Path) -> None:
    done = run_cli("doctor", "--device", "cpu", "--size", "tiny", "-o", str(tmp_path / "doctor"), "--json",
                   timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["device"] == "cpu" and report["failed"] == []
    names = [s["name"] for s in report["steps"]]
    assert names == [s.name for s in steps(tmp_path, "cpu", "tiny")]
    for step in report["steps"]:
        assert step["exit_code"] == 0, step
        assert step["peak_mb"] > 50 and step["memory_source"] == "peak RSS", step
    assert (tmp_path / "doctor" / "orpo" / "summary.json").is_file()
    assert "serve-block: exit 0" in done.stderr


def test_a_failing_step_is_reported_and_the_steps_that_need_it_are_skipped(tmp_path: Path) -> None:
    done = run_cli("doctor", "--device", "cpu", "--size", "tiny", "-o", str(tmp_path), "--json",
                   "--step", "generate", "--step", "retrieve search")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(s["name"], s["exit_code"]) for s in report["steps"]] == [("generate", None), ("retrieve search", None)]
    assert report["steps"][0]["note"] == "skipped: needs pretrain --arch block"


def test_every_lmlab_process_records_its_peak_memory_when_asked(tmp_path: Path) -> None:
    env = {**os.environ, PEAK_MEMORY_DIR: str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "lmlab.cli", "plugins", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert record["rss_peak_mb"] > 10 and "cuda_peak_mb" not in record
