"""A nanoGPT-style GPT-2 (pre-LN) whose attention comes from the registry (`pretrain --attn`).

METHODS §3's conventions: learned positional embeddings, SDPA attention, lm_head tied to the token
embedding, init N(0, 0.02) with every residual projection (`*c_proj.weight`) at 0.02/√(2·n_layer).
Registered as `--arch gpt`; it follows core's LanguageModel protocol, so core's `load_model_folder` rebuilds a
saved one and core's `generate` samples from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.core.architectures import ArchConfig, ArchitectureSpec, save_model_folder
from lmlab.core.attention import AttentionConfig, AttentionSpec
from lmlab.core.errors import LmlabError, ModelError

INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head attention: one fused q, k, v projection, causal SDPA, output projection `c_proj`."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


MHA_SPEC = AttentionSpec("mha", "multi-head attention (GPT-2)", build=CausalSelfAttention)


class MLP(nn.Module):
    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: ArchConfig, attention: AttentionSpec) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = attention.build(config.attention_config())
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ArchConfig, attention: AttentionSpec) -> None:
        super().__init__()
        if attention.name != config.attn:
            raise ModelError(f"config.attn is '{config.attn}' but the attention given is '{attention.name}'.")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, attention) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's residual scaling: std 0.02/√(2·n_layer)
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (tied to the LM head): what TEV is computed from."""
        return self.transformer.wte

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied embedding counted once); non_embedding leaves out the position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """With targets: logits [B, T, V] (None when `return_logits` is off: a wrapper such as accelerate's
        mixed-precision one would otherwise copy them to float32 every step) and cross-entropy (-1 ignored;
        reduction "none" gives [B, T]). Without: logits of the last position only, [B, 1, V]."""
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
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        return logits if return_logits else None, loss.view_as(targets) if reduction == "none" else loss

    def save(self, folder: str | Path) -> None:
        """config.json + model.safetensors (the tied embedding stored once)."""
        save_model_folder(self, folder)


GPT_ARCH = ArchitectureSpec("gpt", "GPT-2 (pre-LN, learned positions, tied embeddings)", build=GPT)
