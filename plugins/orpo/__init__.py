"""ORPO: odds ratio preference optimisation (Hong, Lee, Thorne 2024): `lmlab train-orpo`, `lmlab bench orpo`."""

from __future__ import annotations

from typing import Any

from lmlab.core.demo import DemoStep
from lmlab.core.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.orpo.command import train_orpo

    app.command("train-orpo")(train_orpo)


@hookimpl
def register_demo_steps(register: Any) -> None:
    from lmlab.plugins.orpo.demo import run_demo, run_demo_smollm2

    register(DemoStep("orpo-tiny", "ORPO · tiny-llama on bundled preferences", 10, run_demo))
    register(DemoStep("orpo-smollm2", "ORPO · a few steps on SmolLM2-135M-Instruct", 11, run_demo_smollm2,
                      quick=False))
