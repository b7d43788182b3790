"""`lmlab train-mapo`: margin-aware preference optimisation of text-to-image diffusion models."""

from __future__ import annotations

from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.mapo.options import MapoOptions

train_mapo = trainer_command(
    MapoOptions, "lmlab.plugins.mapo.train:MapoTrainer", extra="diffusion",
    doc="Align a text-to-image diffusion model to preference pairs with MaPO (or Diffusion-DPO for comparison).")
