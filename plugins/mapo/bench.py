"""`lmlab bench mapo`: MaPO against Diffusion-DPO (its anchor, the MaPO paper), side by side, in one run.

What is compared (docs/benchmarks.md): the real training step of `lmlab train-mapo`, i.e.
`DiffusionPreferenceTask` with loss "mapo" and with loss "dpo" driven by the shared loop `core.training.loop.train`
(through `core.bench.replay`), with its AdamW, clipping and schedule. DPO gets a frozen deep copy of the UNet as
its reference, exactly as plugins/mapo/train.py builds it. Both run on the same model (same folder, same UNet
weights), the same pairs, the same batches (collated once per worker after seeding, so the same random crops
and flips, then handed to the loop step by step), the same noise and timesteps (the loop seeds the global RNG
before the first step and neither loss draws from it differently), the same batch size, resolution, lr 1e-5
constant, grad clip 1.0, full fine-tuning in float32 (`--precision fp32` for the loop) on the same device
(`--device`; each worker sees no other) with the same number of torch threads. The report checks
the sameness: the initial UNet and the collated batches hash the same, and both systems see the same denoising
errors (mse_w, mse_l) on the first step, before any update.

Each system runs in its own subprocess so that its peak memory is its own. Per system we report:
- step time: the median over the timed steps (after 2 untimed warm-up steps) of the loop's own `step_time`:
  the loss's forward (frozen VAE encode and text encoders included, since they run inside the task's loss in
  the default path; with --cache-latents the VAE runs once at collation instead), backward, clipping, the AdamW
  step and the schedule. Collation happens before the loop (the loop's collation hands the batch out).
  pairs/s = batch size / median step time. Timing hooks on the real task and optimizer break the step down
  (frozen encoders, policy UNet forward, reference forward, backward + clipping, AdamW step, the rest), which
  says what dominates it (on a GPU each part's clock waits for the device's queued work, so the parts add up).
- peak memory (settings["memory_source"]: the peak RSS on the CPU, CUDA's max_memory_allocated on a GPU), and its
  increase over the memory in use once the policy parts (on the device), the pairs and the batches are loaded
  (the peak is reset there; on the CPU that needs Linux). DPO's reference UNet is built inside the measured
  region: holding it is part of DPO's cost, as are gradients, AdamW state and activations for both.
- peak tensor memory: the most bytes held at once by tensors created in the measured region (the reference, the
  AdamW state, gradients, activations and every transient), counted by core.bench.tensor_memory.TensorPeak over the
  warm-up steps, i.e. what torch.cuda.max_memory_allocated() minus the loaded models would report on a GPU. It
  leaves out what the C allocator keeps after tensors are freed, which RSS counts.

tiny-sdxl's UNet is tiny (1M parameters, against a 660k-parameter VAE that runs at full pixel resolution), so the
frozen encoders and the activations both systems hold weigh far more than at SDXL scale, where the UNet's
weights, gradients and AdamW state dominate. `--unet-scale N` builds a wider UNet (channel widths × N, random
init from --seed) from the same config, other parts unchanged, to see the regime the paper measured in; the
memory targets are judged at `--unet-scale 8` (or wider).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, machine
from lmlab.core.bench.replay import replay_training
from lmlab.core.bench.report import emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, parse_systems, run_systems, systems_option
from lmlab.core.bench.worker import clock, memory_mb, read_peak, start_peak, tensors_sha256, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt
from lmlab.core.kernel.errors import LmlabError

SYSTEMS = {"mapo": System(), "dpo": System()}
SystemsOpt = systems_option(SYSTEMS)
WARMUP_STEPS = 2
LR = 1e-5
MAX_GRAD_NORM = 1.0
BETA, SNR_VALUE, BETA_DPO = 0.1, 0.5, 5000.0
SYNTHETIC_PAIRS = 32
WORKER = "lmlab.plugins.mapo.bench:run_system"  # what each worker subprocess runs (core.bench.worker)
TARGETS = {"step_time_mapo_vs_dpo": ("<=", 0.8), "peak_mem_increase_mapo_vs_dpo": ("<=", 0.85),
           "peak_tensor_mapo_vs_dpo": ("<=", 0.85)}
MEMORY_TARGETS = ("peak_mem_increase_mapo_vs_dpo", "peak_tensor_mapo_vs_dpo")
JUDGED_SCALE = 8  # the UNet scale from which weights, gradients and AdamW state dominate, as at SDXL scale
PARTS = ("frozen_encoders", "policy_forward", "reference_forward", "backward_and_clip", "optimizer", "rest")


def bench_mapo(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny-sdxl or a local diffusers folder.")] = (
        "tiny-sdxl"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Preference pairs per step.")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, help=f"Timed optimizer steps (after {WARMUP_STEPS} untimed "
                     "warm-up steps).")] = 8,
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
    systems: SystemsOpt = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batches, noise, timesteps (and of the wider "
                    "UNet's init).")] = 42,
    device: DeviceOpt = "auto",
) -> None:
    """MaPO vs Diffusion-DPO training step time and memory on the same UNet, pairs, batches and noise."""
    chosen = parse_systems(systems, SYSTEMS)
    where = device_settings(device)
    threads = cpu_count()
    settings: dict[str, Any] = {
        "model": model, "unet_scale": unet_scale, "batch_size": batch_size, "resolution": resolution,
        "timed_steps": steps, "warmup_steps": WARMUP_STEPS, "seed": seed, "lr": LR, "schedule": "constant",
        "optimizer": "AdamW(betas=(0.9, 0.999), weight_decay=0), the training loop's (fused kernel on the CPU)",
        "max_grad_norm": MAX_GRAD_NORM, "beta": BETA,
        "snr_value": SNR_VALUE, "beta_dpo": BETA_DPO, "cache_latents": cache_latents,
        "gradient_checkpointing": gradient_checkpointing, "dtype": "float32", **where, "threads": threads,
        "fine_tuning": "full UNet",
        "step_time": "the shared training loop's step_time (train-mapo's step: loss forward with the frozen "
                     "encoders, backward, clip, AdamW step, schedule); batches collated before the loop",
        "memory_ratio_uses": "peak memory increase over the memory in use after the policy parts, pairs and batches "
                             "are loaded "
                             "(DPO's reference UNet is built inside the measured region)",
        "memory_target_judged_at": f"--unet-scale {JUDGED_SCALE} (or wider): there the UNet's weights, gradients "
                                   "and AdamW state dominate memory, as at SDXL scale; at smaller scales the "
                                   "activations both systems hold dominate, and the ratio says little about SDXL",
        "memory_target_judged_this_run": unet_scale >= JUDGED_SCALE,
    }
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-mapo-") as tmp:
        data_path, settings["data"] = _data(data, Path(tmp) / "pairs")
        load = _model_folder(model, unet_scale, seed, Path(tmp) / "model") if unet_scale > 1 else model
        results = run_systems("mapo", SYSTEMS, chosen, WORKER, {**settings, "load": load, "data_path": data_path},
                              threads=threads, detail=f"{WARMUP_STEPS} warm-up + {steps} timed steps, batch "
                                                      f"{batch_size}, UNet ×{unet_scale}, {threads} threads, "
                                                      f"{where['device']}")
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
        from lmlab.core.files.paths import example

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
            "peak_mem_increase_mapo_vs_dpo": ratio(mapo["peak_memory_increase_mb"], dpo["peak_memory_increase_mb"]),
            "peak_memory_mapo_vs_dpo": ratio(mapo["peak_memory_mb"], dpo["peak_memory_mb"]),
            "peak_tensor_mapo_vs_dpo": ratio(mapo["peak_tensor_mb"], dpo["peak_tensor_mb"])}


def _print_table(report: dict[str, Any]) -> None:
    s, results = report["settings"], report["results"]
    scale = f" (UNet ×{s['unet_scale']})" if s["unet_scale"] > 1 else ""
    lines = [f"{name} step (median s): " + " · ".join(f"{k.replace('_', ' ')} {v:.4f}"
                                                       for k, v in r["step_breakdown_s"].items() if v)
             for name, r in results.items() if ran(r)]
    dpo = results.get("dpo", {})
    if "same_init_as_mapo" in dpo:
        lines.append(f"same initial UNet: {dpo['same_init_as_mapo']}, same batches: {dpo['same_batches_as_mapo']}, "
                     f"first-step |Δ mse|: {dpo['first_step_mse_abs_diff_vs_mapo']:.1e}")
    lines.append(f"[dim]memory ({s['memory_source']}): peak increase over the memory in use after the policy parts "
                 "and data are loaded, and peak "
                 "bytes of tensors created after that point (a GPU's max_memory_allocated); DPO's reference UNet "
                 f"counts in both. The memory targets are judged at --unet-scale {JUDGED_SCALE} (or wider).[/dim]")
    not_judged = {} if s["memory_target_judged_this_run"] else {
        key: f"judged at --unet-scale {JUDGED_SCALE}, where weights dominate as at SDXL scale; this run is "
             f"×{s['unet_scale']}" for key in MEMORY_TARGETS}
    print_results(report, f"MaPO vs Diffusion-DPO · {s['model']}{scale} · {s['unet_params'] / 1e6:.1f}M UNet "
                          f"params · batch {s['batch_size']} · {s['resolution']}px · {s['timed_steps']} timed steps · "
                          f"{s['threads']} threads · fp32 {s['device']}",
                  ("median step time s", "pairs/s", "peak memory MB", "peak memory increase MB", "peak tensors MB"),
                  lambda r: (f"{r['step_time_s']:.4f}", f"{r['pairs_per_s']:.2f}", f"{r['peak_memory_mb']:.0f}",
                             f"{r['peak_memory_increase_mb']:.0f}", f"{r['peak_tensor_mb']:.0f}"),
                  TARGETS, lines=lines, not_judged=not_judged)


# ---------------------------------------------------------------------------------------------------------
# Worker side: one system in its own process.


class _StepParts:
    """Where each step's time goes, from timing hooks on the real task (its frozen encoders, its reference
    forward, the end of its loss) and on the loop's AdamW (torch's global optimizer step hooks)."""

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self.steps: list[dict[str, float]] = []
        self.device = torch.device(device)

    def add(self, part: str, seconds: float) -> None:
        self.steps[-1][part] = self.steps[-1].get(part, 0.0) + seconds

    def optimizer_hooks(self) -> tuple[Any, Any]:
        """(pre, post) hook handles; the pre hook also closes the backward (and clipping) of the step."""
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
            if isinstance(optimizer, torch.optim.AdamW):
                step = self.steps[-1]
                step["optimizer_start"] = clock(self.device)
                step["backward_and_clip"] = step["optimizer_start"] - step["loss_end"]

        def post(optimizer: Any, args: Any, kwargs: Any) -> None:
            if isinstance(optimizer, torch.optim.AdamW):
                self.steps[-1]["optimizer"] = clock(self.device) - self.steps[-1]["optimizer_start"]

        return register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)

    def breakdown(self, step: dict[str, float], step_time: float) -> dict[str, float]:
        frozen, reference = step.get("frozen_encoders", 0.0), step.get("reference_forward", 0.0)
        parts = {"frozen_encoders": frozen, "policy_forward": step["loss"] - frozen - reference,
                 "reference_forward": reference, "backward_and_clip": step["backward_and_clip"],
                 "optimizer": step["optimizer"]}
        return {**parts, "rest": step_time - sum(parts.values())}


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Load the parts and pairs, collate the batches, then (memory measured from here) run train-mapo's step in
    the shared loop and time it."""
    import copy
    import gc

    import torch

    from lmlab.core.bench.tensor_memory import TensorPeak
    from lmlab.core.files.records import SkipLog, load_records
    from lmlab.core.kernel.console import set_quiet
    from lmlab.core.training.loop import TrainConfig, make_accelerator
    from lmlab.plugins.mapo.data import FIELDS, build_pairs
    from lmlab.plugins.mapo.models import load_diffusion
    from lmlab.plugins.mapo.task import DiffusionPreferenceTask

    device = worker_device(settings)
    timing = _StepParts(device)

    class TimedTask(DiffusionPreferenceTask):
        """The training task, unchanged, with the time spent in its loss, frozen parts and reference recorded."""

        def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            timing.steps.append({})
            tick = clock(device)
            out = super().loss(model, batch, totals)
            timing.steps[-1]["loss_end"] = clock(device)
            timing.add("loss", timing.steps[-1]["loss_end"] - tick)
            return out

        def encode_images(self, pixels: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
            tick = clock(device)
            out = super().encode_images(pixels, sample=sample)
            if timing.steps:  # not at collation (--cache-latents)
                timing.add("frozen_encoders", clock(device) - tick)
            return out

        def encode_text(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            tick = clock(device)
            out = super().encode_text(batch)
            timing.add("frozen_encoders", clock(device) - tick)
            return out

        def denoise(self, unet: torch.nn.Module, *args: Any) -> torch.Tensor:
            tick = clock(device)
            out = super().denoise(unet, *args)
            if unet is self.reference:
                timing.add("reference_forward", clock(device) - tick)
            return out

    set_quiet(True)
    torch.set_num_threads(settings["threads"])
    accelerator = make_accelerator("fp32")  # the worker sees only `device`: accelerate places everything there
    pairs = build_pairs(load_records(settings["data_path"], required=FIELDS), SkipLog())
    parts = load_diffusion(settings["load"])
    unet = parts.unet.to(device)  # on the device before memory is measured, as the frozen parts are
    vae_scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    resolution = settings["resolution"] or unet.config.sample_size * vae_scale
    task = TimedTask(pairs, parts, loss=system, beta=BETA, snr_value=SNR_VALUE, beta_dpo=BETA_DPO,
                     resolution=resolution, seed=settings["seed"], cache_latents=settings["cache_latents"],
                     reference=None, device=accelerator.device)
    n_steps = WARMUP_STEPS + settings["timed_steps"]
    order: list[list[int]] = []
    epoch = 0
    while len(order) < n_steps:
        order += task.batches(epoch, settings["batch_size"])
        epoch += 1
    order = order[:n_steps]
    torch.manual_seed(settings["seed"])  # the same random crops and flips for both systems
    batches = [task.collate(indices) for indices in order]
    init_sha = tensors_sha256(sorted(unet.state_dict().items()))
    batches_sha = tensors_sha256([(f"{i}.{k}", v) for i, b in enumerate(batches) for k, v in sorted(b.items())])
    if settings["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()  # as plugins/mapo/train.py does; DPO's reference runs without grad
    gc.collect()
    after_load, peak_was_reset = start_peak(device)

    # Measured region: everything below is what training with this objective costs. The warm-up steps also
    # count live tensors (TensorPeak's per-operator bookkeeping stays out of the timed steps); by the second
    # one the AdamW state exists, so their peak is a steady-state step's.
    tensors = TensorPeak()
    with tensors:
        if system == "dpo":
            task.reference = copy.deepcopy(unet).requires_grad_(False).eval()  # as plugins/mapo/train.py does
    after_reference = memory_mb(device)

    def count_tensors_in_warmup(step: int) -> None:
        if step == 0:
            tensors.__enter__()
        elif step == WARMUP_STEPS:
            tensors.__exit__(None, None, None)

    cfg = TrainConfig(max_steps=n_steps + 1, batch_size=settings["batch_size"], lr=LR, schedule="constant",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, seed=settings["seed"],
                      save_every=10**9)
    hooks = timing.optimizer_hooks()
    try:
        records, peak = replay_training(unet, task, order, cfg, accelerator, peak=lambda: read_peak(device),
                                        collated=batches,
                                        before_step=count_tensors_in_warmup)
    finally:
        for hook in hooks:
            hook.remove()

    times = [r["step_time"] for r in records][WARMUP_STEPS:]
    breakdowns = [timing.breakdown(p, r["step_time"]) for p, r in zip(timing.steps, records, strict=True)]
    step_time = statistics.median(times)
    reference_mb = sum(p.numel() * p.element_size() for p in task.reference.parameters()) / 2**20 \
        if task.reference is not None else 0.0
    return {
        "step_time_s": round(step_time, 5),
        "pairs_per_s": round(settings["batch_size"] / step_time, 3),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_increase_mb": round(peak - after_load, 1),
        "memory_after_load_mb": round(after_load, 1),
        "peak_tensor_mb": round(tensors.peak / 2**20, 1),
        "reference_unet_memory_mb": round(after_reference - after_load, 1),
        "reference_unet_param_mb": round(reference_mb, 1),
        "peak_reset_after_load": peak_was_reset,
        "step_breakdown_s": {k: round(statistics.median(b[k] for b in breakdowns[WARMUP_STEPS:]), 5) for k in PARTS},
        "step_times_s": [round(t, 5) for t in times],
        "first_step": {k: records[0][k] for k in ("loss", "mse_w", "mse_l")},
        "final_loss": records[-1]["loss"],
        "init_sha256": init_sha,
        "batches_sha256": batches_sha,
        "resolution": resolution,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "pairs": len(pairs),
        "torch_threads": torch.get_num_threads(),
    }
