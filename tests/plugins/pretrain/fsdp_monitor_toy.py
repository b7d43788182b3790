"""Pre-training's monitoring (TEV, embedding-gradient variance) through `lmlab.core.training.loop.train` under FSDP2,
for tests/plugins/pretrain/test_fsdp_monitoring.py.

torchrun --nproc_per_node N fsdp_monitor_toy.py ARCH OUT
Trains a tiny ARCH model for 2 steps (its run directory: OUT's folder/run), measuring TEV and the gradient variance
after each step on the sharded model, then measures both again on the gathered model `train` returns (the weights
after step 2, whole, unsharded) and writes the two sets of figures per process to OUT-RANK.json. accelerate turns
FSDP on only for GPU-like devices, so the accelerator's state is set to FSDP as tests/core/scale_out_toy.py does.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType

from lmlab.core.files.runs import RunDir
from lmlab.core.models.architectures import build_model
from lmlab.core.training.loop import TrainConfig, train
from lmlab.plugins.pretrain.train import PretrainTask, tev


def main() -> None:
    arch, out = sys.argv[1], Path(sys.argv[2])
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    torch.manual_seed(0)  # the same initial weights on every process
    model, _ = build_model(arch, "mha", vocab_size=67, block_size=16, n_layer=2, n_head=2, n_embd=32)
    tokens = np.random.default_rng(0).integers(0, 67, 3000).astype(np.uint16)
    task = PretrainTask(tokens, tokens[:600], block_size=16, seed=3, grad_var_every=1, batch_size=4,
                        prepare=getattr(model, "prepare_batch", None))
    cfg = TrainConfig(max_steps=2, batch_size=2, lr=1e-2, schedule="constant", save_every=100)
    result = train(model, task, cfg, RunDir(out.parent / "run", main=accelerator.is_main_process), accelerator)
    whole = result["model"]
    sharded = {k: result["last"][k] for k in ("tev_mean", "tev_std", "emb_grad_var")}
    gathered = {**tev(whole.get_input_embeddings().weight),
                "emb_grad_var": task.grad_variance(whole, 2, contextlib.nullcontext)}
    Path(f"{out}-{accelerator.process_index}.json").write_text(json.dumps({
        "sharded_param": type(model.get_input_embeddings().weight).__name__,
        "during_training": sharded, "gathered": gathered}))


if __name__ == "__main__":
    main()
