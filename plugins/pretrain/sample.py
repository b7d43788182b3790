"""Text generation from a model saved by `lmlab pretrain`."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.core.attention import attention_types
from lmlab.core.errors import ModelError
from lmlab.plugins.pretrain.model import load_gpt


def model_folder(path: Path) -> Path:
    """Accept a run directory or its model/ folder."""
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise ModelError(f"{path}: no pre-trained model here (config.json + model.safetensors).",
                     hint="pass the run directory printed by `lmlab pretrain`, or its model/ folder")


def generate_text(path: Path, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
                  seed: int) -> str:
    from transformers import AutoTokenizer

    folder = model_folder(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_gpt(folder, attention_types()).eval()
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    greedy = temperature == 0
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=1.0 if greedy else temperature,
                         top_k=1 if greedy else top_k, generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0, len(ids):].tolist())
