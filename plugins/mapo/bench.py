"""`lmlab bench mapo`: MaPO against Diffusion-DPO (its anchor, METHODS.md §2), side by side, in one run.

What is compared (DESIGN.md "Performance: how we measure"): the real training path of `lmlab train-mapo`,
`DiffusionPreferenceTask` with loss "mapo" and with loss "dpo" (DPO gets a frozen deep copy of the UNet as its
reference, exactly as plugins/mapo/train.py builds it), on the same model (same folder, same UNet weights),
the same pairs, the same batches (collated once per worker after seeding, so the same random crops and flips),
the same noise and timesteps (the global RNG is seeded again before the first step and neither loss draws
from it differently), the same batch size, resolution, lr 1e-5 constant, AdamW, grad clip 1.0, full
fine-tuning in float32 on the CPU with the same number of torch threads. The report checks the sameness: the
initial UNet and the collated batches hash the same, and both systems see the same denoising errors
(mse_w, mse_l) on the first step, before any update.

Each system runs in its own subprocess so that its peak memory is its own. Per system we report:
- step time: the median over the timed steps (after 2 untimed warm-up steps) of one optimizer step, i.e.
  the loss's forward (frozen VAE encode and text encoders included, since they run inside the task's loss in
  the default path; with --cache-latents the VAE runs once at collation instead), backward, clipping and the
  AdamW step. Collation is done before the timed region, for both. pairs/s = batch size / median step time.
  The step is also broken down (frozen encoders, policy UNet forward, reference forward, backward, optimizer),
  which says what dominates it.
- peak RSS, and its increase over the RSS measured once the policy parts, the pairs and the batches are loaded
  (the peak is reset there, Linux). DPO's reference UNet is built inside the measured region: holding it is
  part of DPO's cost, as are gradients, AdamW state and activations for both.
- peak tensor memory: the most bytes held at once by tensors created in the measured region (the reference, the
  AdamW state, gradients, activations and every transient), counted by core.tensor_memory.TensorPeak over the
  warm-up steps, i.e. what torch.cuda.max_memory_allocated() minus the loaded models would report on a GPU. It
  leaves out what the C allocator keeps after tensors are freed, which RSS counts.

tiny-sdxl's UNet is tiny (1M parameters, against a 660k-parameter VAE that runs at full pixel resolution), so the
frozen encoders weigh far more than at SDXL scale, where the UNet dominates. `--unet-scale N` builds a wider UNet
(channel widths × N, random init from --seed) from the same config, other parts unchanged, to see the regime
the paper measured in.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core import options as o
from lmlab.core.bench import (
    cpu_count,
    emit,
    machine,
    make_report,
    parse_systems,
    peak_rss_mb,
    print_ratios,
    ran,
    ratio,
    reset_peak_rss,
    rss_mb,
    run_measured,
    tensors_sha256,
)
from lmlab.core.errors import LmlabError

SYSTEMS = ("mapo", "dpo")
WARMUP_STEPS = 2
LR = 1e-5
MAX_GRAD_NORM = 1.0
BETA, SNR_VALUE, BETA_DPO = 0.1, 0.5, 5000.0
SYNTHETIC_PAIRS = 32
WORKER = "lmlab.plugins.mapo.bench:run_system"  # what each worker subprocess runs (core.bench.run_worker)
TARGETS = {"step_time_mapo_vs_dpo": ("<=", 0.8), "peak_mem_increase_mapo_vs_dpo": ("<=", 0.85),
           "peak_tensor_mapo_vs_dpo": ("<=", 0.85)}
PARTS = ("frozen_encoders", "policy_forward", "reference_forward", "backward", "optimizer")


def bench_mapo(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny-sdxl or a local diffusers folder.")] = (
        "tiny-sdxl"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Preference pairs per step.")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed optimizer steps (after 1 untimed warm-up "
                     "step).")] = 8,
    resolution: Annotated[int | None, typer.Option("--resolution", min=8, help="Training resolution (default: "
                          "the UNet's sample size × VAE factor).", show_default=False)] = None,
    unet_scale: Annotated[int, typer.Option("--unet-scale", min=1, help="Multiply the UNet's channel widths by "
                          "N (a random-init UNet from the model's UNet config; other parts unchanged), so the "
                          "UNet dominates the step as it does at SDXL scale.")] = 1,
    cache_latents: Annotated[bool, typer.Option("--cache-latents/--no-cache-latents", help="Encode each pair once "
                             "at collation (outside the timed step) instead of in every step.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing",
                                      help="Both systems recompute the UNet's block activations in the backward "
                                      "(train-mapo --gradient-checkpointing).")] = False,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Pick-a-Pic-style pairs (default: bundled "
                    "examples/mapo/pairs.jsonl, else synthetic pairs).", show_default=False)] = None,
    systems: Annotated[str, typer.Option("--systems", help="Comma-separated systems to run: mapo, dpo.")] = (
        "mapo,dpo"),
    json_output: o.JsonOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batches, noise, timesteps (and of the wider "
                    "UNet's init).")] = 42,
) -> None:
    """MaPO vs Diffusion-DPO training step time and memory on the same UNet, pairs, batches and noise."""
    from lmlab.core.console import log

    chosen = parse_systems(systems, SYSTEMS)
    threads = cpu_count()
    settings: dict[str, Any] = {
        "model": model, "unet_scale": unet_scale, "batch_size": batch_size, "resolution": resolution,
        "timed_steps": steps, "warmup_steps": WARMUP_STEPS, "seed": seed, "lr": LR, "schedule": "constant",
        "optimizer": "AdamW(betas=(0.9, 0.999), weight_decay=0), the training loop's (fused kernel on the CPU)",
        "max_grad_norm": MAX_GRAD_NORM, "beta": BETA,
        "snr_value": SNR_VALUE, "beta_dpo": BETA_DPO, "cache_latents": cache_latents,
        "gradient_checkpointing": gradient_checkpointing, "dtype": "float32",
        "device": "cpu", "threads": threads, "fine_tuning": "full UNet",
        "step_time": "loss forward (frozen encoders included) + backward + clip + AdamW step; collation untimed",
        "memory_ratio_uses": "peak RSS increase over the RSS after the policy parts, pairs and batches are loaded "
                             "(DPO's reference UNet is built inside the measured region)",
    }
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-mapo-") as tmp:
        data_path, settings["data"] = _data(data, Path(tmp) / "pairs")
        load = _model_folder(model, unet_scale, seed, Path(tmp) / "model") if unet_scale > 1 else model
        results: dict[str, dict[str, Any]] = {}
        for system in chosen:
            log(f"bench mapo: running {system} ({WARMUP_STEPS} warm-up + {steps} timed steps, batch {batch_size}, "
                f"UNet ×{unet_scale}, {threads} threads)…")
            results[system] = run_measured(WORKER, system, {**settings, "load": load, "data_path": data_path},
                                           threads=threads, retry_hint=f"rerun with --systems {system} and "
                                           "LMLAB_DEBUG=1 for the worker's trace")
    for key in ("resolution", "unet_params", "pairs"):
        values = {r.pop(key) for r in results.values()}
        settings[key] = values.pop() if len(values) == 1 else sorted(values)
    _compare(results)
    report = make_report("mapo", machine(threads, ("torch", "diffusers")), settings, results, _ratios(results))
    emit(report, json_output, _print_table)


# ---------------------------------------------------------------------------------------------------------
# Parent side.


def _data(data: str | None, scratch: Path) -> tuple[str, str]:
    """(path the workers load, what the report says about it): --data, the bundled pairs, or synthetic pairs."""
    if data:
        return data, data
    try:
        from lmlab.core.paths import example

        bundled = example("mapo/pairs.jsonl")
    except LmlabError:
        bundled = None
    if bundled is not None and bundled.is_file():
        return str(bundled), "examples/mapo/pairs.jsonl (bundled)"
    path = synthetic_pairs(scratch, SYNTHETIC_PAIRS)
    return str(path), f"{SYNTHETIC_PAIRS} synthetic 64×64 flat-vs-noisy pairs"


def synthetic_pairs(folder: Path, n: int, size: int = 64) -> Path:
    """n Pick-a-Pic-style pairs (a flat coloured square wins over a noisy copy) as JSONL with PNG paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 160, 60), (40, 60, 220), (230, 200, 30), (150, 50, 200), (30, 190, 190)]
    rows = []
    for i in range(n):
        flat = np.full((size, size, 3), 235, np.uint8)
        flat[size // 4:3 * size // 4, size // 4:3 * size // 4] = colours[i % len(colours)]
        noisy = np.clip(flat + rng.normal(0, 40, flat.shape), 0, 255).astype(np.uint8)
        Image.fromarray(flat).save(folder / "img" / f"{i}_flat.png")
        Image.fromarray(noisy).save(folder / "img" / f"{i}_noisy.png")
        flat_first = i % 2 == 0
        first, second = ("flat", "noisy") if flat_first else ("noisy", "flat")
        rows.append({"jpg_0": f"img/{i}_{first}.png", "jpg_1": f"img/{i}_{second}.png",
                     "label_0": int(flat_first), "label_1": int(not flat_first), "caption": f"a square number {i}"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model_folder(model: str, scale: int, seed: int, target: Path) -> str:
    """A diffusers folder sharing every part of `model` (symlinks) except the UNet: the same UNet config with
    channel widths × scale, random init from `seed`."""
    import torch
    from diffusers import UNet2DConditionModel

    from lmlab.plugins.mapo.models import PRESETS, tiny_sdxl_folder

    source = tiny_sdxl_folder() if model in PRESETS else Path(model).expanduser()
    if not (source / "unet" / "config.json").is_file():
        raise LmlabError(f"--unet-scale needs tiny-sdxl or a local diffusers folder with unet/config.json; "
                         f"'{model}' is neither.", hint="drop --unet-scale, or pass --model tiny-sdxl")
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != "unet":
            (target / entry.name).symlink_to(entry.resolve())
    config = dict(UNet2DConditionModel.load_config(str(source / "unet")))
    config["block_out_channels"] = [c * scale for c in config["block_out_channels"]]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(str(target / "unet"))
    return str(target)


def _compare(results: dict[str, dict[str, Any]]) -> None:
    """Whether both systems started from the same UNet, batches and first-step errors (before any update)."""
    mapo, dpo = results.get("mapo"), results.get("dpo")
    if not ran(mapo) or not ran(dpo):
        return
    dpo["same_init_as_mapo"] = mapo["init_sha256"] == dpo["init_sha256"]
    dpo["same_batches_as_mapo"] = mapo["batches_sha256"] == dpo["batches_sha256"]
    dpo["first_step_mse_abs_diff_vs_mapo"] = max(
        abs(mapo["first_step"][k] - dpo["first_step"][k]) for k in ("mse_w", "mse_l"))


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    mapo, dpo = results.get("mapo"), results.get("dpo")
    if not ran(mapo) or not ran(dpo):
        return {}
    return {"step_time_mapo_vs_dpo": ratio(mapo["step_time_s"], dpo["step_time_s"]),
            "peak_mem_increase_mapo_vs_dpo": ratio(mapo["peak_rss_increase_mb"], dpo["peak_rss_increase_mb"]),
            "peak_rss_mapo_vs_dpo": ratio(mapo["peak_rss_mb"], dpo["peak_rss_mb"]),
            "peak_tensor_mapo_vs_dpo": ratio(mapo["peak_tensor_mb"], dpo["peak_tensor_mb"])}


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    scale = f" (UNet ×{s['unet_scale']})" if s["unet_scale"] > 1 else ""
    table = Table(title=f"MaPO vs Diffusion-DPO · {s['model']}{scale} · {s['unet_params'] / 1e6:.1f}M UNet params · "
                        f"batch {s['batch_size']} · {s['resolution']}px · {s['timed_steps']} timed steps · "
                        f"{s['threads']} threads · fp32 CPU")
    for column in ("system", "median step time s", "pairs/s", "peak RSS MB", "peak RSS increase MB",
                   "peak tensors MB"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, r in report["results"].items():
        table.add_row(name, f"{r['step_time_s']:.4f}", f"{r['pairs_per_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['peak_rss_increase_mb']:.0f}", f"{r['peak_tensor_mb']:.0f}")
    console = Console()
    console.print(table)
    print_ratios(console, report["ratios"], TARGETS)
    for name, r in report["results"].items():
        parts = " · ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in r["step_breakdown_s"].items() if v)
        console.print(f"{name} step (median s): {parts}")
    dpo = report["results"].get("dpo", {})
    if "same_init_as_mapo" in dpo:
        console.print(f"same initial UNet: {dpo['same_init_as_mapo']}, same batches: {dpo['same_batches_as_mapo']}, "
                      f"first-step |Δ mse|: {dpo['first_step_mse_abs_diff_vs_mapo']:.1e}")
    console.print("[dim]memory: peak RSS increase over the RSS after the policy parts and data are loaded, and peak "
                  "bytes of tensors created after that point (a GPU's max_memory_allocated); DPO's reference UNet "
                  "counts in both[/dim]")


# ---------------------------------------------------------------------------------------------------------
# Worker side: one system in its own process.


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Load the parts and pairs, collate the batches, then (memory measured from here) train and time."""
    import copy
    import gc

    import torch

    from lmlab.core.console import set_quiet
    from lmlab.core.data import SkipLog, load_records
    from lmlab.core.tensor_memory import TensorPeak
    from lmlab.core.training import make_optimizer
    from lmlab.plugins.mapo.data import FIELDS, build_pairs
    from lmlab.plugins.mapo.models import load_diffusion
    from lmlab.plugins.mapo.task import DiffusionPreferenceTask

    class TimedTask(DiffusionPreferenceTask):
        """The training task, unchanged, with the time spent in its frozen parts and reference recorded."""

        spent: dict[str, float]  # seconds per part in the current step

        def encode_images(self, pixels: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
            tick = time.perf_counter()
            out = super().encode_images(pixels, sample=sample)
            self.spent["frozen_encoders"] = self.spent.get("frozen_encoders", 0.0) + time.perf_counter() - tick
            return out

        def encode_text(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            tick = time.perf_counter()
            out = super().encode_text(batch)
            self.spent["frozen_encoders"] = self.spent.get("frozen_encoders", 0.0) + time.perf_counter() - tick
            return out

        def denoise(self, unet: torch.nn.Module, *args: Any) -> torch.Tensor:
            tick = time.perf_counter()
            out = super().denoise(unet, *args)
            if unet is self.reference:
                self.spent["reference_forward"] = time.perf_counter() - tick
            return out

    set_quiet(True)
    threads = settings["threads"]
    torch.set_num_threads(threads)
    pairs = build_pairs(load_records(settings["data_path"], required=FIELDS), SkipLog())
    parts = load_diffusion(settings["load"])
    unet = parts.unet
    vae_scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    resolution = settings["resolution"] or unet.config.sample_size * vae_scale
    task = TimedTask(pairs, parts, loss=system, beta=BETA, snr_value=SNR_VALUE, beta_dpo=BETA_DPO,
                     resolution=resolution, seed=settings["seed"], cache_latents=settings["cache_latents"],
                     reference=None, device=torch.device("cpu"))
    task.spent = {}
    n_steps = WARMUP_STEPS + settings["timed_steps"]
    order: list[list[int]] = []
    epoch = 0
    while len(order) < n_steps:
        order += task.batches(epoch, settings["batch_size"])
        epoch += 1
    torch.manual_seed(settings["seed"])  # the same random crops and flips for both systems
    batches = [task.collate(indices) for indices in order[:n_steps]]
    init_sha = tensors_sha256(sorted(unet.state_dict().items()))
    batches_sha = tensors_sha256([(f"{i}.{k}", v) for i, b in enumerate(batches) for k, v in sorted(b.items())])
    unet.train()
    if settings["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()  # as plugins/mapo/train.py does; DPO's reference runs without grad
    gc.collect()
    rss_after_load = rss_mb()
    peak_was_reset = reset_peak_rss()

    # Measured region: everything below is what training with this objective costs. The warm-up steps also
    # count live tensors (TensorPeak's per-operator bookkeeping stays out of the timed steps); by the second
    # one the AdamW state exists, so their peak is a steady-state step's.
    tensors = TensorPeak()
    with tensors:
        if system == "dpo":
            task.reference = copy.deepcopy(unet).requires_grad_(False).eval()  # as plugins/mapo/train.py does
        optimizer = make_optimizer(unet, 0.0, LR, (0.9, 0.999))  # the training loop's AdamW
    rss_after_reference = rss_mb()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    torch.manual_seed(settings["seed"])  # the same VAE samples, noise and timesteps for both systems
    times: list[float] = []
    breakdown: list[dict[str, float]] = []
    records: list[dict[str, float]] = []
    for step, batch in enumerate(batches):
        with tensors if step < WARMUP_STEPS else contextlib.nullcontext():
            task.spent = {}
            start = time.perf_counter()
            loss, metrics = task.loss(unet, batch, task.counts(batch))
            forward_done = time.perf_counter()
            loss.backward()
            backward_done = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
        times.append(end - start)
        frozen, reference = task.spent.get("frozen_encoders", 0.0), task.spent.get("reference_forward", 0.0)
        breakdown.append({"frozen_encoders": frozen, "policy_forward": forward_done - start - frozen - reference,
                          "reference_forward": reference, "backward": backward_done - forward_done,
                          "optimizer": end - backward_done})
        records.append({"loss": float(loss), **{k: float(v) for k, v in metrics.items()}})
    peak = peak_rss_mb()

    timed, timed_parts = times[WARMUP_STEPS:], breakdown[WARMUP_STEPS:]
    step_time = statistics.median(timed)
    reference_mb = sum(p.numel() * p.element_size() for p in task.reference.parameters()) / 2**20 \
        if task.reference is not None else 0.0
    return {
        "step_time_s": round(step_time, 5),
        "pairs_per_s": round(settings["batch_size"] / step_time, 3),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_increase_mb": round(peak - rss_after_load, 1),
        "rss_after_load_mb": round(rss_after_load, 1),
        "peak_tensor_mb": round(tensors.peak / 2**20, 1),
        "reference_unet_rss_mb": round(rss_after_reference - rss_after_load, 1),
        "reference_unet_param_mb": round(reference_mb, 1),
        "peak_reset_after_load": peak_was_reset,
        "step_breakdown_s": {k: round(statistics.median(p[k] for p in timed_parts), 5) for k in PARTS},
        "step_times_s": [round(t, 5) for t in timed],
        "first_step": {k: records[0][k] for k in ("loss", "mse_w", "mse_l")},
        "final_loss": records[-1]["loss"],
        "init_sha256": init_sha,
        "batches_sha256": batches_sha,
        "resolution": resolution,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "pairs": len(pairs),
        "torch_threads": torch.get_num_threads(),
    }
