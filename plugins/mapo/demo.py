"""MaPO's part of `lmlab demo`: tiny-sdxl learns to prefer the flat renderings of the bundled pairs."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.kernel.console import err
from lmlab.plugins.mapo.options import MapoOptions
from lmlab.plugins.mapo.train import MapoTrainer


def run_demo(output_dir: str, quick: bool) -> None:
    summary = MapoTrainer(MapoOptions(output_dir=Path(output_dir) / "mapo-tiny-sdxl", max_steps=40, lr=1e-3,
                                      overwrite=True, samples=3, sample_steps=10)).run()
    held = summary["heldout"]
    err.print(f"{summary['steps']} steps · held-out mse_w − mse_l {held['before']['gap']:+.5f} → "
              f"{held['after']['gap']:+.5f} · winner lower {held['before']['winner_lower']:.2f} → "
              f"{held['after']['winner_lower']:.2f} · samples: {summary.get('samples')} → "
              f"[bold]{summary['run_dir']}[/bold]")
