"""RADA: retrieval-augmented data augmentation for low-resource tasks (Seo, Baek, Thorne, Hwang 2024):
`lmlab augment`, `lmlab augment index`, `lmlab augment eval`, `lmlab bench augment`."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.augment.command import augment_app

    app.add_typer(augment_app(), name="augment")
    from lmlab.plugins.augment.bench import bench_augment

    bench.command("augment")(bench_augment)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.augment.demo import run_demo

    run_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("augment", "RADA · smollm2-135m augments bundled QA seeds with and without retrieval", 50,
                      _demo, quick=False))
