"""A tiny language model trained through `lmlab.core.training.loop.train`, for tests/core/test_scale_out.py.

python scale_out_toy.py MODE OUT --batch-size B [--stop]
MODE is "single" (one process), "ddp" or "fsdp" (under `torchrun`, gloo on the CPU). Trains 4 steps into
OUT/straight; with --stop also into OUT/stopped, where every process fails during step 3 (after checkpoint 2, with
step 3's update already applied, as a crash would leave it), and then resumes OUT/stopped from its checkpoint with
a new model and optimizer. Each run's main process writes the model that `train` returns to
RUN/final.safetensors. All in one process per rank: a launch costs more than the training.

accelerate turns FSDP on only for GPU-like devices (a CPU run stays DDP even with ACCELERATE_USE_FSDP=1), so for
"fsdp" the script sets accelerate's state to FSDP itself, as accelerate's own tests do
(test_utils/scripts/test_distributed_data_loop.py); `accelerator.prepare` then shards the model with FSDP2's
`fully_shard` as it does on GPUs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType
from safetensors.torch import save_model

from lmlab.core.files.runs import RunDir
from lmlab.core.training.loop import TrainConfig, train

VOCAB, WIDTH, EXAMPLES, LENGTH = 32, 16, 48, 6


class TinyLM(torch.nn.Module):
    """Embedding → linear → tanh → output layer tied to the embedding (ties are what FSDP checkpoints get wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.mix = torch.nn.Linear(WIDTH, WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


class Crash(Exception):
    """Raised on every process during the step after `crash_after`."""


class NextToken:
    """Next-token prediction on fixed random sequences; the loss is summed over tokens and divided by the global
    token count, as the loop's TrainTask asks."""

    def __init__(self, crash_after: int | None) -> None:
        self.data = torch.randint(0, VOCAB, (EXAMPLES, LENGTH), generator=torch.Generator().manual_seed(0))
        self.crash_after = crash_after

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        order = torch.randperm(EXAMPLES, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [order[i:i + global_batch] for i in range(0, EXAMPLES - global_batch + 1, global_batch)]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"tokens": self.data[indices]}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"targets": batch["tokens"][:, 1:].numel()}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = batch["tokens"]
        logits = model(tokens[:, :-1])
        summed = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1),
                                                   reduction="sum")
        return summed / totals["targets"], {}

    def after_step(self, model: torch.nn.Module, step: int, no_sync: object) -> dict[str, float]:
        if self.crash_after is not None and step == self.crash_after + 1:
            raise Crash(step)
        return {}


def accelerator_for(mode: str) -> Accelerator:
    if mode != "fsdp":
        return Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    return accelerator


def run(accelerator: Accelerator, path: Path, batch_size: int, *, crash_after: int | None = None,
        resume: bool = False) -> None:
    accelerator.free_memory()  # drop the previous run's prepared model: a trainer prepares one
    torch.manual_seed(1)  # the same initial weights on every process
    task = NextToken(crash_after)
    cfg = TrainConfig(max_steps=4, batch_size=batch_size, lr=1e-2, schedule="cosine", save_every=2,
                      keep_checkpoints=3)
    try:
        result = train(TinyLM(), task, cfg, RunDir(path, main=accelerator.is_main_process), accelerator,
                       resume=resume)
    except Crash:
        return
    if accelerator.is_main_process:
        save_model(result["model"], str(path / "final.safetensors"))
    accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "ddp", "fsdp"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--stop", action="store_true")
    args = parser.parse_args()
    accelerator = accelerator_for(args.mode)
    run(accelerator, args.out / "straight", args.batch_size)
    if args.stop:
        run(accelerator, args.out / "stopped", args.batch_size, crash_after=2)
        run(accelerator, args.out / "stopped", args.batch_size, resume=True)


if __name__ == "__main__":
    main()
