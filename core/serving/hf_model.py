"""A Hugging Face causal LM behind the generation interface (core.serving.generation): what `lmlab serve` runs for
an HF model folder (a `train-orpo` run, a converted alias such as smollm2-135m) so that it is batched continuously
like lmlab's own architectures. Llama-family models (Llama, SmolLM2, Mistral, Qwen2: GQA, tied embeddings, QKV
biases) are KV-cached; a model whose cache is not per-layer key/value tensors falls back to `Recompute`.

Why an adapter over transformers' own forward and DynamicCache rather than a second Llama implementation in
core/models: the served model is then exactly the model transformers runs (its kernels, masks and numerics, so greedy
completions are `model.generate`'s tokens and scores are its log-softmax), and every variant's details (each RoPE
scaling: linear, dynamic NTK, YaRN, Llama 3's; head layouts; attention implementations) come with transformers
instead of being re-implemented and re-tested here.

The decode state is one timeline for the batch, as in core.models.kv_cache: every layer's keys and values
[B, H_kv, S, d] in a DynamicCache, a step appending one column; each row's tokens are its last `lengths[row]`
columns (left padding before them), `real` [B, S] marks them, and `positions` [B] is each row's next RoPE position
(its number of tokens: positions count from a row's first real token). The lengths are also kept on the host, read
once per prefill, so `full()` and `keep()` need no device read. A batch with padding gets its attention mask built
here (as the one transformers builds for sdpa or eager attention), since transformers' own check of a 2D mask
("is there padding at all?") would read the device at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmlab.core.commands.devices import model_device
from lmlab.core.kernel.errors import ModelError
from lmlab.core.models.kv_cache import to_device
from lmlab.core.serving.generation import left_pad

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass
class ServedConfig:
    """`model.config` as the engine and the server read it: `block_size` is the context length, `arch` the HF
    model type; `hf` is the model's own config."""

    arch: str
    block_size: int
    vocab_size: int
    hf: Any


def context_length(config: Any) -> int:
    """The most positions the model was made for (max_position_embeddings, or its older names)."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(f"{config.model_type}: the model's config gives no context length (max_position_embeddings).",
                     hint="set max_position_embeddings in the folder's config.json")


class HFCausalLM(nn.Module):
    """An HF causal LM as lmlab's LanguageModel (config, forward, num_params): what `sequence_logprobs` scores with
    and, for a model without the generation interface, what `Recompute` runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self.config = ServedConfig(model.config.model_type, context_length(model.config), model.config.vocab_size,
                                   model.config)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, None]:
        """(logits [B, T, V], None): the next-token logits at every position of idx [B, T] (unpadded); `targets`,
        which lmlab's own models score into a loss, is not read: the callers here need only the logits."""
        return self.hf(input_ids=idx, use_cache=False).logits, None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_input_embeddings(self) -> nn.Module:
        return self.hf.get_input_embeddings()


