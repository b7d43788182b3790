"""`train-orpo --eval-data`: the ORPO loss and TRL's ORPO eval metrics on held-out pairs, every --eval-every
optimizer steps and after the last one.

The names are TRL's (`ORPOTrainer.get_batch_loss_metrics` with the "eval_" prefix): eval_loss, eval_nll_loss,
eval_log_odds_ratio, eval_log_odds_chosen, eval_rewards/{chosen,rejected,accuracies,margins} and
eval_logps/{chosen,rejected}, where a response's reward is β × its mean token log-prob. Each is a mean over
all held-out pairs (the NLL over all their chosen tokens), not TRL's mean of per-batch means.

Several processes: each scores its share of the batches and the sums are reduced (every term is already
divided by the held-out set's global count, as in training). Every process runs the same number of forward
passes, one it does not count where the batches do not divide evenly, because a sharded (FSDP) model gathers
its weights in every forward, on every process at once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from lmlab.plugins.orpo.data import PreferenceExample
from lmlab.plugins.orpo.task import OrpoTask


def eval_name(metric: str) -> str:
    """TRL's eval name of a training metric ("nll" is its "nll_loss")."""
    return "eval_nll_loss" if metric == "nll" else f"eval_{metric}"


class HeldOutPairs:
    """The held-out pairs in length-sorted batches of `batch_size`, this process's share of them, and the global
    normalisers; `score(model)` gives the eval metrics of the model as it is."""

    def __init__(self, task: OrpoTask, *, batch_size: int, device: torch.device, world: int, rank: int,
                 reduce: Callable[[torch.Tensor], torch.Tensor],
                 autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        order = sorted(range(len(task.examples)), key=lambda i: task.examples[i].length)
        batches = [task.collate(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]
        self.totals: dict[str, float] = {}
        for batch in batches:
            for key, value in task.counts(batch).items():
                self.totals[key] = self.totals.get(key, 0.0) + value
        rounds = -(-len(batches) // world)
        slots = [k * world + rank for k in range(rounds)]
        self.mine = [(batches[s], True) if s < len(batches) else (batches[0], False) for s in slots]
        self.task, self.device, self.reduce, self.autocast = task, device, reduce, autocast
        self.last: dict[str, float] = {}

    def score(self, model: torch.nn.Module) -> dict[str, float]:
        """The eval metrics, in eval mode and without gradients; the model goes back to the mode it was in."""
        was_training = model.training
        model.eval()
        names: list[str] = []
        sums = torch.zeros((), device=self.device)
        with torch.no_grad(), self.autocast():
            for batch, counted in self.mine:
                loss, metrics = self.task.loss(model, {k: v.to(self.device) for k, v in batch.items()},
                                               self.totals)
                names = ["eval_loss", *(eval_name(k) for k in metrics)]
                values = torch.stack([loss.float(), *(v.float() for v in metrics.values())])
                sums = sums + (values if counted else torch.zeros_like(values))
        model.train(was_training)
        self.last = dict(zip(names, self.reduce(sums).tolist(), strict=True))
        return self.last


class EvaluatedOrpoTask(OrpoTask):
    """OrpoTask that scores `held_out` after every `every`-th optimizer step (0: never) and after `last_step`."""

    def __init__(self, examples: list[PreferenceExample], *, held_out: HeldOutPairs, every: int, last_step: int,
                 **task: Any) -> None:
        super().__init__(examples, **task)
        self.held_out, self.every, self.last_step = held_out, every, last_step

    def after_step(self, model: torch.nn.Module, step: int, no_sync: Any) -> dict[str, float]:
        if step == self.last_step or (self.every and step % self.every == 0):
            return self.held_out.score(model)
        return {}
