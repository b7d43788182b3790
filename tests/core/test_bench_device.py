"""Every bench measures on one device: the settings name it and the memory source, the workers see that device only,
the clock waits for a GPU's queued work, and the GEMM peak is measured where the systems ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.core.bench.benchmark import device_settings
from lmlab.core.bench.machine import gemm_peak_flops
from lmlab.core.bench.worker import clock, device_env, median_seconds, read_peak, run_worker, start_peak, worker_device
from lmlab.core.kernel.errors import LmlabError

WORKER = '''
import os

def run(system, settings):
    return {"visible": os.environ["CUDA_VISIBLE_DEVICES"]}
'''


def test_settings_name_the_device_and_the_memory_source() -> None:
    assert device_settings("cpu") == {"device": "cpu", "memory_source": "peak RSS"}


@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_here_is_refused_with_a_hint(spec: str) -> None:
    with pytest.raises(LmlabError, match="no CUDA GPU") as caught:
        device_settings(spec)
    assert "--device cpu" in caught.value.hint


def test_a_bench_does_not_run_on_meta() -> None:
    with pytest.raises(LmlabError, match="the CPU or a CUDA GPU"):
        device_settings("meta")


def test_a_worker_sees_only_the_bench_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "visibleworker.py").write_text(WORKER)
    env = {"PYTHONPATH": str(tmp_path)}
    assert run_worker("visibleworker:run", "ours", {"device": "cpu"}, threads=1, env=env) == {"visible": ""}
    assert worker_device({"device": "cpu"}) == torch.device("cpu") == worker_device({})
    assert device_env("cpu") == {"CUDA_VISIBLE_DEVICES": "", "LMLAB_DEVICE": "cpu"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_env("cuda:1 (NVIDIA H100 80GB HBM3)") == {"CUDA_VISIBLE_DEVICES": "5", "LMLAB_DEVICE": "cuda"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_env("cuda:1 (NVIDIA H100 80GB HBM3)") == {"CUDA_VISIBLE_DEVICES": "1", "LMLAB_DEVICE": "cuda"}


def test_the_clock_waits_for_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    clock(torch.device("cpu"))
    assert waited == []
    clock(torch.device("cuda"))
    seconds, out = median_seconds(lambda: 7, repeats=2, device=torch.device("cuda"))
    assert out == 7 and seconds >= 0 and waited == [torch.device("cuda")] * 5  # 1 + 2 timed calls, 2 readings each


def test_peak_memory_on_the_cpu_is_the_rss() -> None:
    now, _ = start_peak(torch.device("cpu"))
    assert now > 0 and read_peak(torch.device("cpu")) >= now * 0.9


def test_gemm_peak_runs_its_matmuls_on_the_given_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gemm_peak_flops(64, 32, 16, torch.float32, runs=2, device="cpu") > 0
    devices: set[torch.device] = set()
    mm = torch.mm

    def recording(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        devices.update((a.device, b.device, out.device))
        return mm(a, b, out=out)

    monkeypatch.setattr(torch, "mm", recording)
    gemm_peak_flops(8, 8, 8, torch.float32, runs=1, min_seconds=0.0, device="meta")
    assert devices == {torch.device("meta")}
