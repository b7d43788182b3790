"""RADA: retrieval-augmented data augmentation for low-resource tasks (Seo, Baek, Thorne, Hwang 2024):
`lmlab augment`, `lmlab augment index`, `lmlab augment eval`, `lmlab bench augment`."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.augment.bench import bench_augment
    from lmlab.plugins.augment.command import augment_app

    app.add_typer(augment_app(), name="augment")
    bench.command("augment")(bench_augment)


@hookimpl
def register_demo_steps(register: Any) -> None:
    from lmlab.plugins.augment.command import run_demo  # light: it imports the run's modules only when it runs

    register(DemoStep("augment", "RADA · smollm2-135m augments bundled QA seeds with and without retrieval", 50,
                      run_demo, quick=False))
