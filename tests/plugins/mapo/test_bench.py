"""`lmlab bench mapo`'s parts: the step breakdown's optimizer hooks and the table's verdict on the memory target,
which is judged at --unet-scale 8 only (the end-to-end run is in test_cli.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from lmlab.core.bench.benchmark import make_report
from lmlab.plugins.mapo.bench import BENCHMARK
from lmlab.plugins.mapo.step_parts import PARTS, StepParts


def test_step_parts_time_the_adamw_step_and_what_precedes_it() -> None:
    parts = StepParts()
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    hooks = parts.optimizer_hooks()
    try:
        parts.steps.append({"loss": 0.5, "frozen_encoders": 0.1, "reference_forward": 0.2,
                            "loss_end": time.perf_counter()})
        weight.sum().backward()
        torch.optim.SGD([weight], lr=0.1).step()  # another optimizer: not the loop's AdamW, not timed
        assert "optimizer" not in parts.steps[-1]
        optimizer.step()
    finally:
        for hook in hooks:
            hook.remove()
    step = parts.steps[-1]
    assert step["backward_and_clip"] > 0 and step["optimizer"] > 0
    breakdown = parts.breakdown(step, 2.0)
    assert list(breakdown) == list(PARTS)
    assert breakdown["policy_forward"] == pytest.approx(0.2) and sum(breakdown.values()) == pytest.approx(2.0)


def _report(unet_scale: int) -> dict[str, Any]:
    result = {"step_time_s": 0.1, "pairs_per_s": 40.0, "peak_memory_mb": 600.0, "peak_memory_increase_mb": 200.0,
              "peak_tensor_mb": 125.0, "step_breakdown_s": dict.fromkeys(PARTS, 0.01)}
    settings = {"model": "tiny-sdxl", "unet_scale": unet_scale, "unet_params": 1_028_708, "batch_size": 4,
                "resolution": 64, "timed_steps": 8, "threads": 2, "device": "cpu", "memory_source": "peak RSS",
                "memory_target_judged_this_run": unet_scale >= 8}
    return make_report("mapo", {}, settings, {"mapo": result, "dpo": result},
                       {"step_time_mapo_vs_dpo": 0.75, "peak_mem_increase_mapo_vs_dpo": 0.9,
                        "peak_tensor_mapo_vs_dpo": 0.89})


@pytest.mark.parametrize("unet_scale", [1, 8])
def test_memory_verdict_only_at_unet_scale_8(unet_scale: int, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    BENCHMARK.show(_report(unet_scale))
    out = capsys.readouterr().out
    assert "step_time_mapo_vs_dpo: 0.750  (target <= 0.8: met)" in out
    for key in ("peak_mem_increase_mapo_vs_dpo", "peak_tensor_mapo_vs_dpo"):
        line = next(line for line in out.splitlines() if line.startswith(key))
        assert f"target <= {BENCHMARK.targets({})[key][1]}" in line
        if unet_scale == 8:
            assert line.endswith("missed)")
        else:
            assert "not judged here: judged at --unet-scale 8" in line and "this run is ×1" in line
