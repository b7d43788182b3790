"""Stable pre-training (Chung et al., EMNLP 2024): `lmlab pretrain` (any registered architecture and attention, with
TEV monitoring), `lmlab tokenizer train` and `lmlab bench pretrain`; MHA and the `gpt` architecture are the core's."""

from __future__ import annotations

from typing import Any

import typer

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.pretrain.bench import bench_pretrain
    from lmlab.plugins.pretrain.options import pretrain, tokenizer_train

    app.command("pretrain")(pretrain)
    tokenizer = typer.Typer(help="Tokenizers for pre-training.", no_args_is_help=True)
    tokenizer.command("train")(tokenizer_train)
    app.add_typer(tokenizer, name="tokenizer")
    bench.command("pretrain")(bench_pretrain)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.pretrain.train import run_demo

    run_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("pretrain", "Pre-training · MHA vs MLRA on Tiny Shakespeare, with TEV", 30, _demo))
