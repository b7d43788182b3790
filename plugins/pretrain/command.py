"""`lmlab pretrain`: pre-train a small language model from scratch with TEV monitoring."""

from __future__ import annotations

from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.pretrain.options import PretrainOptions

pretrain = trainer_command(
    PretrainOptions, "lmlab.plugins.pretrain.train:PretrainTrainer",
    doc="Pre-train a small language model from scratch (any registered architecture and attention), logging TEV "
        "(token embedding variability) and validation perplexity.")
