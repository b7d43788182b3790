"""MaPO: margin-aware preference optimisation for diffusion (Hong et al. 2024): `lmlab train-mapo`,
`lmlab bench mapo`; Diffusion-DPO ships as `--loss dpo` for comparison."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.mapo.options import train_mapo

    app.command("train-mapo")(train_mapo)
    from lmlab.plugins.mapo.bench import bench_mapo

    bench.command("mapo")(bench_mapo)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.mapo.train import run_demo

    run_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("mapo-tiny", "MaPO · tiny-sdxl prefers flat cartoons over noisy photos", 20, _demo))
