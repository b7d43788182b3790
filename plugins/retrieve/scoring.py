"""Teacher-forced log-probabilities of titles after prompts: the rows REINFORCE trains on and generative
reranking scores, batched right-padded with the flat positions that predict each title token."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlab.core.commands.devices import model_device

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
    """log p(title | prompt) of each row, summed over the title's tokens, on the model's device; `model` is a
    TokenLogprobModel (or the DDP/FSDP module wrapping one)."""
    device = model_device(model)
    batch = {name: tensor.to(device) for name, tensor in sequences_batch(rows, pad_id).items()}
    token_logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
    return torch.zeros(len(rows), dtype=token_logp.dtype, device=device).index_add(0, batch["seq_id"], token_logp)


@torch.inference_mode()
def shared_prompt_logprobs(lm: torch.nn.Module, prompts: Sequence[Sequence[int]],
                           candidates: Sequence[Sequence[tuple[int, ...]]], pad_id: int) -> list[list[float]]:
    """log p(title | prompt) for every candidate title (tokens with EOS) of every prompt, the prompt run once
    and its KV cache shared by its candidates: reranking 10 titles after a 250-token context prompt costs one
    prompt pass plus 10 short title passes, not 10 full passes."""
    device = lm.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the last column
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp_(min=0)
    out = lm(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)
    owner = torch.tensor([row for row, titles in enumerate(candidates) for _ in titles], device=device)
    titles = [t for row in candidates for t in row]
    if not titles:
        return [[] for _ in prompts]
    cache = out.cache
    cache.reorder_cache(owner)
    steps = max(len(t) for t in titles) - 1  # the title's tokens after the first, each predicted by the one before
    inputs = torch.full((len(titles), steps), pad_id, dtype=torch.long)
    targets = torch.full((len(titles), steps), pad_id, dtype=torch.long)
    valid = torch.zeros((len(titles), steps), dtype=torch.bool)
    for row, title in enumerate(titles):
        inputs[row, :len(title) - 1] = torch.tensor(title[:-1])
        targets[row, :len(title) - 1] = torch.tensor(title[1:])
        valid[row, :len(title) - 1] = True
    inputs, targets, valid = inputs.to(device), targets.to(device), valid.to(device)
    mask = torch.cat([attention[owner], valid.long()], 1)
    rest = lm(input_ids=inputs, attention_mask=mask, cache=cache, use_cache=True,
              position_ids=positions[owner, -1:] + 1 + torch.arange(steps, device=device))
    token_logp = rest.logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    heads = torch.tensor([t[0] for t in titles], device=device)
    scores = (first[owner, heads] + (token_logp * valid).sum(1)).tolist()
    out_scores, at = [], 0
    for row in candidates:
        out_scores.append(scores[at:at + len(row)])
        at += len(row)
    return out_scores
