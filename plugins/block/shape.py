"""The shape of the models `lmlab bench block` and `lmlab bench serve` build: the block model's options and the
context every model gets, checked with the benches' own flags named before anything runs."""

from __future__ import annotations

import math

from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.block.options import BLOCK_LENGTHS
from lmlab.plugins.block.perplexity import TRAIN_CONTEXT

PREFIX = 2  # the paper's prefix vectors per block


def arch_opt(block_len: int, n_layer: int) -> list[str]:
    """The block model's `--arch-opt`s: L_B tokens per block, the prefix, half the layers in the block decoder."""
    return [f"block_len={block_len}", f"prefix={PREFIX}", f"split={n_layer // 2}"]


def check_shape(n_layer: int, n_embd: int, n_head: int, block_len: int, lengths: dict[str, tuple[int, int]]) -> int:
    """The context every model gets (the longest prompt + decode, rounded up to a multiple of block_len), after
    checking the models' shape with the bench's own flags named, then the registry's own checks (at that context and
    at the perplexity part's)."""
    from lmlab.core.models.architectures import check_model_choice

    if block_len not in BLOCK_LENGTHS:
        raise LmlabError(f"--block-len must be one of {', '.join(map(str, BLOCK_LENGTHS))}, got {block_len}.",
                         hint="the paper's models use 4")
    if n_embd % n_head:
        raise LmlabError(f"--n-embd {n_embd} is not divisible by --n-head {n_head}.",
                         hint="pick a width that is a multiple of the number of heads")
    if n_embd % block_len:
        raise LmlabError(f"--n-embd {n_embd} is not divisible by --block-len {block_len}: a block's embedding "
                         f"concatenates {block_len} token vectors of width n_embd / block_len.",
                         hint=f"pick a width that is a multiple of {block_len}")
    context = math.ceil(max(p + n for p, n in lengths.values()) / block_len) * block_len
    for size in (context, TRAIN_CONTEXT):
        check_model_choice("block", "mha", block_size=size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                           arch_opt=arch_opt(block_len, n_layer))
    return context
