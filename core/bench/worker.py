"""One benchmark system per subprocess (so that its peak memory is its own), and how a worker measures. Core never
imports a plugin: `run_worker` runs the plugin's `"module:function"` in a fresh interpreter, which sees only the
device its settings name (`device_env`: on the CPU no GPU at all, so no library in it can pick one by itself)."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.core.bench.machine import BUSY_SHARE, cpu_seconds, other_cpu_share, peak_rss_mb, reset_peak_rss, rss_mb
from lmlab.core.commands.devices import peak_memory_mb, resolve_device, synchronize
from lmlab.core.kernel.console import log, set_quiet
from lmlab.core.kernel.errors import LmlabError

if TYPE_CHECKING:  # torch is imported where a worker measures: the BM25 workers never load it
    import torch

#: Environment of every worker: quiet, offline, the parent's thread count (OMP_NUM_THREADS added per run).
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error"}


def run_worker(entry: str, system: str, settings: dict[str, Any], *, threads: int,
               env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """The result of `entry` ("package.module:function", called as function(system, settings) -> JSON-able dict) in
    a fresh interpreter with `threads` OpenMP threads. A LmlabError raised there comes back as the same error; a
    crash becomes a LmlabError quoting the last lines of the worker's output."""
    code = "from lmlab.core.bench.worker import worker_main; worker_main()"
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **WORKER_ENV,
                **device_env(settings.get("device", "cpu")), **(env or {})}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        out, log_path = Path(tmp) / "result.json", Path(tmp) / "worker.log"
        with log_path.open("w") as log_file:
            proc = subprocess.run([sys.executable, "-c", code, entry, system, json.dumps(settings), str(out)],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=full_env, check=False)
        result = json.loads(out.read_text()) if out.exists() else None
        if result and "error" in result:
            raise LmlabError(result["error"], hint=result.get("hint"))
        if proc.returncode != 0 or result is None:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise LmlabError(f"The {system} benchmark process failed (exit code {proc.returncode}): {tail}",
                             hint=retry_hint or "rerun with LMLAB_DEBUG=1 for the worker's trace")
    return result


def run_measured(entry: str, system: str, settings: dict[str, Any], *, threads: int,
                 env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """`run_worker`, plus the CPU share other processes took meanwhile (warned about above `BUSY_SHARE`)."""
    before = cpu_seconds()
    result = run_worker(entry, system, settings, threads=threads, env=env, retry_hint=retry_hint)
    other = other_cpu_share(before, cpu_seconds(), threads)
    result["other_processes_cpu_share"] = other
    if other is not None and other > BUSY_SHARE:
        log(f"[yellow]warning: other processes used {other:.0%} of the CPU during the {system} run; they slow "
            "the systems unevenly, so rerun on a quiet machine before trusting the ratios[/yellow]")
    return result


def device_env(described: str) -> dict[str, str]:
    """The environment of a process that must run on `described` (`core.commands.devices.describe`'s words: "cpu" or
    "cuda:N (name)") and nowhere else: `CUDA_VISIBLE_DEVICES` none on the CPU, the parent's GPU N otherwise; and
    `LMLAB_DEVICE` (every lmlab command's `--device` when not given) that device as the process sees it."""
    spec = described.partition(" ")[0]
    if not spec.startswith("cuda"):
        return {"CUDA_VISIBLE_DEVICES": "", "LMLAB_DEVICE": "cpu"}
    index = int(spec.partition(":")[2] or 0)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[index] if index < len(visible) else str(index), "LMLAB_DEVICE": "cuda"}


def worker_device(settings: dict[str, Any]) -> torch.device:
    """The device a worker runs its system on: the CPU, or the one GPU `device_env` left it (`cuda`)."""
    return resolve_device("cuda" if settings.get("device", "cpu").startswith("cuda") else "cpu")


def clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device's queued work is done (a GPU runs asynchronously)."""
    synchronize(device)
    return time.perf_counter()


def memory_mb(device: torch.device) -> float:
    """Memory in use now: tensors allocated on a GPU (`torch.cuda.memory_allocated`), the RSS on the CPU."""
    if device.type == "cuda":
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    return rss_mb()


def start_peak(device: torch.device) -> tuple[float, bool]:
    """Start the measured region: (memory in use now, whether the peak was reset here; on the CPU that needs
    Linux ≥ 4.0, elsewhere the peak stays the process's)."""
    if device.type == "cuda":
        import torch

        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return memory_mb(device), True
    return memory_mb(device), reset_peak_rss()


def read_peak(device: torch.device) -> float:
    """The peak memory (MiB) since `start_peak` (or since the worker started), from `settings["memory_source"]`."""
    synchronize(device)
    return peak_memory_mb(device)[0]


def worker_main() -> None:
    """Entry point of a worker process: argv = ["module:function", system, settings JSON, result path]."""
    entry, system, settings, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    module, _, name = entry.partition(":")
    function: Callable[[str, dict[str, Any]], dict[str, Any]] = getattr(importlib.import_module(module), name)
    try:
        result = function(system, settings)
    except LmlabError as exc:
        out.write_text(json.dumps({"error": exc.message, "hint": exc.hint}))
        sys.exit(2)
    out.write_text(json.dumps(result))


def tensors_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """A fingerprint of named tensors, so a report can say two systems started from the same weights and data."""
    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def worker_setup(settings: dict[str, Any]) -> torch.device:
    """A worker's preamble: quiet logs, the run's torch thread count, and the device it runs on."""
    import torch

    set_quiet(True)
    torch.set_num_threads(settings["threads"])
    return worker_device(settings)


