"""`train-orpo --gradient-checkpointing` recomputes the decoder layers in the backward and changes nothing
else: the model and task `OrpoTrainer.setup` builds give the same first-step loss and gradients with it and
without it, with all weights trained and with --lora."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.core.training.loop import make_accelerator
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.train import OrpoTrainer


def first_step(preferences: Path, tmp_path: Path, **flags: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """The first batch's loss and gradients, and how often the first decoder layer's MLP ran to give them."""
    trainer = OrpoTrainer(OrpoOptions(data=str(preferences), max_length=64, batch_size=4, output_dir=tmp_path,
                                      **flags))
    trainer.check()
    torch.manual_seed(0)  # the LoRA adapters start the same
    model, task = trainer.setup(make_accelerator("fp32"))
    model.train()
    mlp, calls = model.lm.get_decoder().layers[0].mlp, []
    forward = mlp.forward
    mlp.forward = lambda *args: calls.append(1) or forward(*args)  # hooks do not fire in the recompute
    batch = task.collate(task.batches(0, 4)[0])
    loss, _ = task.loss(model, batch, task.counts(batch))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, len(calls)


@pytest.mark.parametrize("lora", [False, True])
def test_same_first_step_loss_and_gradients_with_gradient_checkpointing(preferences: Path, tmp_path: Path,
                                                                        lora: bool) -> None:
    loss, grads, calls = first_step(preferences, tmp_path, lora=lora, gradient_checkpointing=False)
    loss_gc, grads_gc, calls_gc = first_step(preferences, tmp_path, lora=lora, gradient_checkpointing=True)
    assert (calls, calls_gc) == (1, 2)  # the checkpointed layer runs again in the backward
    torch.testing.assert_close(loss_gc, loss, rtol=0, atol=1e-6)
    assert grads_gc.keys() == grads.keys() and grads
    assert all(("lora_" in name) == lora for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_gc[name], grad, rtol=1e-5, atol=1e-8, msg=name)
