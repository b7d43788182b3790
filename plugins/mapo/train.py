"""MaPO's trainer (Diffusion-DPO too): pairs → DiffusionPreferenceTask on the shared skeleton → UNet/LoRA, the
before/after sample grid and the held-out alignment."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from lmlab.core.files.records import SkipLog, example, load_records
from lmlab.core.kernel.console import err, log
from lmlab.core.kernel.errors import LmlabError, require
from lmlab.core.models.loading import replace_dir
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.mapo.data import FIELDS, ImagePair, build_pairs
from lmlab.plugins.mapo.models import DiffusionParts, load_diffusion
from lmlab.plugins.mapo.options import MapoOptions
from lmlab.plugins.mapo.samples import heldout_gap, sample_grid, save_grid
from lmlab.plugins.mapo.task import DiffusionPreferenceTask

LOSSES = ("mapo", "dpo")


def _load_pairs(data: str, skips: SkipLog) -> list[ImagePair]:
    return build_pairs(load_records(data, required=FIELDS), skips)


def _add_lora(unet: torch.nn.Module, r: int, alpha: int) -> None:
    peft = require("peft", "--lora", "lora")
    unet.requires_grad_(False)
    unet.add_adapter(peft.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def _save_unet(parts: DiffusionParts, unet: torch.nn.Module, lora: bool, target: Path) -> None:
    def write(tmp: Path) -> None:
        if lora:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            type(parts.pipeline()).save_lora_weights(str(tmp), unet_lora_layers=layers)
        else:
            unet.save_pretrained(tmp)

    replace_dir(target, write)


class MapoTrainer(Trainer):
    command = "train-mapo"
    plotted = ("loss", "mse_w", "mse_l", "margin", "win_rate")
    default_data = "mapo/pairs.jsonl"
    opts: MapoOptions

    def __init__(self, opts: MapoOptions) -> None:
        super().__init__(opts)
        self.heldout = opts.eval_data or (str(example("mapo/heldout.jsonl")) if opts.data is None else None)

    def run_name(self) -> str:
        return f"train-{self.opts.loss}"

    def check(self) -> None:
        if self.opts.loss not in LOSSES:
            raise LmlabError(f"Unknown --loss '{self.opts.loss}'.", hint="choose mapo or dpo")
        super().check()

    def setup(self, accelerator: Any) -> tuple[torch.nn.Module, DiffusionPreferenceTask]:
        opts = self.opts
        self.skips = SkipLog()
        self.pairs = _load_pairs(self.data, self.skips)
        self.held = _load_pairs(self.heldout, SkipLog()) if self.heldout else []
        log(f"{len(self.pairs)} preference pairs from {self.data}"
            + (f" ({self.skips.summary()})" if self.skips.total else ""))
        with accelerator.main_process_first():
            self.parts = load_diffusion(opts.model)
        vae_scale = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
        self.resolution = opts.resolution or self.parts.unet.config.sample_size * vae_scale
        reference = copy.deepcopy(self.parts.unet).requires_grad_(False).eval() if opts.loss == "dpo" else None
        if opts.lora:
            _add_lora(self.parts.unet, opts.lora_r, opts.lora_alpha)
        if opts.gradient_checkpointing:
            self.parts.unet.enable_gradient_checkpointing()
        self.task = DiffusionPreferenceTask(
            self.pairs, self.parts, loss=opts.loss, beta=opts.beta, snr_value=opts.snr_value,
            beta_dpo=opts.beta_dpo, resolution=self.resolution, seed=opts.seed, cache_latents=opts.cache_latents,
            reference=reference, device=accelerator.device)
        return self.parts.unet, self.task

    def before_training(self, run: Any, model: torch.nn.Module, accelerator: Any) -> None:
        opts = self.opts
        self.prompts = [p.caption for p in (self.held or self.pairs)[:opts.samples]]
        model.to(accelerator.device)  # where the task put the VAE and text encoders: the sampler uses them all
        self.before_gap = heldout_gap(self.task, model, self.held, opts.seed) if self.held else None
        self.before = sample_grid(self.parts, self.prompts, self.resolution, opts.sample_steps, opts.seed) \
            if run.main and self.prompts else []

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        summary: dict[str, Any] = {"loss": self.opts.loss, "pairs": len(self.pairs), "skipped": self.skips.as_dict(),
                                   "resolution": self.resolution}
        if self.held:
            after_gap = heldout_gap(self.task, result["model"], self.held, self.opts.seed)
            summary["heldout"] = {"pairs": len(self.held), "before": self.before_gap, "after": after_gap}
        return summary

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        opts = self.opts
        _save_unet(self.parts, result["model"], opts.lora, run.path / ("unet_lora" if opts.lora else "unet"))
        if self.before:
            # the trained weights whole: under FSDP `parts.unet` holds only shards, and this runs on one process
            trained = dataclasses.replace(self.parts, unet=result["model"])
            after = sample_grid(trained, self.prompts, self.resolution, opts.sample_steps, opts.seed)
            summary["samples"] = str(save_grid(self.before, after, self.prompts, run.path / "samples.png"))

    def title(self) -> str:
        return f"{self.opts.loss.upper()} · {self.opts.model}"

    def notes(self, summary: dict[str, Any]) -> list[str]:
        if "heldout" not in summary:
            return []
        h = summary["heldout"]
        return [f"held-out gap mse_w − mse_l: {h['before']['gap']:+.5f} → {h['after']['gap']:+.5f} "
                f"(winner lower: {h['before']['winner_lower']:.2f} → {h['after']['winner_lower']:.2f})"]


def run_demo(output_dir: str, quick: bool) -> None:
    """MaPO's step of `lmlab demo`: tiny-sdxl learns to prefer the flat renderings of the bundled pairs."""
    summary = MapoTrainer(MapoOptions(output_dir=Path(output_dir) / "mapo-tiny-sdxl", max_steps=40, lr=1e-3,
                                      overwrite=True, samples=3, sample_steps=10)).run()
    held = summary["heldout"]
    err.print(f"{summary['steps']} steps · held-out mse_w − mse_l {held['before']['gap']:+.5f} → "
              f"{held['after']['gap']:+.5f} · winner lower {held['before']['winner_lower']:.2f} → "
              f"{held['after']['winner_lower']:.2f} · samples: {summary.get('samples')} → "
              f"[bold]{summary['run_dir']}[/bold]")
