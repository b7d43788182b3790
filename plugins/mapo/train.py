"""A MaPO (or Diffusion-DPO) run: pairs → shared loop → UNet/LoRA, sample grid, held-out alignment."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from lmlab.core.console import log
from lmlab.core.data import SkipLog, load_records
from lmlab.core.errors import LmlabError
from lmlab.core.models import replace_dir
from lmlab.core.paths import example
from lmlab.core.runs import RunDir, new_run_path
from lmlab.core.schedules import check_schedule
from lmlab.core.training import TrainOptions, finish_run, make_accelerator, shared_run_path, train
from lmlab.plugins.mapo.data import FIELDS, ImagePair, build_pairs
from lmlab.plugins.mapo.evaluate import heldout_gap
from lmlab.plugins.mapo.models import DiffusionParts, load_diffusion
from lmlab.plugins.mapo.task import DiffusionPreferenceTask

LOSSES = ("mapo", "dpo")
PLOTTED = ("loss", "mse_w", "mse_l", "margin", "win_rate")


@dataclass
class MapoOptions(TrainOptions):
    max_steps: int = 30
    lr: float = 1e-5
    model: str = "tiny-sdxl"
    data: str | None = None
    heldout: str | None = None
    loss: str = "mapo"
    beta: float = 0.1
    snr_value: float = 0.5
    beta_dpo: float = 5000.0
    resolution: int | None = None
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 8
    cache_latents: bool = False
    gradient_checkpointing: bool = False
    samples: int = 4
    sample_steps: int = 20


def _load_pairs(data: str, skips: SkipLog) -> list[ImagePair]:
    return build_pairs(load_records(data, required=FIELDS), skips)


def _add_lora(unet: torch.nn.Module, r: int, alpha: int) -> None:
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise LmlabError("--lora needs peft, which is not installed.", hint="pip install 'lmlab[lora]'") from exc
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def sample_grid(parts: DiffusionParts, prompts: list[str], resolution: int, steps: int, seed: int) -> list[Any]:
    """One image per prompt with fixed seeds, so before/after differ only by the training."""
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator().manual_seed(seed + i)
        images.append(pipe(prompt=prompt, num_inference_steps=steps, height=resolution, width=resolution,
                           generator=generator, output_type="pil").images[0])
    return images


def save_grid(before: list[Any], after: list[Any], prompts: list[str], out: Path) -> Path:
    """Rows: prompts; columns: before | after training."""
    size = before[0].width
    label = 14
    grid = Image.new("RGB", (2 * size + 8, label + len(prompts) * (size + label)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 1), "before", fill="black")
    draw.text((size + 10, 1), "after", fill="black")
    for row, (b, a, prompt) in enumerate(zip(before, after, prompts, strict=True)):
        top = label + row * (size + label)
        draw.text((2, top), prompt[:48], fill="black")
        grid.paste(b, (0, top + label))
        grid.paste(a, (size + 8, top + label))
    grid.save(out)
    return out


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


def run_mapo(opts: MapoOptions) -> dict[str, Any]:
    """Train and write the run directory; returns the summary."""
    if opts.loss not in LOSSES:
        raise LmlabError(f"Unknown --loss '{opts.loss}'.", hint="choose mapo or dpo")
    check_schedule(opts.schedule)
    data = opts.data or str(example("mapo/pairs.jsonl"))
    heldout = opts.heldout or (str(example("mapo/heldout.jsonl")) if opts.data is None else None)
    accelerator = make_accelerator(opts.precision)
    run_path = shared_run_path(accelerator, Path(opts.resume) if opts.resume else
                               new_run_path(f"train-{opts.loss}", opts.output_dir))
    skips = SkipLog()
    pairs = _load_pairs(data, skips)
    held = _load_pairs(heldout, SkipLog()) if heldout else []
    log(f"{len(pairs)} preference pairs from {data}" + (f" ({skips.summary()})" if skips.total else ""))
    with accelerator.main_process_first():
        parts = load_diffusion(opts.model)
    vae_scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    resolution = opts.resolution or parts.unet.config.sample_size * vae_scale
    reference = None
    if opts.loss == "dpo":
        reference = copy.deepcopy(parts.unet).requires_grad_(False).eval()
    if opts.lora:
        _add_lora(parts.unet, opts.lora_r, opts.lora_alpha)
    if opts.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
    run = RunDir(run_path, main=accelerator.is_main_process)
    if not opts.resume:
        run.write_config(f"train-{opts.loss}" if opts.loss == "dpo" else "train-mapo", {**asdict(opts), "data": data})
    task = DiffusionPreferenceTask(pairs, parts, loss=opts.loss, beta=opts.beta, snr_value=opts.snr_value,
                                   beta_dpo=opts.beta_dpo, resolution=resolution, seed=opts.seed,
                                   cache_latents=opts.cache_latents, reference=reference, device=accelerator.device)
    prompts = [p.caption for p in (held or pairs)[:opts.samples]]
    before_gap = heldout_gap(task, parts.unet.to(accelerator.device), held, opts.seed) if held else None
    before = sample_grid(parts, prompts, resolution, opts.sample_steps, opts.seed) if run.main and prompts else []
    cfg = opts.train_config()
    result = train(parts.unet, task, cfg, run, accelerator, resume=opts.resume is not None)
    unet = result["model"]
    summary: dict[str, Any] = {
        "command": "train-mapo", "loss": opts.loss, "run_dir": str(run.path), "steps": result["steps"],
        "train_seconds": result["train_seconds"], "pairs": len(pairs), "skipped": skips.as_dict(),
        "resolution": resolution, "final": {k: v for k, v in result["last"].items() if k != "step"}}
    if held:
        after_gap = heldout_gap(task, unet, held, opts.seed)
        summary["heldout"] = {"pairs": len(held), "before": before_gap, "after": after_gap}

    def save() -> None:
        _save_unet(parts, unet, opts.lora, run.path / ("unet_lora" if opts.lora else "unet"))
        if before:
            after = sample_grid(parts, prompts, resolution, opts.sample_steps, opts.seed)
            summary["samples"] = str(save_grid(before, after, prompts, run.path / "samples.png"))

    return finish_run(run, accelerator, summary, save, PLOTTED, "loss.png", f"{opts.loss.upper()} · {opts.model}")
