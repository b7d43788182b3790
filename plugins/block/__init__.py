"""The Block Transformer (Ho et al., NeurIPS 2024) as `--arch block` and its options, `lmlab bench block` and `lmlab
bench serve` (it is served by the core's `lmlab serve`, also called `lmlab serve-block`); trained by the pretrain
plugin's `lmlab pretrain` (`LMLAB_PLUGINS=block,pretrain`)."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.models.architectures import ArchitectureSpec, AttentionConfig, reject_unknown

BLOCK_LENGTHS = (1, 2, 4, 8)
KEYS = ("block_len", "prefix", "split")


def _integer(raw: dict[str, str], key: str, default: int, hint: str) -> int:
    value = raw.get(key, str(default))
    if not value.lstrip("-").isdecimal():
        raise LmlabError(f"--arch-opt {key} must be an integer, got '{value}'.", hint=hint)
    return int(value)


def parse_options(raw: dict[str, str], shape: AttentionConfig) -> dict[str, Any]:
    """`--arch-opt`s {'block_len': '4', 'prefix': '2', 'split': '2'} → ints, defaults filled in (4, 2, half of
    --n-layer), checked against the shape before anything is built."""
    reject_unknown(raw, KEYS, flag="--arch-opt", owner="--arch block")
    block_len = _integer(raw, "block_len", 4, "e.g. --arch-opt block_len=4 (one of 1, 2, 4, 8)")
    if block_len not in BLOCK_LENGTHS:
        raise LmlabError(f"--arch-opt block_len must be one of 1, 2, 4, 8, got {block_len}.",
                         hint="the paper's models use block_len=4")
    if shape.block_size % block_len:
        fit = max(block_len, shape.block_size // block_len * block_len)
        raise LmlabError(f"--arch-opt block_len={block_len} does not divide the context (--block-size "
                         f"{shape.block_size}).", hint=f"use a --block-size that is a multiple of {block_len}, e.g. "
                         f"{fit}")
    if shape.n_embd % block_len:
        raise LmlabError(f"--arch-opt block_len={block_len} does not divide the width (--n-embd {shape.n_embd}): "
                         "a block's embedding concatenates block_len token vectors of width n_embd/block_len.",
                         hint=f"use an --n-embd that is a multiple of {block_len}")
    prefix = _integer(raw, "prefix", 2, "e.g. --arch-opt prefix=2 (the paper's)")
    if prefix < 1:
        raise LmlabError(f"--arch-opt prefix must be at least 1, got {prefix}: the token decoder reads the block "
                         "decoder's output only through the prefix.", hint="e.g. --arch-opt prefix=2 (the paper's)")
    if shape.n_layer < 2:
        raise LmlabError(f"--arch block needs at least 2 layers (a block decoder and a token decoder), got "
                         f"--n-layer {shape.n_layer}.", hint="e.g. --n-layer 4 (split 2 + 2)")
    split = _integer(raw, "split", shape.n_layer // 2, f"split is the block decoder's layers, 1 to {shape.n_layer - 1}")
    if not 1 <= split < shape.n_layer:
        raise LmlabError(f"--arch-opt split={split} leaves no layer for the "
                         f"{'token' if split >= shape.n_layer else 'block'} decoder (--n-layer {shape.n_layer}).",
                         hint=f"split is the block decoder's layers, 1 to {shape.n_layer - 1} (default "
                              f"{shape.n_layer // 2}); the token decoder gets the rest")
    return {"block_len": block_len, "prefix": prefix, "split": split}


def _build(config: Any, attention: Any) -> Any:
    from lmlab.plugins.block.model import BlockTransformer

    return BlockTransformer(config, attention)


@hookimpl
def register_architectures(register: Any) -> None:
    register(ArchitectureSpec("block", "Block Transformer: block decoder + token decoder (options: block_len, "
                                       "prefix, split)", build=_build, parse_options=parse_options))


@hookimpl
def register_commands(bench: Any) -> None:
    from lmlab.plugins.block.bench import bench_block
    from lmlab.plugins.block.bench_serve import bench_serve

    bench.command("block")(bench_block)
    bench.command("serve")(bench_serve)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.block.demo import run_demo

    run_demo(output_dir, quick)


def _serve_demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.block.demo import run_serve_demo

    run_serve_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("block", "Block Transformer · a block model and its vanilla twin, samples and decode speed", 35,
                      _demo))
    register(DemoStep("serve-block", "serve-block · the block model over the OpenAI HTTP API, batched", 36,
                      _serve_demo))
