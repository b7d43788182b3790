"""`lmlab bench pretrain`: our GPT's pre-training step (MHA, TEV, MLRA; fp32, bf16) against Hugging Face GPT-2's
(docs/benchmarks.md#pre-training-vs-hugging-face-gpt-2)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.markup import escape

from lmlab.core.bench import benchmark as b
from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Cell, Column, Ratio, System, bench_command, ran
from lmlab.core.bench.machine import gemm_peak_flops, version
from lmlab.core.commands import options as o
from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.pretrain import hf_gpt2

HF = System(requires="transformers", install="pip install transformers")
SYSTEMS = {"hf-gpt2": HF, "lmlab-mha": System(), "lmlab-mha-tev": System(), "lmlab-mlra": System(),
           "hf-gpt2-bf16": HF, "lmlab-mha-bf16": System()}
BF16, WARMUP_STEPS, GEMM_RUNS = ("hf-gpt2-bf16", "lmlab-mha-bf16"), 2, 5
ADAMW = {"lr": 1e-3, "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.1, "max_grad_norm": 1.0}


@dataclass
class PretrainBenchOptions(BenchOptions):
    n_layer: int = o.option(6, "Transformer blocks.", min=1)
    n_embd: int = o.option(384, "Model width.", min=8)
    n_head: int = o.option(6, "Attention heads.", min=1)
    block_size: int = o.option(256, "Context length in tokens.", min=8)
    batch_size: int = o.option(8, "Sequences per step.", min=1)
    max_steps: int = o.option(10, f"Timed steps (after {WARMUP_STEPS} warm-up).", min=1, deprecated=("--steps",))
    vocab_size: int = o.option(4096, "Vocabulary of the BPE trained on the corpus (cached).", min=260)


def _settings(opts: PretrainBenchOptions) -> dict[str, Any]:
    if opts.n_embd % opts.n_head:
        raise LmlabError(f"--n-embd {opts.n_embd} is not divisible by --n-head {opts.n_head}.",
                         hint="pick a width that is a multiple of the number of heads")
    shape = ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "vocab_size")
    return {**{key: getattr(opts, key) for key in shape}, "tokens_per_step": opts.batch_size * opts.block_size,
            "timed_steps": opts.max_steps, "warmup_steps": WARMUP_STEPS, "seed": opts.seed, "lr": ADAMW["lr"],
            "schedule": "constant", "dropout": 0.0, "dtype": "float32 (*-bf16: bf16 autocast)",
            "optimizer": f"AdamW(betas=({ADAMW['adam_beta1']}, {ADAMW['adam_beta2']}), weight_decay="
                         f"{ADAMW['weight_decay']} on matrices only)", "max_grad_norm": ADAMW["max_grad_norm"],
            "memory_ratio_uses": "peak memory increase over the memory in use after the model and data are loaded",
            "throughput_compared": "like for like: lmlab-mha vs hf-gpt2 (fp32; the >= 1.3 target), lmlab-mha-bf16 "
                                   "vs hf-gpt2-bf16 (bf16 autocast); and lmlab-mha-bf16 vs HF's fp32 loop (hf-gpt2)",
            "mfu": "(6·N + 12·L·T·d) × tokens/s over the GEMM peak of the system's precision, N the weights a token "
                   "meets in a matmul, 12·L·T·d the attention over the full context T",
            "gemm_peak": f"the fastest of {GEMM_RUNS} timed [B·T, d] × [d, 4d] matmuls in the GEMMs' dtype, by each "
                         "worker after its steps; MFU uses its precision's best (own: gemm_peak_gflops_worker)"}


#: MFU against one GEMM peak per precision, the best any worker of that precision measured.
_shared_gemm_peaks = partial(b.share_gemm_peak, group=lambda name: name.endswith("-bf16"), key="mfu", share=lambda r,
                             peak: float(f"{r['model_flops_per_token'] * r['tokens_per_s'] / (peak * 1e9):.4g}"))


def _finish(settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    b.same_for_all(results, "batches_sha256", "same_batches_as_others")
    _shared_gemm_peaks(results)
    hf, mha, tev = (results.get(name) for name in ("hf-gpt2", "lmlab-mha", "lmlab-mha-tev"))
    if ran(hf) and ran(mha):  # the same initial weights: the same first loss
        hf["first_loss_abs_diff_vs_lmlab_mha"] = abs(hf["loss_first_batch"] - mha["loss_first_batch"])
    if ran(mha) and ran(tev):
        tev["step_time_diff_vs_mha_s"] = round(tev["step_time_s"] - mha["step_time_s"], 5)


def _lines(report: dict[str, Any]) -> list[str]:
    s, hf, tev = report["settings"], report["results"].get("hf-gpt2", {}), report["results"].get("lmlab-mha-tev", {})
    lines = ["throughput: " + escape(s["throughput_compared"])]
    if "first_loss_abs_diff_vs_lmlab_mha" in hf:
        lines.append(f"first-batch loss |lmlab-mha − hf-gpt2|: {hf['first_loss_abs_diff_vs_lmlab_mha']:.2e} (same "
                     f"initial weights; same batches: {hf['same_batches_as_others']})")
    if "step_time_diff_vs_mha_s" in tev:
        lines.append(f"TEV every step: monitor {tev['monitor_time_s'] * 1e3:.2f} ms/step (timed apart from the step); "
                     f"median step time {tev['step_time_diff_vs_mha_s'] * 1e3:+.1f} ms vs lmlab-mha")
    return [*lines, f"[dim]MFU: {escape(s['mfu'])}; GEMM peak: {escape(s['gemm_peak'])}[/dim]",
            f"[dim]tev_overhead = median(monitor_time) / median(step_time); memory ({s['memory_source']}): "
            f"{s['memory_ratio_uses']}[/dim]"]


BENCHMARK = Benchmark(
    name="pretrain", doc="Pre-training speed and memory: our GPT (MHA, MHA + TEV, MLRA) vs Hugging Face GPT-2 on the "
    "same batches.", options=PretrainBenchOptions, systems=SYSTEMS, worker="lmlab.plugins.pretrain.bench:run_system",
    settings=_settings, prepare=lambda opts, s, scratch: hf_gpt2.prepare_windows(s, WARMUP_STEPS + opts.max_steps),
    finish=_finish, lines=_lines, versions=("torch", "transformers"),
    available=lambda opts: b.bf16_systems(SYSTEMS, BF16, opts.device),
    title=lambda s: f"Pre-training vs HF GPT-2 · {s['n_layer']} layers × {s['n_embd']} · {s['n_head']} heads · batch "
                    f"{s['batch_size']} × {s['block_size']} tokens · vocab {s['vocab_size']:,} · {s['timed_steps']} "
                    f"timed steps · {s['threads']} threads · fp32 {s['device']} (*-bf16: autocast)",
    detail=lambda s: f"{WARMUP_STEPS} warm-up + {s['timed_steps']} timed steps of {s['tokens_per_step']} tokens",
    columns=[Column("attention", "attention", "{}"), Column("parameters", "parameters", "{:,}"),
             Column("tokens/s", "tokens_per_s", "{:.1f}"), Column("median step s", "step_time_s"),
             Cell("MFU of GEMM GFLOP/s", "mfu", text=lambda r: f"{r['mfu']:.1%} of {r['gemm_peak_gflops']:.3g}"),
             Column("monitor s", "monitor_time_s", "{:.4f}"), Column("peak memory MB", "peak_memory_mb", "{:.0f}"),
             Column("peak memory increase MB", "peak_memory_increase_mb", "{:.0f}"),
             Column("loss (first batch)", "loss_first_batch", "{:.6f}")],
    ratios=[Ratio("tokens_per_s_lmlab_bf16_vs_hf_bf16", "lmlab-mha-bf16", "hf-gpt2-bf16", "tokens_per_s"),
            Ratio("tokens_per_s_lmlab_bf16_vs_hf", "lmlab-mha-bf16", "hf-gpt2", "tokens_per_s"),
            Ratio("tokens_per_s_lmlab_vs_hf", "lmlab-mha", "hf-gpt2", "tokens_per_s", target=(">=", 1.3)),
            Ratio("peak_mem_increase_lmlab_vs_hf", "lmlab-mha", "hf-gpt2", "peak_memory_increase_mb"),
            Ratio("tev_overhead", "lmlab-mha-tev", "lmlab-mha-tev", "monitor_time_s", "step_time_s", ("<=", 0.01), 5),
            Ratio("step_time_tev_vs_mha", "lmlab-mha-tev", "lmlab-mha", "step_time_s"),
            Ratio("tokens_per_s_mlra_vs_mha", "lmlab-mlra", "lmlab-mha", "tokens_per_s", target=(">=", 0.9)),
            Ratio("peak_mem_increase_mlra_vs_mha", "lmlab-mlra", "lmlab-mha", "peak_memory_increase_mb")])
bench_pretrain = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: build the model and the batches, check the first batch's loss, then train and time."""
    import torch
    import torch._dynamo  # noqa: F401  # the first AdamW imports it: load it before the memory is measured

    device, bf16, hf = w.worker_setup(settings), system in BF16, system.startswith("hf")
    task, batches, batches_sha = hf_gpt2.windows_task(settings, tev_every=int(system.endswith("-tev")))
    model, attention, first, (after_load, reset), times, final, peak, extra = hf_gpt2.run_twin(
        settings, batches, device, bf16, **ADAMW) if hf else _run_lmlab(system, settings, task, batches, device)
    times, per_step, d = times[WARMUP_STEPS:], settings["tokens_per_step"], settings["n_embd"]
    gemm = gemm_peak_flops(per_step, d, 4 * d, torch.bfloat16 if bf16 else torch.float32, runs=GEMM_RUNS, device=device)
    return {"tokens_per_s": round(statistics.median(per_step / t for t in times), 2),
            "step_time_s": round(statistics.median(times), 5), "step_times_s": [round(t, 4) for t in times],
            "version": version("transformers" if hf else "lmlab"), "attention": attention + " · bf16 autocast" * bf16,
            "parameters": sum(p.numel() for p in model.parameters()), "batches_sha256": batches_sha,
            "model_flops_per_token": hf_gpt2.model_flops_per_token(model, settings), "loss_first_batch": first,
            "final_loss": final, **w.memory_figures(after_load, peak), "peak_reset_after_load": reset, **extra,
            "torch_threads": torch.get_num_threads(), "gemm_peak_gflops": float(f"{gemm / 1e9:.4g}")}


