"""ORPO as a TrainTask for the shared loop: length-grouped batches, padding-free log-prob selection, and ORPO's
objective (Hong, Lee, Thorne 2024) from the per-token log-probabilities.

`train-orpo --eval-data` scores held-out pairs with the same loss and TRL's eval metrics (its names with "eval_"),
every --eval-every optimizer steps and after the last; each a mean over all held-out pairs (the NLL over all their
chosen tokens), not TRL's mean of per-batch means. With several processes each scores its share of the batches and
the sums are reduced; every process runs the same number of forwards (one uncounted where the batches do not divide
evenly), because a sharded (FSDP) model gathers its weights in every forward, on every process at once."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.core.training.trainer import length_grouped_batches
from lmlab.plugins.orpo.data import PreferenceExample

LN2 = math.log(2.0)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − eᵃ) for a < 0, stable on both sides of −ln 2 (Mächler 2012)."""
    a = a.clamp(max=-1e-7)
    return torch.where(a > -LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_odds_ratio(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """log(odds(y_w|x) / odds(y_l|x)) with odds = p / (1 − p) and log p the mean token log-prob, float32."""
    logp_w, logp_l = logp_w.float(), logp_l.float()
    return (logp_w - logp_l) - (log1mexp(logp_w) - log1mexp(logp_l))


def orpo_objective(token_logp: torch.Tensor, batch: dict[str, torch.Tensor], totals: dict[str, float],
                   beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO's L = L_SFT + λ · L_OR = NLL(chosen) + λ · mean(−log σ(log odds ratio)), each term divided by its
    global count.

    `token_logp` [N] are log p(target) at the positions the collator selected; `seq_id` maps each to one of
    the 2B sequences (chosen first), `completion` marks response tokens, `nll` marks the tokens of the NLL.
    """
    seq_sum = torch.zeros(batch["n_completion"].shape[0], dtype=token_logp.dtype, device=token_logp.device)
    # torch.where rather than boolean indexing: a mask index needs its count on the host, a sync per step on a GPU
    seq_sum = seq_sum.index_add(0, batch["seq_id"], torch.where(batch["completion"], token_logp, 0.0))
    logp_w, logp_l = (seq_sum / batch["n_completion"]).chunk(2)
    nll_sum = -(token_logp * batch["nll"]).sum()
    log_odds = log_odds_ratio(logp_w, logp_l)
    ratio = F.logsigmoid(log_odds)
    tokens, examples = totals["tokens"], totals["examples"]
    loss = nll_sum / tokens - beta * ratio.sum() / examples
    w, lo = logp_w.detach(), logp_l.detach()
    per_pair = {"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach(),
                "rewards/chosen": beta * w, "rewards/rejected": beta * lo, "rewards/accuracies": (w > lo).float(),
                "rewards/margins": beta * (w - lo), "logps/chosen": w, "logps/rejected": lo}  # TRL's metric names
    return loss, {"nll": nll_sum.detach() / tokens, **{k: v.sum() / examples for k, v in per_pair.items()}}


class OrpoTask:
    """Chosen and rejected sequences go through the model as one [2B, T] batch; only the positions a loss
    term needs reach the LM head: every chosen token (or only its response with --no-prompt-loss) and the
    rejected response."""

    def __init__(self, examples: list[PreferenceExample], *, pad_id: int, beta: float, prompt_loss: bool,
                 seed: int) -> None:
        self.examples = examples
        self.pad_id, self.beta, self.prompt_loss, self.seed = pad_id, beta, prompt_loss, seed

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return length_grouped_batches([e.length for e in self.examples], global_batch, seed=self.seed,
                                      epoch=epoch)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        examples = [self.examples[i] for i in indices]
        half = len(examples)
        seqs = [e.prompt + e.chosen for e in examples] + [e.prompt + e.rejected for e in examples]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        positions, targets, seq_id, completion, nll = [], [], [], [], []
        for row, seq in enumerate(seqs):
            tokens = torch.tensor(seq, dtype=torch.long)
            input_ids[row, :len(seq)] = tokens
            attention[row, :len(seq)] = 1
            first_response = len(examples[row % half].prompt) - 1  # position that predicts the response's 1st token
            is_chosen = row < half
            start = 0 if (is_chosen and self.prompt_loss) else first_response
            pos = torch.arange(start, len(seq) - 1)
            positions.append(row * width + pos)
            targets.append(tokens[pos + 1])
            seq_id.append(torch.full_like(pos, row))
            completion.append(pos >= first_response)
            nll.append(torch.full(pos.shape, float(is_chosen)))
        completion_mask = torch.cat(completion)
        ids = torch.cat(seq_id)
        return {"input_ids": input_ids, "attention_mask": attention, "positions": torch.cat(positions),
                "targets": torch.cat(targets), "seq_id": ids, "completion": completion_mask,
                "nll": torch.cat(nll), "n_completion": torch.bincount(ids[completion_mask], minlength=2 * half)}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"tokens": float(batch["nll"].sum()), "examples": float(batch["n_completion"].shape[0] // 2)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        token_logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
        return orpo_objective(token_logp, batch, totals, self.beta)


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
        counts = [task.counts(batch) for batch in batches]
        self.totals = {key: sum(c[key] for c in counts) for key in counts[0]}
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
