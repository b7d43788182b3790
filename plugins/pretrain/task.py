"""Language-model pre-training as a TrainTask: next-token windows of a memory-mapped token stream (core's
TokenWindows), TEV every `tev_every` steps, the expensive embedding-gradient variance every `grad_var_every`
steps, and validation loss / perplexity every `eval_every` steps.

An architecture that trains on something other than plain windows gives its model `prepare_batch(batch,
generator)` (lmlab.core.models.architectures): training batches pass through it with a generator seeded by the batch's
window indices (so a resumed run sees the same batches), validation batches without one. Losses are averaged
over the targets that are not -1, so an architecture that predicts fewer tokens (block: not block 0) is
averaged over what it predicts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from lmlab.core.commands.devices import model_device
from lmlab.core.training.text_corpus import TokenWindows
from lmlab.plugins.pretrain.tev import embedding_grad_variance, tev


class PretrainTask:
    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, *, block_size: int, seed: int,
                 tev_every: int = 1, grad_var_every: int = 0, grad_var_batches: int = 4, eval_every: int = 0,
                 eval_batches: int = 8, batch_size: int = 8,
                 prepare: Callable[[dict[str, torch.Tensor], torch.Generator | None], dict[str, torch.Tensor]]
                 | None = None) -> None:
        self.train, self.val = TokenWindows(train_tokens, block_size), TokenWindows(val_tokens, block_size)
        self.seed, self.batch_size = seed, batch_size
        self.tev_every, self.grad_var_every, self.grad_var_batches = tev_every, grad_var_every, grad_var_batches
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.prepare = prepare

    def _batch(self, windows: TokenWindows, indices: list[int], train: bool) -> dict[str, torch.Tensor]:
        batch = windows.batch(indices)
        if self.prepare is None:
            return batch
        generator = torch.Generator().manual_seed(hash((self.seed, *indices)) & 0xFFFF_FFFF) if train else None
        return self.prepare(batch, generator)

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return self.train.epoch_batches(epoch, global_batch, self.seed)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self._batch(self.train, indices, train=True)

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"tokens": float((batch["targets"] >= 0).sum())}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, loss_sum = model(batch["input_ids"], batch["targets"], reduction="sum", return_logits=False)
        return loss_sum / totals["tokens"], {}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean token loss and perplexity over evenly spaced validation windows."""
        picks = self.val.evenly_spaced(self.eval_batches * self.batch_size)
        device = model_device(model)
        was_training = model.training
        model.eval()
        summed, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for start in range(0, len(picks), self.batch_size):
            batch = self._batch(self.val, picks[start:start + self.batch_size], train=False)
            _, loss_sum = model(batch["input_ids"].to(device), batch["targets"].to(device), reduction="sum")
            summed += loss_sum.detach()
            count += int((batch["targets"] >= 0).sum())  # CPU targets: no device read
        model.train(was_training)
        total = float(summed)  # the one read back from the device
        return {"val_loss": total / count, "val_ppl": math.exp(min(total / count, 50.0))}

    def grad_variance(self, model: torch.nn.Module, step: int, no_sync: Any) -> float:
        """Variance across micro-batches of the token-embedding gradient (what TEV is a cheap proxy for); every
        process measures the same micro-batches, so all report the same figure."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + step)
        embedding = model.get_input_embeddings().weight
        device = embedding.device
        grads = []
        for _ in range(self.grad_var_batches):
            batch = self._batch(self.train, self.train.sample(self.batch_size, generator), train=True)
            if isinstance(embedding, DTensor):
                grads.append(self._sharded_grad(model, embedding, batch))
                continue
            with no_sync():
                _, loss = model(batch["input_ids"].to(device), batch["targets"].to(device))
                grad, = torch.autograd.grad(loss, embedding)  # not accumulated into .grad
            grads.append(grad.detach().float())
        return embedding_grad_variance(grads)

    @staticmethod
    def _sharded_grad(model: torch.nn.Module, embedding: DTensor, batch: dict[str, torch.Tensor]) -> DTensor:
        """One micro-batch's embedding gradient under FSDP2, as this process's shard: autograd sees the gathered
        weight, not the sharded parameter, so a synced backward reduce-scatters the gradient into the shards'
        `.grad` (the mean over processes of the same micro-batch: its gradient), which is then taken and cleared.
        The loop calls `after_step` after `zero_grad`, so no training gradient is in `.grad` to disturb."""
        _, loss = model(batch["input_ids"].to(embedding.device), batch["targets"].to(embedding.device))
        loss.backward()
        grad = embedding.grad.detach().float().clone()
        model.zero_grad(set_to_none=True)
        return grad

    def after_step(self, model: torch.nn.Module, step: int, no_sync: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.tev_every and step % self.tev_every == 0:
            metrics.update(tev(model.get_input_embeddings().weight))
        if self.grad_var_every and step % self.grad_var_every == 0:
            metrics["emb_grad_var"] = self.grad_variance(model, step, no_sync)
        if self.eval_every and step % self.eval_every == 0:
            metrics.update(self.evaluate(model))
        return metrics
