"""Teacher-forced log-probabilities of titles after prompts: the rows REINFORCE trains on and generative
reranking scores, batched right-padded with the flat positions that predict each title token."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Row = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt tokens, title tokens with EOS)


def sequences_batch(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + title rows, with the flat positions that predict each title token."""
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    positions, targets, seq_id = [], [], []
    for row, (prompt, title) in enumerate(rows):
        seq = torch.tensor(prompt + title, dtype=torch.long)
        input_ids[row, :len(seq)] = seq
        attention[row, :len(seq)] = 1
        pos = torch.arange(len(prompt) - 1, len(seq) - 1)
        positions.append(row * width + pos)
        targets.append(seq[pos + 1])
        seq_id.append(torch.full_like(pos, row))
    return {"input_ids": input_ids, "attention_mask": attention, "positions": torch.cat(positions),
            "targets": torch.cat(targets), "seq_id": torch.cat(seq_id)}


def sequence_logprobs(model: torch.nn.Module, rows: Sequence[Row], pad_id: int) -> torch.Tensor:
    """log p(title | prompt) of each row, summed over the title's tokens; `model` is a TokenLogprobModel."""
    batch = sequences_batch(rows, pad_id)
    token_logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
    return torch.zeros(len(rows), dtype=token_logp.dtype).index_add(0, batch["seq_id"], token_logp)
