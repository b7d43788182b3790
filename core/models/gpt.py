"""The core's `gpt` architecture: a nanoGPT-style GPT-2 (pre-LN) whose attention comes from the registry (`--attn`):
learned positional embeddings, SDPA attention, lm_head tied to the token embedding, init N(0, 0.02) with every
residual projection (`*c_proj.weight`) at 0.02/√(2·n_layer) (docs/methods.md#stable-pre-training-and-tev). It
implements the generation interface (prefill / decode with a KV cache); its layers are in core.models.transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.models.architectures import ArchConfig, ArchitectureSpec, AttentionSpec, save_model_folder
from lmlab.core.models.kv_cache import CacheState, KVCache
from lmlab.core.models.transformer import Layer, Step, init_normal, scale_residual
from lmlab.core.training.logprobs import head_cross_entropy


class GPT(nn.Module):
    """GPT-2: token and position embeddings, `n_layer` pre-LN layers of the given attention, a tied LM head."""

    _no_split_modules = ["Layer"]  # what FSDP's auto-wrap shards one by one (accelerate reads it from the model)

    def __init__(self, config: ArchConfig, attention: AttentionSpec) -> None:
        super().__init__()
        if attention.name != config.attn:
            raise ModelError(f"config.attn is '{config.attn}' but the attention given is '{attention.name}'.")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Layer(config.attention_config(), attention) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        init_normal(self)
        scale_residual(self, config.n_layer)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (tied to the LM head): what TEV is computed from."""
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head, tied to the token embedding: accelerate's FSDP2 keeps tied weights in one group only when
        it can see both ends of the tie."""
        return self.lm_head

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied embedding counted once); non_embedding leaves out the position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """With targets: logits [B, T, V] (None when `return_logits` is off: no [B, T, V] tensor is made) and the
        cross-entropy (-1 ignored; "none" gives [B, T]). Without: logits of the last position only, [B, 1, V]."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise LmlabError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}.",
                             hint="crop the input or build the model with a larger block_size")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        if not return_logits:  # the training step: no [B, T, V] logits, no float32 copy of them
            return None, head_cross_entropy(x, self.lm_head.weight, targets, reduction)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        return logits, loss.view_as(targets) if reduction == "none" else loss

    def prefill(self, idx: Tensor, real: Tensor) -> tuple[Tensor, CacheState]:
        """Left-padded prompts [B, T] (real: not padding) through the stack once, keys and values kept; each
        sequence's positions count from its first real token."""
        attn = self.transformer.h[0].attn
        cache = KVCache(self.config.n_layer, idx.size(0), attn.n_head, self.config.n_embd // attn.n_head,
                        self.config.block_size, dtype=self.lm_head.weight.dtype, device=idx.device)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        state = CacheState(cache, positions[:, -1] + 1)
        return self._cached(idx, positions, real, cache), state

    def decode(self, tokens: Tensor, state: CacheState) -> Tensor:
        """One cached step: tokens [B] → logits [B, V] of the token after each."""
        logits = self._cached(tokens[:, None], state.next_position[:, None], None, state.cache)
        state.next_position = state.next_position + 1
        return logits

    def _cached(self, idx: Tensor, positions: Tensor, real: Tensor | None, cache: KVCache) -> Tensor:
        mask, is_causal = cache.begin(idx.size(1), real)
        step = Step(None, mask, is_causal, cache)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for i, block in enumerate(self.transformer.h):
            x = block(x, step, i)
        cache.end()
        return self.lm_head(self.transformer.ln_f(x[:, -1]))

    def save(self, folder: str | Path) -> None:
        save_model_folder(self, folder)  # the tied embedding stored once


GPT_ARCH = ArchitectureSpec("gpt", "GPT-2 (pre-LN, learned positions, tied embeddings)", build=GPT)
