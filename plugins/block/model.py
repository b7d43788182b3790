"""The Block Transformer (Ho, Bae, Kim et al., NeurIPS 2024; docs/methods.md#block-transformer): blocks of L_B tokens,
a block decoder over block embeddings and a token decoder inside each block, both GPT-NeoX stacks from core."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.models.architectures import ArchConfig, AttentionSpec, save_model_folder
from lmlab.core.models.kv_cache import KVCache, to_device
from lmlab.core.models.transformer import Stack, Step, init_normal, padded_causal_mask, scale_residual
from lmlab.core.serving.generation import PAD_ID
from lmlab.core.training.logprobs import head_cross_entropy
from lmlab.plugins.block import parse_options


class BlockState:
    """Decode state: the global cache (one entry per block), the local cache of the current block, its tokens so far."""

    def __init__(self, global_cache: KVCache, local_cache: KVCache, next_block: Tensor, block_len: int) -> None:
        self.global_cache, self.local_cache, self.next_block = global_cache, local_cache, next_block
        self.tokens = torch.zeros(next_block.size(0), block_len, dtype=torch.long, device=next_block.device)
        self.filled = 0

    def full(self) -> bool:
        """The next token completes a block, and the global cache has no room for it."""
        return self.filled == self.tokens.size(1) - 1 and self.global_cache.room == 0

    def keep(self, rows: Sequence[int]) -> None:
        self.global_cache.keep(rows)
        self.local_cache.keep(rows)
        index = to_device(rows, torch.long, self.next_block.device)
        self.next_block, self.tokens = self.next_block[index], self.tokens[index]

    def kv_bytes_per_sequence(self) -> int:
        return self.global_cache.nbytes_per_sequence() + self.local_cache.nbytes_per_sequence()

    def joinable(self) -> bool:
        """Sequences join between blocks, where every local cache holds just its prefix."""
        return self.filled == 0

    def merge(self, other: BlockState) -> None:
        if not (self.joinable() and other.joinable()):
            raise ValueError("block decode states merge only between blocks")
        self.global_cache.merge(other.global_cache)
        self.local_cache.merge(other.local_cache)
        self.next_block = torch.cat((self.next_block, other.next_block))
        self.tokens = torch.cat((self.tokens, other.tokens))


class BlockTransformer(nn.Module):
    _no_split_modules = ["Layer"]  # what FSDP's auto-wrap shards one by one (accelerate reads it from the model)

    def __init__(self, config: ArchConfig, attention: AttentionSpec) -> None:
        super().__init__()
        if attention.name != config.attn:
            raise ModelError(f"config.attn is '{config.attn}' but the attention given is '{attention.name}'.")
        shape = config.attention_config()
        options = parse_options({k: str(v) for k, v in config.arch_options.items()}, shape)
        self.config = replace(config, arch_options=options)
        self.block_len, self.n_prefix, split = options["block_len"], options["prefix"], options["split"]
        D, V = config.n_embd, config.vocab_size
        self.embedder = nn.Embedding(V, D // self.block_len)  # E_b, vocab × D/L_B
        self.block_decoder = Stack(replace(shape, n_layer=split), attention)
        self.prefix = nn.Linear(D, self.n_prefix * D, bias=True)  # [p_1 … p_r] = prefix(h_n)
        self.wte = nn.Embedding(V, D)
        self.token_decoder = Stack(replace(shape, n_layer=config.n_layer - split), attention)
        self.lm_head = nn.Linear(D, V, bias=False)
        init_normal(self)  # N(0, 0.02), docs/methods.md#block-transformer; residuals scaled per stack's depth
        for stack in (self.block_decoder, self.token_decoder):
            scale_residual(stack, len(stack.h))

    def get_input_embeddings(self) -> nn.Embedding:
        """The token decoder's embedding (vocab × D, as a vanilla model's): what TEV is computed from."""
        return self.wte

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, folder: str | Path) -> None:
        save_model_folder(self, folder)

    # ---- the three parts --------------------------------------------------------------------------------------

    def encode_blocks(self, blocks: Tensor, real: Tensor | None = None) -> Tensor:
        """Block decoder outputs h [B, N, D] of blocks [B, N, L_B]; `real` [B, N] False masks an all-pad block."""
        x = self.embedder(blocks).flatten(2)  # e_n = [E_b(x_{n,1}); …; E_b(x_{n,L_B})], width D
        if real is None:
            return self.block_decoder(x, Step(torch.arange(blocks.size(1), device=x.device)[None]))
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        return self.block_decoder(x, Step(positions, padded_causal_mask(real), False))

    def decode_hidden(self, h: Tensor, inputs: Tensor) -> Tensor:
        """Token decoder outputs [B, N, L_B, D]: entry n, from TokenDecoder([p_1 … p_r, x_{n+1,1} … x_{n+1,L_B-1}])
        (the prefix of h[:, n], then `inputs` [B, N, L_B - 1]) at positions 0 … r+L_B-2, causal, never leaving the
        block, predicts x_{n+1,1} … x_{n+1,L_B}; all blocks run as one batch of B·N short sequences."""
        B, N, D = h.shape
        r, L = self.n_prefix, self.block_len
        prefix = self.prefix(h).view(B, N, r, D)
        x = torch.cat((prefix, self.wte(inputs)), dim=2).view(B * N, r + L - 1, D)
        out = self.token_decoder(x, Step(torch.arange(r + L - 1, device=x.device)[None]))
        return out[:, r - 1:].reshape(B, N, L, D)  # outputs r-1 … r+L_B-2

    # ---- the LanguageModel protocol -----------------------------------------------------------------------------

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True, attention_mask: Tensor | None = None
                ) -> tuple[Tensor | None, Tensor | None]:
        """Logits at t predict token t+1, as every architecture's; block 0 (positions 0 … L_B-2) is never predicted:
        its logits are 0 and its targets ignored. With targets [B, T] (T a multiple of L_B; -1 ignored): (logits
        [B, T, V] or None, the loss over the predicted targets); without: the last position's logits [B, 1, V].
        `attention_mask` [B, T] (0: padding) masks all-pad blocks and skips the targets they leave without context."""
        B, T = idx.shape
        L = self.block_len
        if T > self.config.block_size:
            raise LmlabError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}.",
                             hint="crop the input or build the model with a larger block_size")
        if targets is None and T < L:
            idx = F.pad(idx, (L - T, 0), value=PAD_ID)
            attention_mask = None if attention_mask is None else F.pad(attention_mask, (L - T, 0), value=1)
            T = L
        if targets is not None and T % L:
            raise LmlabError(f"training sequences must be whole blocks: length {T} is not a multiple of "
                             f"block_len {L}.", hint=f"use a --block-size that is a multiple of {L}")
        n = T // L  # complete blocks: the context of target blocks 1 … n
        real = None if attention_mask is None else attention_mask[:, :n * L].bool().view(B, n, L).any(-1)
        h = self.encode_blocks(idx[:, :n * L].view(B, n, L), real)
        inputs = F.pad(idx, (0, (n + 1) * L - T), value=PAD_ID).view(B, n + 1, L)[:, 1:, :L - 1]
        hidden = self.decode_hidden(h, inputs).flatten(1, 2)[:, :T - L + 1]  # positions L_B-1 … T-1
        if targets is None:
            return self.lm_head(hidden[:, -1:]), None
        wanted = targets[:, L - 1:]
        if attention_mask is not None:
            context = real.repeat_interleave(L, dim=1)[:, :T - L + 1]  # the previous block is real
            token = F.pad(attention_mask[:, L:].bool(), (0, 1), value=True)  # the predicted token is not padding
            wanted = wanted.masked_fill(~(context & token), -1)
        if return_logits:
            logits = self.lm_head(hidden)
            loss = F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=-1, reduction=reduction)
        else:  # the training step: no [B, T, V] logits, no float32 copy of them (lmlab.core.training.logprobs)
            logits, loss = None, head_cross_entropy(hidden, self.lm_head.weight, wanted, reduction)
        if reduction == "none":
            loss = F.pad(loss.reshape(B, -1), (L - 1, 0))
        return (None if logits is None else F.pad(logits, (0, 0, L - 1, 0))), loss

    def prepare_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, Tensor]:
        """Windows as this model trains on them: with a generator, each shifted right by 0 … L_B-1 pad tokens (their
        targets ignored), as prompts are left-padded at generation; always block 0's targets ignored, so that the
        targets that are not -1 count what the loss averages over."""
        idx, targets, L = batch["input_ids"], batch["targets"].clone(), self.block_len
        if generator is not None and L > 1:
            B, T = idx.shape
            source = torch.arange(T)[None] - torch.randint(0, L, (B, 1), generator=generator)
            kept = source >= 0
            idx = torch.where(kept, idx.gather(1, source.clamp(min=0)), PAD_ID)
            targets = torch.where(kept, targets.gather(1, source.clamp(min=0)), -1)
        targets[:, :L - 1] = -1
        return {**batch, "input_ids": idx, "targets": targets}

    def next_token_logprobs(self, idx: Tensor, prompt_len: int | None = None) -> Tensor:
        """[T - 1, V] log-probabilities of each next token of idx [1, T] (core.serving.generation.sequence_logprobs),
        aligned into blocks as generation aligns them: the first `prompt_len` tokens (None: all of idx) are the prompt,
        left-padded so that it ends on a block boundary (prefill), and the tokens after it fill the next blocks
        (decode). The alignment depends on the prompt alone, so appending tokens never changes an earlier row;
        `prompt_len` may be 0 or less where a crop dropped the prompt's start. NaN rows for the first block's tokens."""
        L, T = self.block_len, idx.size(1)
        extra = (-(T if prompt_len is None else prompt_len)) % L
        x = F.pad(idx, (extra, 0), value=PAD_ID)
        n = (extra + T - 1) // L  # the blocks before the last token's: the context of every predicted token
        if n > self.config.block_size // L:
            raise LmlabError(f"a sequence of {n} blocks before its last token exceeds the model's context of "
                             f"{self.config.block_size // L} blocks.", hint="score a shorter text or crop it first")
        undefined = min(T - 1, L - 1 - extra)  # rows whose token lies in block 0
        rows = torch.full((T - 1, self.config.vocab_size), float("nan"), dtype=torch.float32, device=idx.device)
        if n:
            h = self.encode_blocks(x[:, :n * L].view(1, n, L))
            inputs = F.pad(x[:, L:], (0, (n + 1) * L - x.size(1)), value=PAD_ID).view(1, n, L)[:, :, :L - 1]
            hidden = self.decode_hidden(h, inputs).flatten(1, 2)  # position L_B-1+j predicts token L_B+j of x
            start = extra + undefined - (L - 1)
            rows[undefined:] = self.lm_head(hidden[0, start:start + T - 1 - undefined]).float().log_softmax(dim=-1)
        return rows

    # ---- the generation interface (core.serving.generation) -------------------------------------------------------

    def prefill(self, idx: Tensor, real: Tensor) -> tuple[Tensor, BlockState]:
        """Left-padded prompts [B, T], padded to a block boundary, through the block decoder into the global cache
        (one entry per block); the first token's logits [B, V] from the last block's prefix."""
        L = self.block_len
        extra = (-idx.size(1)) % L
        idx, real = F.pad(idx, (extra, 0), value=PAD_ID), F.pad(real, (extra, 0), value=False)
        B, n = idx.size(0), idx.size(1) // L
        real_blocks = real.view(B, n, L).any(-1)
        x = self.embedder(idx.view(B, n, L)).flatten(2)
        global_cache = self.block_decoder.new_cache(B, self.config.block_size // L, x)
        positions = (real_blocks.long().cumsum(1) - 1).clamp(min=0)
        h = self.block_decoder.run(x, positions, global_cache, real_blocks)[:, -1]
        local_cache = self.token_decoder.new_cache(B, self.n_prefix + L - 1, x)
        state = BlockState(global_cache, local_cache, positions[:, -1] + 1, L)
        return self._start_block(h, state), state

    def decode(self, tokens: Tensor, state: BlockState) -> Tensor:
        """tokens [B] → next logits [B, V]: a token-decoder step, or, once the block is complete, a block-decoder
        step and the next block's first logits."""
        j = state.filled
        state.tokens[:, j] = tokens
        if j < self.block_len - 1:
            position = torch.full((1, 1), self.n_prefix + j, device=tokens.device)
            out = self.token_decoder.run(self.wte(tokens)[:, None], position, state.local_cache)
            state.filled = j + 1
            return self.lm_head(out[:, -1])
        block = self.embedder(state.tokens).flatten(1)[:, None]
        h = self.block_decoder.run(block, state.next_block[:, None], state.global_cache)[:, -1]
        state.next_block = state.next_block + 1
        return self._start_block(h, state)

    def _start_block(self, h: Tensor, state: BlockState) -> Tensor:
        """A fresh local cache (at most r + L_B - 1 entries) seeded with the prefix of h [B, D]; the first logits."""
        B, D = h.shape
        state.local_cache.reset()
        state.filled = 0
        positions = torch.arange(self.n_prefix, device=h.device)[None]
        out = self.token_decoder.run(self.prefix(h).view(B, self.n_prefix, D), positions, state.local_cache)
        return self.lm_head(out[:, -1])