def _run_lmlab(system: str, settings: dict[str, Any], task: Any, batches: list[Any], device: Any) -> tuple[Any, ...]:
    """`lmlab pretrain`'s model and task in the shared loop, which times TEV apart from the step (`monitor_time`)."""
    attn = "mlra" if system == "lmlab-mlra" else "mha"
    model = hf_gpt2.build_gpt(settings, attn).to(device).train()
    batch = {key: value.to(device) for key, value in batches[0].items()}
    first, start = w.first_loss(lambda: task.loss(model, batch, task.counts(batch))[0], device)
    records, peak = w.replay_steps(model, task, settings["order"], device, "bf16" if system in BF16 else "fp32",
                                   batch_size=settings["batch_size"], seed=settings["seed"], **ADAMW)
    times, monitor = [r["step_time"] for r in records], [r["monitor_time"] for r in records][WARMUP_STEPS:]
    with_monitor = [settings["tokens_per_step"] / (t + m) for t, m in zip(times[WARMUP_STEPS:], monitor, strict=True)]
    tev = {"tev_mean_last": records[-1]["tev_mean"], "tev_std_last": records[-1]["tev_std"]} if task.tev_every else {}
    return model, hf_gpt2.attention_of(model, attn), first, start, times, records[-1]["loss"], peak, {
        "monitor_time_s": round(statistics.median(monitor), 6),
        "tokens_per_s_with_monitor": round(statistics.median(with_monitor), 2), **tev}
