"""`lmlab demo`: each plugin contributes a step through the `register_demo_steps` hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmlab.core.kernel.plugins import collect


@dataclass
class DemoStep:
    """One demo step: `run(output_dir, quick)`; `quick` steps use only tiny random models."""

    name: str
    title: str
    order: int
    run: Callable[[str, bool], None]
    quick: bool = True


def demo_steps() -> list[DemoStep]:
    return sorted(collect("register_demo_steps", "demo", key=lambda s: s.name).values(), key=lambda s: s.order)
