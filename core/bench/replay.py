"""Time a method's real training step: the shared loop (`core.training.loop.train`) over a fixed batch order.

A benchmark worker hands its TrainTask and the batches every system must see; the loop runs them exactly as a
`train-*` command would (collation, forward/backward, clipping, the loop's AdamW and schedule) and logs each
step's `step_time` to metrics.jsonl, which is what the benchmark reports.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmlab.core.bench.memory import peak_rss_mb


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
        self.step = 0
        self.peak_mb = 0.0

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
    """Run the shared training loop (cfg.grad_accum 1, one process) over exactly `order`, one batch per step
    (`collated`: the batches already collated, so the loop's collation only hands them out), in a throwaway run
    directory; returns the per-step metrics (metrics.jsonl: loss, step_time, …) and the peak memory (MB) read
    after the last step."""
    from lmlab.core.files.runs import RunDir
    from lmlab.core.training.loop import train

    replay = _Replay(task, order, peak, collated, before_step)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-run-") as tmp:
        run = RunDir(Path(tmp))
        try:
            train(model, replay, cfg, run, accelerator)
        except _Finished:
            pass
        records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    return records, replay.peak_mb
