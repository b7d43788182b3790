"""Two torchrun processes (gloo, CPU, DDP) through `lmlab.core.training.loop.train`, for test_multiprocess_stop.py.

python multiprocess_stop_toy.py OUT ONE
The task's loss is scaled by a `torch.rand` draw, so each process's RNG shapes the trajectory. Three runs of 4 steps
(checkpoints every 2):
  OUT/straight  uninterrupted;
  OUT/stopped   process 1 sends itself SIGTERM during step 3 (process 0 gets no signal), then
  OUT/stopped   resumed from its newest checkpoint with a new model and optimizer, `torch.load` recording its kwargs;
  ONE           a run of the same model that one process checkpointed at step 2 (global batch 4), resumed by the two:
                process 1 finds no RNG state of its own there.
Each process writes what it saw to OUT/rank-<rank>.json: the weights its first step started from, every draw of
each run, the Interrupted error it got (exit code, message) and the `map_location` of every `torch.load` of the
resume; each run's main process writes the returned model to RUN/final.safetensors. One launch for all of it: a
launch costs more than the training.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import save_model
from scale_out_toy import NextToken, TinyLM

from lmlab.core.files.runs import RunDir
from lmlab.core.kernel.errors import Interrupted
from lmlab.core.training.loop import TrainConfig, train

SIGNAL_STEP = 3


class NoisyNextToken(NextToken):
    """NextToken whose loss is scaled by 1 + U(0, 1) drawn from torch's global RNG; `signal_step`: process 1
    sends itself SIGTERM in that step's loss."""

    def __init__(self, rank: int, signal_step: int | None = None) -> None:
        super().__init__(crash_after=None)
        self.rank, self.signal_step = rank, signal_step
        self.draws: list[float] = []
        self.initial: list[float] | None = None

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.initial is None:
            self.initial = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
        draw = torch.rand(())
        self.draws.append(draw.item())
        if self.rank == 1 and len(self.draws) == self.signal_step:
            os.kill(os.getpid(), signal.SIGTERM)
        loss, metrics = super().loss(model, batch, totals)
        return loss * (1 + draw), metrics


def run(accelerator: Accelerator, path: Path, task: NoisyNextToken, *, resume: bool = False) -> None:
    """Train `path` for 4 steps (batch 2 per process) from TinyLM's seeded init, or resume it."""
    accelerator.free_memory()  # drop the previous run's prepared model: a trainer prepares one
    torch.manual_seed(1)  # the same initial weights on every process
    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, schedule="cosine", save_every=2, keep_checkpoints=3)
    result = train(TinyLM(), task, cfg, RunDir(path, main=accelerator.is_main_process), accelerator, resume=resume)
    if accelerator.is_main_process:
        save_model(result["model"], str(path / "final.safetensors"))
    accelerator.wait_for_everyone()


def recording_loads(loads: list[dict[str, str]]) -> Any:
    """torch.load that notes each file it reads and the map_location it was given."""
    load = torch.load

    def recorded(path: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append({"file": Path(path).name, "map_location": str(kwargs.get("map_location"))})
        return load(path, *args, **kwargs)

    return recorded


def main() -> None:
    out, one = Path(sys.argv[1]), Path(sys.argv[2])
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    seen: dict[str, Any] = {"draws": {}}
    straight = NoisyNextToken(rank)
    run(accelerator, out / "straight", straight)
    seen["initial"], seen["draws"]["straight"] = straight.initial, straight.draws

    stopped = NoisyNextToken(rank, signal_step=SIGNAL_STEP)
    try:
        run(accelerator, out / "stopped", stopped)
    except Interrupted as exc:
        seen["interrupted"] = {"exit_code": exc.exit_code, "message": str(exc)}
    seen["draws"]["stopped"] = stopped.draws

    resumed, loads, load = NoisyNextToken(rank), [], torch.load
    torch.load = recording_loads(loads)
    run(accelerator, out / "stopped", resumed, resume=True)
    torch.load = load
    seen["draws"]["resumed"], seen["loads"] = resumed.draws, loads

    widened = NoisyNextToken(rank)
    run(accelerator, one, widened, resume=True)
    seen["draws"]["widened"] = widened.draws
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
