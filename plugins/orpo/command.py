"""`lmlab train-orpo`: odds ratio preference optimisation on the shared training loop."""

from __future__ import annotations

from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.orpo.options import OrpoOptions

train_orpo = trainer_command(
    OrpoOptions, "lmlab.plugins.orpo.train:OrpoTrainer",
    doc="Preference-train a causal LM with ORPO (no reference model): NLL on chosen + λ·odds-ratio loss.")