class HFState:
    """The decode state of an HFGenerator's batch (see the module docstring)."""

    def __init__(self, cache: Any, real: Tensor, positions: Tensor, lengths: list[int], context: int) -> None:
        self.cache, self.real, self.positions, self.lengths, self.context = cache, real, positions, lengths, context

    @property
    def width(self) -> int:
        """S, the cache's columns (the longest row's tokens)."""
        return self.real.size(1)

    def padded(self) -> bool:
        return any(n < self.width for n in self.lengths)

    def full(self) -> bool:
        return max(self.lengths) >= self.context

    def keep(self, rows: Sequence[int]) -> None:
        """Keep these rows (in this order); columns that are padding in every kept row are dropped."""
        index = to_device(list(rows), torch.long, self.real.device)
        self.lengths = [self.lengths[r] for r in rows]
        drop = self.width - max(self.lengths)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, drop:], layer.values[index, :, drop:]
        self.real, self.positions = self.real[index, drop:], self.positions[index]

    def merge(self, other: HFState) -> None:
        """Append other's rows (a fresh prefill): the shorter side is left-padded to the longer's columns."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat((_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)))
            mine.values = torch.cat((_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)))
        self.real = torch.cat((_pad_left(self.real, width, 1), _pad_left(other.real, width, 1)))
        self.positions = torch.cat((self.positions, other.positions))
        self.lengths = self.lengths + other.lengths

    def kv_bytes_per_sequence(self) -> int:
        return sum(math.prod(t.shape[1:]) * t.element_size()
                   for layer in self.cache.layers for t in (layer.keys, layer.values))


def _pad_left(x: Tensor, width: int, dim: int) -> Tensor:
    """x with zeros (False) before its entries along `dim`, to `width` of them."""
    missing = width - x.size(dim)
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat((x.new_zeros(shape), x), dim=dim)


class HFGenerator(HFCausalLM):
    """HFCausalLM with `prefill` and `decode` over transformers' DynamicCache: continuous batching, KV-cached."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        import inspect

        accepted = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in accepted else "past_key_values"  # the name since transformers 5
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def prefill(self, idx: Tensor, real: Tensor) -> tuple[Tensor, HFState]:
        """idx [B, T] left-padded prompts, real [B, T]: the logits [B, V] after each, and the batch's state."""
        from transformers import DynamicCache

        lengths = real.sum(dim=1)
        state = HFState(DynamicCache(), real.clone(), lengths, lengths.tolist(), self.config.block_size)
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        return self._forward(idx, positions, state), state

    def decode(self, tokens: Tensor, state: HFState) -> Tensor:
        """One token per row (tokens [B]) through the cache: the logits [B, V] after it."""
        state.lengths = [n + 1 for n in state.lengths]
        state.real = torch.cat((state.real, state.real.new_ones(len(state.lengths), 1)), dim=1)
        logits = self._forward(tokens[:, None], state.positions[:, None], state)
        state.positions = state.positions + 1
        return logits

    def _forward(self, idx: Tensor, positions: Tensor, state: HFState) -> Tensor:
        mask = self._mask(state.real, idx.size(1)) if state.padded() else None
        out = self.hf(input_ids=idx, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{self._cache_keyword: state.cache}, **self._last_only)
        return out.logits[:, -1]

    def _mask(self, real: Tensor, T: int) -> Tensor:
        """The attention mask of T new positions over the real columns `real` [B, S] (the last T new): the 4D mask
        transformers would build for sdpa (bool, True: may attend) or eager attention (additive), or for any other
        implementation the 2D one, from which transformers builds its own."""
        implementation = getattr(self.hf.config, "_attn_implementation", None)
        if implementation not in ("sdpa", "eager") or _has_sliding_window(self.hf.config):
            return real.long()
        columns = torch.arange(real.size(1), device=real.device)
        query = columns[-T:, None]
        allowed = (columns <= query) & real[:, None, :] | (columns == query)  # a padding query sees itself: no NaN
        if implementation == "sdpa":
            return allowed[:, None]
        dtype = self.hf.dtype
        return torch.zeros(allowed[:, None].shape, dtype=dtype, device=real.device).masked_fill_(
            ~allowed[:, None], torch.finfo(dtype).min)

    def probe(self) -> str | None:
        """Why HFState cannot run this model's cache (None: it can), found by trying: two small batches prefilled,
        merged, a row dropped and a decode step, then every layer's cache checked to be plain keys and values of the
        expected shape."""
        device = model_device(self)
        try:
            from transformers.cache_utils import DynamicLayer

            with torch.inference_mode():
                _, state = self.prefill(*left_pad([[1, 2, 3], [2]], device))
                _, joining = self.prefill(*left_pad([[3, 1]], device))
                state.merge(joining)
                state.keep([0, 2])
                logits = self.decode(to_device([1, 2], torch.long, device), state)
        except Exception as exc:  # any failure means the same thing: serve it without the cache
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
        layers = list(state.cache.layers)
        odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
        if not layers or odd:
            return f"its cache layers are {', '.join(odd) or 'missing'}, not plain keys and values"
        if any(t.shape[0] != 2 or t.shape[-2] != 4 for layer in layers for t in (layer.keys, layer.values)):
            return "its cached keys and values do not have one row per sequence and one column per token"
        if tuple(logits.shape) != (2, self.config.vocab_size):
            return f"its logits have shape {tuple(logits.shape)}, not (batch, vocabulary)"
        return None


def _has_sliding_window(config: Any) -> bool:
    """Whether some layer attends to a sliding window (then transformers builds the masks, one per layer type)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any(kind != "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


def serving_model(model: nn.Module, notify: Callable[[str], None] | None = None) -> HFCausalLM:
    """`model` (an HF causal LM, already on its device and in its dtype) behind the generation interface, or, when
    the probe finds its cache unusable, behind `forward` only (the engine then recomputes every context; `notify`
    gets one line saying so)."""
    generator = HFGenerator(model)
    problem = generator.probe()
    if problem is None:
        return generator
    if notify is not None:
        notify(f"note: {generator.config.arch}: no KV-cached batching for this model ({problem}); every new token "
               "reruns the whole context")
    return HFCausalLM(model)
