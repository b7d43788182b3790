"""Text generation for any registered architecture (`lmlab generate`, the demo).

`generate` samples through the model's forward, recomputing the context for every new token; an architecture
with a faster way (a cache, block-wise decoding) gives its model a `generate` method with the same signature
and meaning, and `generate` hands the work to it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lmlab.core.architectures import LanguageModel, find_model_folder, load_model_folder
from lmlab.core.errors import ModelError


def sample_next(logits: Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token ids [B, 1] from last-position logits [B, V]: argmax when temperature is 0, else a draw from
    softmax(logits / temperature) restricted to the top_k likeliest tokens (all when None)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: LanguageModel, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """idx [B, T] followed by max_new_tokens sampled tokens, [B, T + max_new_tokens]; the context the model sees
    is cropped to its block_size."""
    own = getattr(model, "generate", None)
    if callable(own):
        return own(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, generator)), dim=1)
    return idx


def generate_text(path: str | Path, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
                  seed: int) -> str:
    """The continuation of `prompt` by the model saved in `path` (a model folder or a run directory holding
    model/), decoded with the tokenizer saved beside it."""
    from transformers import AutoTokenizer

    folder = find_model_folder(path)
    model = load_model_folder(folder).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: no tokenizer saved with the model ({str(exc).strip().splitlines()[0]}).",
                         hint="a run of `lmlab pretrain` saves its tokenizer in model/") from None
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    out = generate(model, torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0, len(ids):].tolist())
