"""ORPO's part of `lmlab demo`: tiny-llama learns the bundled preferences; then SmolLM2 takes a few steps."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.kernel.console import err
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.train import OrpoTrainer


def _report(summary: dict) -> None:
    final = summary["final"]
    err.print(f"{summary['steps']} steps · loss {final['loss']:.4f} · reward accuracy "
              f"{final['rewards/accuracies']:.2f} · margin {final['rewards/margins']:.4f} · "
              f"{summary['examples_per_s']} pairs/s → [bold]{summary['run_dir']}[/bold]")


def run_demo(output_dir: str, quick: bool) -> None:
    _report(OrpoTrainer(OrpoOptions(model="tiny-llama", output_dir=Path(output_dir) / "orpo-tiny-llama", overwrite=True,
                                    max_steps=40, batch_size=8, lr=1e-3, warmup_steps=5, schedule="cosine",
                                    max_length=256)).run())


def run_demo_smollm2(output_dir: str, quick: bool) -> None:
    _report(OrpoTrainer(OrpoOptions(model="smollm2-135m", output_dir=Path(output_dir) / "orpo-smollm2-135m",
                                    overwrite=True, max_steps=4, batch_size=2, lr=5e-6, warmup_steps=0,
                                    max_length=192)).run())
