"""`lmlab train-mapo`: margin-aware preference optimisation of text-to-image diffusion models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab.core import options as o
from lmlab.core.console import err, print_json, set_quiet
from lmlab.core.errors import LmlabError
from lmlab.core.report import summary_table


def train_mapo(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny-sdxl, a local diffusers folder (SDXL or "
                     "SD-1.x), or a Hub id.")] = "tiny-sdxl",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Pick-a-Pic-style pairs (jpg_0, jpg_1, label_0, "
                    "label_1, caption): Parquet, saved HF dataset, Hub id, or JSONL with image paths (default: "
                    "bundled examples/mapo/pairs.jsonl).", show_default=False)] = None,
    heldout: Annotated[str | None, typer.Option("--heldout", help="Held-out pairs to measure alignment before and "
                       "after training (default with bundled data: examples/mapo/heldout.jsonl).",
                       show_default=False)] = None,
    output_dir: o.OutputDirOpt = None,
    loss: Annotated[str, typer.Option("--loss", help="mapo (reference-free) or dpo (Diffusion-DPO, frozen "
                    "reference UNet).")] = "mapo",
    beta: Annotated[float, typer.Option("--beta", min=0.0, help="MaPO β, weight of the margin term.")] = 0.1,
    snr_value: Annotated[float, typer.Option("--snr-value", min=0.0, help="s in f(x) = s·x / (exp(s·x) − 1).")] = 0.5,
    beta_dpo: Annotated[float, typer.Option("--beta-dpo", min=0.0, help="Diffusion-DPO β.")] = 5000.0,
    resolution: Annotated[int | None, typer.Option("--resolution", min=8, help="Training resolution (default: "
                          "the UNet's sample size × VAE factor).", show_default=False)] = None,
    max_steps: o.MaxStepsOpt = 30,
    batch_size: o.BatchSizeOpt = 4,
    grad_accum: o.GradAccumOpt = 1,
    lr: o.LrOpt = 1e-5,
    schedule: o.ScheduleOpt = "constant",
    warmup_steps: o.WarmupOpt = 0,
    max_grad_norm: o.MaxGradNormOpt = 1.0,
    lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Train LoRA adapters on the UNet's attention "
                    "instead of the full UNet.")] = False,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")] = 8,
    cache_latents: Annotated[bool, typer.Option("--cache-latents", help="Encode each pair once (centre crop, no "
                             "flip) and reuse the latents.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute the UNet's "
                                      "block activations in the backward instead of keeping them: less memory "
                                      "at full resolution, a slower step.")] = False,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Prompts in the before/after sample grid.")] = 4,
    sample_steps: Annotated[int, typer.Option("--sample-steps", min=1, help="Denoising steps per sample.")] = 20,
    save_every: o.SaveEveryOpt = 50,
    seed: o.SeedOpt = 42,
    resume: o.ResumeOpt = None,
    config: o.ConfigOpt = None,
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Align a text-to-image diffusion model to preference pairs with MaPO (or Diffusion-DPO for comparison)."""
    try:
        from lmlab.plugins.mapo.train import MapoOptions, run_mapo
    except ImportError as exc:
        raise LmlabError(f"train-mapo needs the diffusion extra ({exc.name} is missing).",
                         hint="pip install 'lmlab[diffusion]'") from exc

    set_quiet(quiet)
    summary = run_mapo(MapoOptions(
        model=model, data=data, heldout=heldout, output_dir=output_dir, loss=loss, beta=beta, snr_value=snr_value,
        beta_dpo=beta_dpo, resolution=resolution, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, schedule=schedule, warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, lora=lora, lora_r=lora_r,
        lora_alpha=lora_alpha, cache_latents=cache_latents, gradient_checkpointing=gradient_checkpointing,
        samples=samples, sample_steps=sample_steps,
        save_every=save_every, seed=seed, resume=Path(resume) if resume else None))
    if json_output:
        print_json(summary)
    elif not quiet:
        err.print(summary_table("train-mapo", {k: v for k, v in summary.items() if not isinstance(v, dict)}))
        if "heldout" in summary:
            h = summary["heldout"]
            err.print(f"held-out gap mse_w − mse_l: {h['before']['gap']:+.5f} → {h['after']['gap']:+.5f} "
                      f"(winner lower: {h['before']['winner_lower']:.2f} → {h['after']['winner_lower']:.2f})")
        err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")
