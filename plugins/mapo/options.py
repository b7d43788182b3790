"""`lmlab train-mapo`'s options: the trainer options of core plus MaPO's own, one field per flag."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.core.commands.options import MODEL_AND_DATA, RUN_AND_OUTPUT, TRAINING, TrainOptions, option
from lmlab.core.training.trainer import trainer_command


@dataclass
class MapoOptions(TrainOptions):
    max_steps: int = 30
    lr: float = 1e-5
    model: str = option("tiny-sdxl", "tiny-sdxl, a local diffusers folder (SDXL or SD-1.x), or a Hub id.",
                        flags=("--model", "-m"), panel=MODEL_AND_DATA)
    data: str | None = option(None, "Pick-a-Pic-style pairs (jpg_0, jpg_1, label_0, label_1, caption): Parquet, "
                              "saved HF dataset, Hub id, or JSONL with image paths (default: bundled "
                              "examples/mapo/pairs.jsonl).", flags=("--data", "-d"), panel=MODEL_AND_DATA)
    eval_data: str | None = option(None, "Held-out pairs to measure alignment before and after training (default "
                                   "with bundled data: examples/mapo/heldout.jsonl).", panel=MODEL_AND_DATA,
                                   deprecated=("--heldout",))
    resolution: int | None = option(None, "Training resolution (default: the UNet's sample size × VAE factor).",
                                    min=8, panel=MODEL_AND_DATA)
    cache_latents: bool = option(False, "Encode each pair once (centre crop, no flip) and reuse the latents.",
                                 negatable=False, panel=MODEL_AND_DATA)
    loss: str = option("mapo", "mapo (reference-free) or dpo (Diffusion-DPO, frozen reference UNet).")
    beta: float = option(0.1, "MaPO β, weight of the margin term.", min=0.0)
    snr_value: float = option(0.5, "s in f(x) = s·x / (exp(s·x) − 1).", min=0.0)
    beta_dpo: float = option(5000.0, "Diffusion-DPO β.", min=0.0)
    lora: bool = option(False, "Train LoRA adapters on the UNet's attention instead of the full UNet.",
                        panel=TRAINING)
    lora_r: int = option(8, "LoRA rank.", min=1, panel=TRAINING)
    lora_alpha: int = option(8, "LoRA alpha.", min=1, panel=TRAINING)
    gradient_checkpointing: bool = option(False, "Recompute the UNet's block activations in the backward instead "
                                          "of keeping them: less memory at full resolution, a slower step.",
                                          negatable=False, panel=TRAINING)
    samples: int = option(4, "Prompts in the before/after sample grid.", min=0, panel=RUN_AND_OUTPUT)
    sample_steps: int = option(20, "Denoising steps per sample.", min=1, panel=RUN_AND_OUTPUT)


train_mapo = trainer_command(
    MapoOptions, "lmlab.plugins.mapo.train:MapoTrainer", extra="diffusion",
    doc="Align a text-to-image diffusion model to preference pairs with MaPO (or Diffusion-DPO for comparison).")
