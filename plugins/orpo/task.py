"""ORPO as a TrainTask for the shared loop: length-grouped batches, padding-free log-prob selection."""

from __future__ import annotations

import torch

from lmlab.core.training.batching import length_grouped_batches
from lmlab.plugins.orpo.data import PreferenceExample
from lmlab.plugins.orpo.loss import orpo_objective


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
