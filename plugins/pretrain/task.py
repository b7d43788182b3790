"""Language-model pre-training as a TrainTask: fixed windows of a memory-mapped token stream, TEV every
`tev_every` steps, the expensive embedding-gradient variance every `grad_var_every` steps, and validation
loss / perplexity every `eval_every` steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lmlab.plugins.pretrain.tev import embedding_grad_variance, tev


class PretrainTask:
    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, *, block_size: int, seed: int,
                 tev_every: int = 1, grad_var_every: int = 0, grad_var_batches: int = 4, eval_every: int = 0,
                 eval_batches: int = 8, batch_size: int = 8) -> None:
        self.train, self.val = train_tokens, val_tokens
        self.block_size, self.seed, self.batch_size = block_size, seed, batch_size
        self.tev_every, self.grad_var_every, self.grad_var_batches = tev_every, grad_var_every, grad_var_batches
        self.eval_every, self.eval_batches = eval_every, eval_batches

    def windows(self, tokens: np.ndarray) -> int:
        return (len(tokens) - 1) // self.block_size

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        n = self.windows(self.train)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        order += [order[i % n] for i in range((-n) % global_batch)]
        return [order[i:i + global_batch] for i in range(0, len(order), global_batch)]

    def _window_batch(self, tokens: np.ndarray, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = np.stack([tokens[i * self.block_size:i * self.block_size + self.block_size + 1] for i in indices])
        rows = torch.from_numpy(rows.astype(np.int64))
        return {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self._window_batch(self.train, indices)

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"tokens": float(batch["targets"].numel())}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, loss_sum = model(batch["input_ids"], batch["targets"], reduction="sum", return_logits=False)
        return loss_sum / totals["tokens"], {}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean token loss and perplexity over evenly spaced validation windows."""
        n = self.windows(self.val)
        picks = np.linspace(0, n - 1, num=min(n, self.eval_batches * self.batch_size)).astype(int).tolist()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(picks), self.batch_size):
            batch = self._window_batch(self.val, picks[start:start + self.batch_size])
            _, loss_sum = model(batch["input_ids"].to(device), batch["targets"].to(device), reduction="sum")
            total, count = total + float(loss_sum), count + batch["targets"].numel()
        model.train(was_training)
        return {"val_loss": total / count, "val_ppl": math.exp(min(total / count, 50.0))}

    def grad_variance(self, model: torch.nn.Module, step: int, no_sync: Any) -> float:
        """Variance across micro-batches of the token-embedding gradient (what TEV is a cheap proxy for)."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + step)
        n = self.windows(self.train)
        embedding = model.get_input_embeddings().weight
        device = embedding.device
        grads = []
        with no_sync():
            for _ in range(self.grad_var_batches):
                picks = torch.randint(0, n, (self.batch_size,), generator=generator).tolist()
                batch = self._window_batch(self.train, picks)
                _, loss = model(batch["input_ids"].to(device), batch["targets"].to(device))
                grad, = torch.autograd.grad(loss, embedding)  # not accumulated into .grad
                grads.append(grad.detach().float())
        return embedding_grad_variance(grads)

    def after_step(self, model: torch.nn.Module, step: int, no_sync: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.tev_every and step % self.tev_every == 0:
            metrics.update(tev(model.get_input_embeddings().weight))
        if self.grad_var_every and step % self.grad_var_every == 0:
            metrics["emb_grad_var"] = self.grad_variance(model, step, no_sync)
        if self.eval_every and step % self.eval_every == 0:
            metrics.update(self.evaluate(model))
        return metrics
