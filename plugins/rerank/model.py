"""The cross-encoder context reranker: an encoder reads "[CLS] query [SEP] context [SEP]" and a one-unit head on
its pooled [CLS] state gives the relevance logit z(q, c); P(relevant) = σ(z / T), T = 1 unless a temperature was
fitted (`retrieve calibrate --fit-temperature`). The model is a plain `AutoModelForSequenceClassification` with
`num_labels=1`, so a saved member folder loads in sentence-transformers' CrossEncoder too (same scores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.core.commands.devices import model_device
from lmlab.core.kernel.errors import ModelError
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER, embedder_path

DEFAULT_ENCODER = DEFAULT_EMBEDDER  # the packaged all-MiniLM-L6-v2 (offline)


def load_cross_encoder(spec: str, *, seed: int = 0, dropout: float | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from an encoder alias or folder; a new head is initialised from `seed`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = embedder_path(spec)
    extra = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is what a new reranker is
    try:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, local_files_only=True,
                                                                   **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load the encoder '{spec}' ({str(exc).splitlines()[0][:160]}).",
                         hint=f"use the packaged '{DEFAULT_ENCODER}' or a local Hugging Face encoder folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float(), tokenizer


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids of each (query, context), cut to `max_length` the way CrossEncoder cuts them (longest first)."""
    if not pairs:
        return []
    encoded = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation=True, max_length=max_length)
    return [dict(zip(encoded.keys(), values, strict=True)) for values in zip(*encoded.values(), strict=True)]


@contextlib.contextmanager
def dropout_mode(model: torch.nn.Module, on: bool) -> Iterator[None]:
    """MC dropout on (only the `nn.Dropout` layers sample; every other module stays in eval mode, so attention keeps
    its fused kernel: attention-probability dropout made a pass 6.5x slower on CPU) or off; modes restored after."""
    was = {module: module.training for module in model.modules()}
    for module in model.modules():
        module.train(on and isinstance(module, torch.nn.Dropout))
    try:
        yield
    finally:
        for module, training in was.items():
            module.training = training


class PairScorer:
    """Relevance logits of (query, context) pairs for one model. Pairs are tokenized once, sorted by token
    length and cut into batches of `batch_size`, so a batch pads to nearly its own length."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 256, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size

    def batches(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """(positions, padded tensors) per batch, longest first; reusable for several passes over the pairs."""
        features = tokenize_pairs(self.tokenizer, pairs, self.max_length)
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        out = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out.append((rows, self.tokenizer.pad([features[i] for i in rows], return_tensors="pt")))
        return out

    @torch.inference_mode()
    def device_logits(self, batches: list[tuple[list[int], dict[str, torch.Tensor]]], total: int, *,
                      dropout_seed: int | None = None) -> torch.Tensor:
        """[total] float32 logits in the pairs' order, on the model's device (each batch's inputs are moved there,
        nothing is read back); with `dropout_seed`, one MC-dropout pass seeded by it (`torch.manual_seed` seeds
        the GPU's generator too)."""
        device = model_device(self.model)
        out = torch.empty(total, device=device)
        with dropout_mode(self.model, dropout_seed is not None):
            if dropout_seed is not None:
                torch.manual_seed(dropout_seed)
            for rows, tensors in batches:
                logits = self.model(**{name: t.to(device) for name, t in tensors.items()}).logits
                out[torch.tensor(rows, device=device)] = logits[:, 0].float()
        return out

    def logits(self, batches: list[tuple[list[int], dict[str, torch.Tensor]]], total: int, *,
               dropout_seed: int | None = None) -> torch.Tensor:
        """`device_logits` brought back to the CPU, in one copy."""
        return self.device_logits(batches, total, dropout_seed=dropout_seed).cpu()

    def score(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Logits of `pairs` on the CPU, dropout off."""
        return self.logits(self.batches(pairs), len(pairs))


def save_member(folder: Path, model: Any, tokenizer: Any) -> None:
    """One member as a Hugging Face folder (safetensors), loadable by AutoModelForSequenceClassification."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
