"""RADA: retrieval-augmented data augmentation for low-resource tasks (Seo, Baek, Thorne, Hwang 2024):
`lmlab augment`, `lmlab augment index`, `lmlab augment eval`, `lmlab bench augment`."""

from __future__ import annotations

from typing import Any

from lmlab.core.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.augment.command import augment_app

    app.add_typer(augment_app(), name="augment")
    from lmlab.plugins.augment.bench import bench_augment

    bench.command("augment")(bench_augment)