def seeded_batches(n_rows: int, batch_size: int, n_steps: int, seed: int) -> list[list[int]]:
    """Each step's row indices, the same for every system: seeded batches, reshuffled after each pass over the rows."""
    rng = random.Random(seed + 1)
    stream: list[int] = []
    while len(stream) < n_steps * batch_size:
        order = list(range(n_rows))
        rng.shuffle(order)
        stream += order
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(n_steps)]


def trainer_step_timer(device: torch.device, steps: int) -> Any:
    """A transformers `TrainerCallback` timing each step of an anchor's HF Trainer on `device`'s clock (`.times`), and
    reading the peak memory after the `steps`-th step (`.peak_mb`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tick = self.peak_mb = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.tick = clock(device)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(clock(device) - self.tick)
            if len(self.times) == steps:
                self.peak_mb = read_peak(device)

    return StepTimer()


def ranking_figures(rankings: list[list[str]], queries: list[Any], ks: tuple[int, ...]) -> dict[str, float]:
    """KILT's recall@k for each k and MRR of the ranked page ids each of `queries` was given, rounded to 4 digits."""
    from lmlab.core.retrieval.kilt import retrieval_metrics

    metrics = retrieval_metrics({q.id: ranked for q, ranked in zip(queries, rankings, strict=True)}, queries, ks)
    return {key: round(float(metrics[key]), 4) for key in (*(f"recall@{k}" for k in ks), "mrr")}


class _Finished(Exception):
    """Raised after the last step, so the loop stops before its final save."""


class _Replay:
    """Wraps a TrainTask: replays a fixed batch order (or hands out batches collated beforehand), calls
    `before_step(i)` as step i starts (i = number of steps once they are all done), then records the peak
    memory and ends the run. One collation per step: the loop runs with grad_accum 1 on one process."""

    def __init__(self, task: Any, order: list[list[int]], peak: Callable[[], float],
                 collated: list[Any] | None, before_step: Callable[[int], None] | None) -> None:
        self.task, self.order, self.peak = task, order, peak
        self.collated, self.before_step = collated, before_step
        self.step, self.peak_mb = 0, 0.0

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return [*self.order, [-1] * global_batch]

    def collate(self, indices: list[int]) -> Any:
        step, self.step = self.step, self.step + 1
        if self.before_step is not None:
            self.before_step(step)
        if indices[0] < 0:
            self.peak_mb = self.peak()
            raise _Finished
        return self.collated[step] if self.collated is not None else self.task.collate(indices)

    def __getattr__(self, name: str) -> Any:  # counts, loss, after_step: the wrapped task's
        return getattr(self.task, name)


def replay_training(model: Any, task: Any, order: list[list[int]], cfg: Any, accelerator: Any, *,
                    peak: Callable[[], float] = peak_rss_mb, collated: list[Any] | None = None,
                    before_step: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], float]:
    """A method's real training step timed: the shared loop (`core.training.loop.train`, grad_accum 1, one process)
    over exactly `order`, one batch per step (`collated`: the batches already collated), in a throwaway run folder;
    the per-step metrics (metrics.jsonl: loss, step_time, …) and the peak memory (MB) read after the last step."""
    from lmlab.core.files.runs import RunDir
    from lmlab.core.training.loop import train

    replay = _Replay(task, order, peak, collated, before_step)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-run-") as tmp:
        run = RunDir(Path(tmp))
        with contextlib.suppress(_Finished):
            train(model, replay, cfg, run, accelerator)
        records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    return records, replay.peak_mb


def replay_steps(model: Any, task: Any, order: list[list[int]], device: torch.device, precision: str = "fp32",
                 **config: Any) -> tuple[list[dict[str, Any]], float]:
    """`replay_training` at a constant lr with no warm-up and no save, in `precision` (`make_accelerator`);
    `config`: the rest of TrainConfig (lr, batch_size, max_grad_norm, seed, …)."""
    from lmlab.core.training.loop import TrainConfig, make_accelerator

    cfg = TrainConfig(max_steps=len(order) + 1, schedule="constant", warmup_steps=0, save_every=10**9, **config)
    return replay_training(model, task, order, cfg, make_accelerator(precision), peak=lambda: read_peak(device))


def memory_figures(after_load: float, peak: float) -> dict[str, float]:
    """A training worker's memory (MiB): in use once the model and data are loaded, the peak since, and the peak's
    increase over it (what training costs: activations, gradients, optimizer state)."""
    return {"memory_after_load_mb": round(after_load, 1), "peak_memory_mb": round(peak, 1),
            "peak_memory_increase_mb": round(round(peak, 1) - round(after_load, 1), 1)}


def first_loss(loss_of: Callable[[], Any], device: torch.device) -> tuple[float, tuple[float, bool]]:
    """A training system's first-batch loss, `loss_of()` without gradients (what the report compares between
    systems), then the measured region started after a garbage collection (`start_peak`)."""
    import torch

    with torch.no_grad():
        loss = float(loss_of())
    gc.collect()
    return loss, start_peak(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call of `fn`, read on `device`'s clock (`clock`: its queued work done first)."""
    start = clock(device)
    out = fn()
    return clock(device) - start, out


def median_seconds(fn: Callable[[], Any], repeats: int = 3, device: torch.device | None = None) -> tuple[float, Any]:
    """Median seconds of `repeats` calls of `fn` after a warm-up call (on `device`'s clock if given), and the last."""
    now = time.perf_counter if device is None else lambda: clock(device)
    out = fn()
    times = []
    for _ in range(repeats):
        start = now()
        out = fn()
        times.append(now() - start)
    return statistics.median(times), out
