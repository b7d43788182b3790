"""The benchmarks' core: the report shape, ratios, a worker subprocess's round trip, the system loop's
skipping, the printed table, and the replayed training loop (no timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmlab.core.bench.benchmark import System, make_report, print_results, ran, ratio, run_systems
from lmlab.core.bench.machine import gemm_peak_flops, machine, peak_rss_mb, reset_peak_rss, rss_mb
from lmlab.core.bench.worker import replay_training, run_worker
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.training.loop import TrainConfig, make_accelerator

WORKER = '''
from lmlab.core.kernel.errors import LmlabError

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


def test_system_loop_skips_what_cannot_run_here_and_runs_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "benchworker.py").write_text(WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    systems = {"ours": System(), "anchor": System(requires="lmlab_no_such_package", install="pip install 'it[x]'"),
               "bf16": System(precondition=lambda: "no native bf16"), "fp32": System(precondition=lambda: None)}
    results = run_systems("demo", systems, ["anchor", "ours", "bf16"], "benchworker:run", {"n": 2}, threads=1,
                          detail="tiny")
    assert list(results) == ["anchor", "ours", "bf16"]
    assert results["anchor"] == {"skipped": "lmlab_no_such_package is not installed (pip install 'it[x]')"}
    assert results["bf16"] == {"skipped": "no native bf16"}
    assert results["ours"]["doubled"] == 4 and "other_processes_cpu_share" in results["ours"]
    assert systems["fp32"].skip_reason() is None
    log = capsys.readouterr().err
    assert "bench demo: anchor skipped: lmlab_no_such_package is not installed (pip install 'it[x]')" in log
    assert "bench demo: running ours (tiny)" in log and "running anchor" not in log


def test_table_shows_skipped_systems_and_targets_not_judged_here(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    report = make_report("demo", {}, {}, {"ours": {"speed": 2.0}, "anchor": {"skipped": "needs 'a[b]'"}},
                         {"speed_ours_vs_anchor": 0.9, "memory_ours_vs_anchor": 0.9})
    targets = {"speed_ours_vs_anchor": (">=", 1.5), "memory_ours_vs_anchor": ("<=", 0.85)}
    print_results(report, "demo", ("speed",), lambda r: (f"{r['speed']:.1f}",), targets,
                  lines=["a closing line"], not_judged={"memory_ours_vs_anchor": "judged at size 8"})
    out = capsys.readouterr().out
    assert "skipped: needs 'a[b]'" in out and "2.0" in out
    assert "speed_ours_vs_anchor: 0.900  (target >= 1.5: missed)" in out
    assert "memory_ours_vs_anchor: 0.900  (target <= 0.85: not judged here: judged at size 8)" in out
    assert out.rstrip().endswith("a closing line")


class _Regression:
    """A TrainTask fitting y = 2x with one weight."""

    def __init__(self) -> None:
        self.x = torch.linspace(-1, 1, 8).unsqueeze(1)

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return [list(range(i, i + global_batch)) for i in range(0, 8, global_batch)]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"x": self.x[indices]}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"n": float(len(batch["x"]))}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, Any]]:
        return ((model(batch["x"]) - 2 * batch["x"]) ** 2).sum() / totals["n"], {}


@pytest.mark.parametrize("precollated", [False, True])
def test_replay_runs_the_shared_loop_over_exactly_the_given_batches(precollated: bool) -> None:
    task, order = _Regression(), [[0, 1], [6, 7], [0, 1]]
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    seen: list[int] = []
    cfg = TrainConfig(max_steps=len(order) + 1, batch_size=2, lr=0.1, schedule="constant", save_every=10**9)
    collated = [task.collate(ix) for ix in order] if precollated else None
    records, peak = replay_training(model, task, order, cfg, make_accelerator("fp32"), peak=lambda: 123.0,
                                    collated=collated, before_step=seen.append)
    assert seen == [0, 1, 2, 3] and peak == 123.0
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["step_time"] > 0 for r in records)
    x = task.x[[0, 1]]  # the first step's loss is the freshly seeded model's on the first batch
    torch.manual_seed(0)
    fresh = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        assert records[0]["loss"] == pytest.approx(float(((fresh(x) - 2 * x) ** 2).mean()), rel=1e-6)


def test_gemm_peak_is_a_positive_rate() -> None:
    assert gemm_peak_flops(64, 32, 16, torch.float32, runs=3) > 0
