"""`lmlab bench mapo`: train-mapo's real step with MaPO against Diffusion-DPO on the same UNet, pairs, batches and noise
(docs/benchmarks.md#mapo-vs-diffusion-dpo says what is compared and how each figure is read)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Column, Ratio, Settings, System, bench_command, ran
from lmlab.core.commands import options as o
from lmlab.plugins.mapo.bench_inputs import prepare, training_inputs
from lmlab.plugins.mapo.step_parts import StepParts

WARMUP_STEPS, LR, MAX_GRAD_NORM, BETA, SNR_VALUE, BETA_DPO = 2, 1e-5, 1.0, 0.1, 0.5, 5000.0
JUDGED_SCALE = 8  # the UNet scale from which weights, gradients and AdamW state dominate, as at SDXL scale


@dataclass
class MapoBenchOptions(BenchOptions):
    model: str = o.option("tiny-sdxl", "tiny-sdxl or a local diffusers folder.", flags=("--model", "-m"),
                          panel=o.MODEL_AND_DATA)
    data: str | None = o.data_option("Pick-a-Pic-style pairs (default: examples/mapo/pairs.jsonl, else synthetic).")
    batch_size: int = o.option(4, "Preference pairs per step.", min=1)
    max_steps: int = o.option(8, f"Timed steps (after {WARMUP_STEPS} warm-up).", min=1, deprecated=("--steps",))
    resolution: int | None = o.option(None, "Training resolution (default: UNet sample size × VAE factor).", min=8)
    unet_scale: int = o.option(1, "Multiply the UNet's channel widths by N (random init from --seed, other parts "
                               "unchanged), so the UNet dominates the step as at SDXL scale.", min=1)
    cache_latents: bool = o.option(False, "Encode each pair once at collation (untimed), not in every step.",
                                   negatable=False)
    gradient_checkpointing: bool = o.option(False, "Both systems recompute UNet block activations in the backward.",
                                            negatable=False)


def _settings(opts: MapoBenchOptions) -> Settings:
    return {"model": opts.model, "unet_scale": opts.unet_scale, "batch_size": opts.batch_size, "seed": opts.seed,
            "resolution": opts.resolution, "timed_steps": opts.max_steps, "warmup_steps": WARMUP_STEPS, "lr": LR,
            "schedule": "constant", "max_grad_norm": MAX_GRAD_NORM, "beta": BETA, "snr_value": SNR_VALUE,
            "optimizer": "AdamW(betas=(0.9, 0.999), weight_decay=0), the training loop's (fused kernel on the CPU)",
            "beta_dpo": BETA_DPO, "cache_latents": opts.cache_latents, "dtype": "float32", "fine_tuning": "full UNet",
            "gradient_checkpointing": opts.gradient_checkpointing,
            "step_time": "the shared training loop's step_time (train-mapo's step: loss forward with the frozen "
                         "encoders, backward, clip, AdamW step, schedule); batches collated before the loop",
            "memory_ratio_uses": "peak memory increase over the memory in use after the policy parts, pairs and "
                                 "batches are loaded (DPO's reference UNet is built inside the measured region)",
            "memory_target_judged_at": f"--unet-scale {JUDGED_SCALE} (or wider): there the UNet's weights, gradients "
                                       "and AdamW state dominate memory, as at SDXL scale; at smaller scales the "
                                       "activations both systems hold dominate, and the ratio says little about SDXL",
            "memory_target_judged_this_run": opts.unet_scale >= JUDGED_SCALE}


def _finish(settings: Settings, results: dict[str, dict[str, Any]]) -> None:
    mapo, dpo = results.get("mapo"), results.get("dpo")
    if ran(mapo) and ran(dpo):
        dpo["first_step_mse_abs_diff_vs_mapo"] = max(abs(mapo["first_step"][k] - dpo["first_step"][k])
                                                     for k in ("mse_w", "mse_l"))


def _lines(report: dict[str, Any]) -> list[str]:
    s, results = report["settings"], report["results"]
    dpo = results.get("dpo", {})
    same = [f"same initial UNet: {dpo['same_init_as_mapo']}, same batches: {dpo['same_batches_as_mapo']}, first-step "
            f"|Δ mse|: {dpo['first_step_mse_abs_diff_vs_mapo']:.1e}"] if "same_init_as_mapo" in dpo else []
    return [*(StepParts.line(name, r["step_breakdown_s"]) for name, r in results.items() if ran(r)), *same,
            f"[dim]memory ({s['memory_source']}): peak increase over the memory in use after the policy "
                    "parts and data are loaded, and peak bytes of tensors created after that point (a GPU's "
                    "max_memory_allocated); DPO's reference UNet counts in both. The memory targets are judged at "
                    f"--unet-scale {JUDGED_SCALE} (or wider).[/dim]"]


BENCHMARK = Benchmark(
    name="mapo", doc="MaPO vs Diffusion-DPO training step time and memory on the same UNet, pairs, batches and "
    "noise.", options=MapoBenchOptions, systems={"mapo": System(), "dpo": System()},
    worker="lmlab.plugins.mapo.bench:run_system", settings=_settings, prepare=prepare, finish=_finish, lines=_lines,
    versions=("torch", "diffusers"), hoisted=["resolution", "unet_params", "pairs"],
    same_as=("mapo", {"init_sha256": "same_init_as_mapo", "batches_sha256": "same_batches_as_mapo"}, {}),
    not_judged=lambda r: {} if r["settings"]["memory_target_judged_this_run"] else dict.fromkeys(
        ("peak_mem_increase_mapo_vs_dpo", "peak_tensor_mapo_vs_dpo"), f"judged at --unet-scale {JUDGED_SCALE}, where "
        f"weights dominate as at SDXL scale; this run is ×{r['settings']['unet_scale']}"),
    title=lambda s: f"MaPO vs Diffusion-DPO · {s['model']}" + (f" (UNet ×{s['unet_scale']})" if s["unet_scale"] > 1
                    else "") + f" · {s['unet_params'] / 1e6:.1f}M UNet params · batch {s['batch_size']} · "
                               f"{s['resolution']}px · {s['timed_steps']} timed steps · {s['threads']} threads · fp32 "
                               f"{s['device']}",
    detail=lambda s: f"{WARMUP_STEPS} warm-up + {s['timed_steps']} timed steps, batch {s['batch_size']}, UNet "
                     f"×{s['unet_scale']}",
    columns=[Column("median step time s", "step_time_s", "{:.4f}"), Column("pairs/s", "pairs_per_s", "{:.2f}"),
             Column("peak memory MB", "peak_memory_mb", "{:.0f}"),
             Column("peak memory increase MB", "peak_memory_increase_mb", "{:.0f}"),
             Column("peak tensors MB", "peak_tensor_mb", "{:.0f}")],
    ratios=[Ratio("step_time_mapo_vs_dpo", "mapo", "dpo", "step_time_s", target=("<=", 0.8)),
            Ratio("peak_mem_increase_mapo_vs_dpo", "mapo", "dpo", "peak_memory_increase_mb", target=("<=", 0.85)),
            Ratio("peak_memory_mapo_vs_dpo", "mapo", "dpo", "peak_memory_mb"),
            Ratio("peak_tensor_mapo_vs_dpo", "mapo", "dpo", "peak_tensor_mb", target=("<=", 0.85))])
bench_mapo = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: load and collate, then (memory measured from here) time train-mapo's step in the shared loop."""
    import copy
    import gc

    import torch

    from lmlab.core.bench.tensor_memory import TensorPeak
    from lmlab.core.training.loop import TrainConfig, make_accelerator

    device = w.worker_setup(settings)
    timing, accelerator = StepParts(device), make_accelerator("fp32")  # accelerate places all on the only device
    task, order, batches = training_inputs(system, settings, timing.timed_task(), accelerator.device)
    unet, init_sha = task.parts.unet, w.tensors_sha256(sorted(task.parts.unet.state_dict().items()))
    if settings["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()  # as plugins/mapo/train.py does; DPO's reference runs without grad
    gc.collect()
    after_load, peak_was_reset = w.start_peak(device)
    # Measured region: what training with this objective costs. The warm-up steps also count live tensors
    # (TensorPeak's bookkeeping stays out of the timed steps); by the second, AdamW's state exists: a steady step.
    tensors = TensorPeak()
    with tensors:
        if system == "dpo":
            task.reference = copy.deepcopy(unet).requires_grad_(False).eval()  # as plugins/mapo/train.py does
    after_reference = w.memory_mb(device)

    def count_tensors_in_warmup(step: int) -> None:
        if step == 0:
            tensors.__enter__()
        elif step == WARMUP_STEPS:
            tensors.__exit__(None, None, None)

    cfg = TrainConfig(max_steps=len(order) + 1, batch_size=settings["batch_size"], lr=LR, schedule="constant",
                      weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, seed=settings["seed"], save_every=10**9)
    timing.optimizer_hooks()  # global hooks, left in place: the worker process ends after this run
    records, peak = w.replay_training(unet, task, order, cfg, accelerator, peak=lambda: w.read_peak(device),
                                    collated=batches, before_step=count_tensors_in_warmup)
    times, reference = [r["step_time"] for r in records], task.reference or torch.nn.Module()  # DPO's, or none
    step_time = statistics.median(times[WARMUP_STEPS:])
    return {"step_time_s": round(step_time, 5), "pairs_per_s": round(settings["batch_size"] / step_time, 3),
            **w.memory_figures(after_load, peak), "peak_tensor_mb": round(tensors.peak / 2**20, 1),
            "reference_unet_memory_mb": round(after_reference - after_load, 1), "reference_unet_param_mb": round(
                sum(p.numel() * p.element_size() for p in reference.parameters()) / 2**20, 1),
            "peak_reset_after_load": peak_was_reset, "step_times_s": [round(t, 5) for t in times[WARMUP_STEPS:]],
            "step_breakdown_s": timing.medians(times, WARMUP_STEPS),
            "first_step": {k: records[0][k] for k in ("loss", "mse_w", "mse_l")}, "final_loss": records[-1]["loss"],
            "init_sha256": init_sha, "batches_sha256": w.tensors_sha256(
                [(f"{i}.{k}", v) for i, b in enumerate(batches) for k, v in sorted(b.items())]),
            "resolution": task.resolution, "unet_params": sum(p.numel() for p in unet.parameters()),
            "pairs": len(task.pairs), "torch_threads": torch.get_num_threads()}
