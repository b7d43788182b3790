"""ORPO: odds ratio preference optimisation (Hong, Lee, Thorne 2024): `lmlab train-orpo`, `lmlab bench orpo`."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.orpo.options import train_orpo

    app.command("train-orpo")(train_orpo)
    from lmlab.plugins.orpo.bench import bench_orpo

    bench.command("orpo")(bench_orpo)


def _demo_tiny(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.orpo.train import run_demo

    run_demo(output_dir, "tiny-llama", max_steps=40, batch_size=8, lr=1e-3, warmup_steps=5, schedule="cosine",
             max_length=256)


def _demo_smollm2(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.orpo.train import run_demo

    run_demo(output_dir, "smollm2-135m", max_steps=4, batch_size=2, lr=5e-6, warmup_steps=0, max_length=192)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("orpo-tiny", "ORPO · tiny-llama on bundled preferences", 10, _demo_tiny))
    register(DemoStep("orpo-smollm2", "ORPO · a few steps on SmolLM2-135M-Instruct", 11, _demo_smollm2,
                      quick=False))
