"""The Block Transformer (Ho et al., NeurIPS 2024): `lmlab pretrain --arch block` (global block decoder, local
token decoder), generated with core's KV-cached interface by `lmlab generate`, served over the OpenAI HTTP API
by `lmlab serve-block` (any architecture's run), and `lmlab bench block`.

Needs the pretrain plugin, whose `lmlab pretrain` trains it (`LMLAB_PLUGINS=block,pretrain`; without it the CLI says
so); its vanilla twin, `--arch gpt` with `--attn mha`, is the core's."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.models.architectures import ArchitectureSpec


def _build(config: Any, attention: Any) -> Any:
    from lmlab.plugins.block.model import BlockTransformer

    return BlockTransformer(config, attention)


def _parse(raw: dict[str, str], shape: Any) -> dict[str, Any]:
    from lmlab.plugins.block.options import parse_options

    return parse_options(raw, shape)


@hookimpl
def register_architectures(register: Any) -> None:
    register(ArchitectureSpec("block", "Block Transformer: block decoder + token decoder (options: block_len, "
                                       "prefix, split)", build=_build, parse_options=_parse))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.block.bench import bench_block
    from lmlab.plugins.block.bench_serve import bench_serve
    from lmlab.plugins.block.serve import serve_block_command

    app.command("serve-block")(serve_block_command)
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
