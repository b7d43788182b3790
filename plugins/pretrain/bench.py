"""`lmlab bench pretrain`: our GPT pre-training step against Hugging Face's `GPT2LMHeadModel`, side by side.

What is compared (docs/benchmarks.md; the TEV/MLRA paper): four systems, each in its own
subprocess, on the same model size (layers, width, heads, context, vocabulary), the same batches of the same
token windows (Tiny Shakespeare, tokenised by `lmlab pretrain`'s corpus functions with the BPE `lmlab pretrain`
trains and caches), fp32 on the same device (`--device`; the workers see no other) with the same number of torch
threads, and the same optimizer settings
(AdamW β = (0.9, 0.95), weight decay 0.1 on matrices only, lr 1e-3 constant, grad clip 1.0):

- `hf-gpt2`: `transformers.GPT2LMHeadModel` with dropout 0, its fastest available attention ("sdpa" where the
  installed transformers has it, else "eager"; the report says which), no KV cache, activation "gelu" (exact
  GELU, as ours; also faster than GPT-2's default tanh-approximated "gelu_new", so the baseline is not weakened),
  trained in a plain PyTorch loop: forward with labels, backward, clip, AdamW step, zero_grad. It starts from
  our MHA model's initial weights (the Linear weights transposed into HF's Conv1D layout, HF's biases zero), so
  both compute the same function: the report compares the first batch's loss. HF's loss uses `shift_labels`
  (the batch's next-token targets), so both predict the same B × T tokens. Its batches are collated before the
  timed region (HF is not charged for collation).
- `lmlab-mha`: `lmlab pretrain --attn mha`'s real path: the model built by `build_model`, `PretrainTask`, and
  the shared loop `core.training.loop.train()` with TEV and evaluation off. Step time is the loop's own
  `step_time` (collation from the memory-mapped tokens + forward/backward + clip + AdamW + schedule).
- `lmlab-mha-tev`: the same with TEV logged every step. The loop times `after_step` (the monitor) apart from
  the step, as `monitor_time`: TEV overhead = median(monitor_time) / median(step_time).
- `lmlab-mlra`: `--attn mlra` at its default rank (parameters ≈ MHA's; both counts are reported).
- `hf-gpt2-bf16` and `lmlab-mha-bf16`: the HF plain loop under `torch.autocast(device, bfloat16)` and
  `lmlab pretrain --precision bf16` (bf16 autocast through accelerate; weights, AdamW state and the loss stay
  float32). Run only where the device has native bf16 (a CPU with AVX512-BF16 / AMX, a GPU from Ampere on), else
  reported as skipped. Every other system runs in fp32, explicitly (lmlab's loop `--precision fp32`, never
  auto's bf16).

Throughput is compared like for like (lmlab vs HF in the same precision: fp32, which the ≥ 1.3 target judges,
and bf16 autocast) and against HF's default fp32 loop (lmlab bf16 vs hf-gpt2), as settings["throughput_compared"]
says. Per system: tokens/s, the median over the timed steps (after 2 untimed warm-up steps) of batch × block /
step time; model FLOPs utilisation, (6·N + 12·L·T·d) × tokens/s over the GEMM peak that the same worker measures
after its steps on its device (the model's [B·T, d] × [d, 4d] matmul in the dtype its GEMMs run in); the peak
memory (settings["memory_source"]: the peak RSS on the CPU, reset there on Linux and read as VmHWM by
`core.bench.memory.peak_rss_mb`; CUDA's max_memory_allocated on a GPU) and its increase over the memory in use once the
model (on the device) and data are loaded, i.e. what training costs (activations, logits, gradients, AdamW state).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, gemm_peak_flops, machine, pool_gemm_peak, version
from lmlab.core.bench.replay import replay_training
from lmlab.core.bench.report import emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, parse_systems, run_systems, systems_option
from lmlab.core.bench.worker import clock, read_peak, start_peak, tensors_sha256, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt, resolve_device
from lmlab.core.kernel.errors import LmlabError


def _no_native_bf16(spec: str) -> str | None:
    from lmlab.core.commands.devices import has_native_bf16

    device = resolve_device(spec)
    if has_native_bf16(device):
        return None
    return "this CPU has no native bfloat16 (AVX512-BF16 / AMX)" if device.type == "cpu" else \
        f"{spec} has no native bfloat16"


SYSTEMS = {"hf-gpt2": System(requires="transformers", install="pip install transformers"),
           "lmlab-mha": System(), "lmlab-mha-tev": System(), "lmlab-mlra": System(),
           "hf-gpt2-bf16": System(requires="transformers", install="pip install transformers"),
           "lmlab-mha-bf16": System()}
SystemsOpt = systems_option(SYSTEMS)
BF16 = ("hf-gpt2-bf16", "lmlab-mha-bf16")
WARMUP_STEPS = 2
LR = 1e-3
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
DEFAULT_VOCAB = 4096  # `lmlab pretrain`'s default BPE
GEMM_RUNS = 5
WORKER = "lmlab.plugins.pretrain.bench:run_system"  # what each worker subprocess runs (core.bench.worker)
TARGETS = {"tokens_per_s_lmlab_vs_hf": (">=", 1.3), "tev_overhead": ("<=", 0.01),
           "tokens_per_s_mlra_vs_mha": (">=", 0.9)}


def bench_pretrain(
    n_layer: Annotated[int, typer.Option("--n-layer", min=1, help="Transformer blocks.")] = 6,
    n_embd: Annotated[int, typer.Option("--n-embd", min=8, help="Model width.")] = 384,
    n_head: Annotated[int, typer.Option("--n-head", min=1, help="Attention heads.")] = 6,
    block_size: Annotated[int, typer.Option("--block-size", min=8, help="Context length in tokens.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per step.")] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, help=f"Timed optimizer steps (after {WARMUP_STEPS} "
                     "untimed warm-up steps).")] = 10,
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", min=260, help="Vocabulary of the BPE trained "
                          f"on the corpus (default: {DEFAULT_VOCAB}, as `lmlab pretrain`; cached).",
                          show_default=False)] = None,
    systems: SystemsOpt = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model init and the batch order.")] = 42,
    device: DeviceOpt = "auto",
) -> None:
    """Pre-training speed and memory: our GPT (MHA, MHA + TEV, MLRA) vs Hugging Face GPT-2 on the same batches."""
    chosen = parse_systems(systems, SYSTEMS)
    where = device_settings(device)
    here = {name: replace(system, precondition=lambda: _no_native_bf16(device)) if name in BF16 else system
            for name, system in SYSTEMS.items()}
    if n_embd % n_head:
        raise LmlabError(f"--n-embd {n_embd} is not divisible by --n-head {n_head}.",
                         hint="pick a width that is a multiple of the number of heads")
    threads = cpu_count()
    data = prepare_data(vocab_size or DEFAULT_VOCAB, block_size, batch_size, WARMUP_STEPS + steps, seed)
    settings: dict[str, Any] = {
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "block_size": block_size, "batch_size": batch_size,
        "vocab_size": data.pop("vocab_size"), "tokens_per_step": batch_size * block_size, "timed_steps": steps,
        "warmup_steps": WARMUP_STEPS, "seed": seed, "lr": LR, "schedule": "constant",
        "optimizer": f"AdamW(betas={BETAS}, weight_decay={WEIGHT_DECAY} on matrices only)",
        "max_grad_norm": MAX_GRAD_NORM, "dropout": 0.0, "dtype": "float32 (*-bf16: bf16 autocast)", **where,
        "threads": threads,
        "data": data.pop("description"),
        "memory_ratio_uses": "peak memory increase over the memory in use after the model and data are loaded",
        "throughput_compared": "like for like: lmlab-mha vs hf-gpt2 (both fp32; the >= 1.3 target) and "
                               "lmlab-mha-bf16 vs hf-gpt2-bf16 (both bf16 autocast); and lmlab-mha-bf16 against "
                               "HF's default fp32 loop (hf-gpt2), a precision change HF users can also make",
        "mfu": "model FLOPs/s over the GEMM peak of the system's precision: (6·N + 12·L·T·d) × tokens/s, N the "
               "weights a token meets in a matmul (every matrix but the position embedding; the tied embedding "
               "once, as the LM head), 12·L·T·d the attention scores and values over the full context T (the "
               "causal mask not discounted)",
        "gemm_peak": f"the fastest of {GEMM_RUNS} timed runs (each about 20 ms of repeats) of the [B·T, d] × [d, 4d] "
                     "matmul (the MLP's up-projection), measured by every worker after its timed steps on its device "
                     "in the dtype its GEMMs run in (fp32; bf16 for *-bf16); each system's MFU uses the best peak any "
                     "worker of its precision measured (gemm_peak_gflops; its own reading is gemm_peak_gflops_worker)",
    }
    results = run_systems("pretrain", here, chosen, WORKER, {**settings, **data}, threads=threads,
                          detail=f"{WARMUP_STEPS} warm-up + {steps} timed steps, batch {batch_size} × {block_size} "
                                 f"tokens, {n_layer} layers × {n_embd}, {threads} threads, {where['device']}")
    _compare(results)
    report = make_report("pretrain", machine(threads, ("torch", "transformers")), settings, results,
                         _ratios(results))
    emit(report, json_output, _print_table)


# ---------------------------------------------------------------------------------------------------------
# Parent side: the data, the workers, the comparison, the report.


def prepare_data(vocab_size: int, block_size: int, batch_size: int, n_steps: int, seed: int) -> dict[str, Any]:
    """Tokenise the bundled Tiny Shakespeare as `lmlab pretrain` does (BPE trained on it and cached, tokens
    memory-mapped and cached) and pick every step's windows with PretrainTask's own seeded order."""
    from lmlab.core.files.paths import example
    from lmlab.core.models.loading import cache_dir
    from lmlab.core.training.text_corpus import check_length, read_texts, resolve_tokenizer, tokenize_corpus
    from lmlab.plugins.pretrain.task import PretrainTask

    corpus = example("pretrain/tinyshakespeare.txt")
    texts = read_texts(str(corpus))
    tokenizer = resolve_tokenizer(None, [t for _, t in texts], vocab_size, cache_dir() / "tokenizers")
    train_tokens, val_tokens, meta = tokenize_corpus([t for _, t in texts], tokenizer, cache_dir() / "tokens",
                                                     sources=[origin for origin, _ in texts])
    check_length(train_tokens, val_tokens, block_size, str(corpus))
    task = PretrainTask(train_tokens, val_tokens, block_size=block_size, seed=seed, batch_size=batch_size)
    order: list[list[int]] = []
    epoch = 0
    while len(order) < n_steps:
        order += [b for b in task.batches(epoch, batch_size) if len(b) == batch_size]
        epoch += 1
    return {"vocab_size": len(tokenizer), "tokens_dir": meta["path"], "tokens_dtype": meta["dtype"],
            "train_tokens": meta["train_tokens"], "order": order[:n_steps],
            "description": f"examples/pretrain/tinyshakespeare.txt, {meta['train_tokens']:,} training tokens "
                           f"(byte-level BPE, {len(tokenizer):,} tokens); PretrainTask's seeded windows"}


def _shared_gemm_peaks(measured: dict[str, dict[str, Any]]) -> None:
    """One GEMM peak per precision, the best any worker measured, so that MFU compares systems against the same
    bound (a worker's own reading varies with what else ran meanwhile)."""
    for bf16 in (False, True):
        group = [r for name, r in measured.items() if name.endswith("-bf16") == bf16]
        if not group:
            continue
        peak = pool_gemm_peak(group)
        for r in group:
            r["mfu"] = float(f"{r['model_flops_per_token'] * r['tokens_per_s'] / (peak * 1e9):.4g}")


def _compare(results: dict[str, dict[str, Any]]) -> None:
    """Same batches for every system; HF and our MHA start from the same weights, so the same first loss."""
    measured = {name: r for name, r in results.items() if ran(r)}
    hashes = {r["batches_sha256"] for r in measured.values()}
    for r in measured.values():
        r["same_batches_as_others"] = len(hashes) == 1
    _shared_gemm_peaks(measured)
    hf, mha, tev_run = results.get("hf-gpt2"), results.get("lmlab-mha"), results.get("lmlab-mha-tev")
    if ran(hf) and ran(mha):
        hf["first_loss_abs_diff_vs_lmlab_mha"] = abs(hf["loss_first_batch"] - mha["loss_first_batch"])
    if ran(mha) and ran(tev_run):
        tev_run["step_time_diff_vs_mha_s"] = round(tev_run["step_time_s"] - mha["step_time_s"], 5)


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    hf, mha, tev_run, mlra, hf_bf16, mha_bf16 = (results.get(name) for name in SYSTEMS)
    out: dict[str, float | None] = {}
    if ran(hf_bf16) and ran(mha_bf16):
        out["tokens_per_s_lmlab_bf16_vs_hf_bf16"] = ratio(mha_bf16["tokens_per_s"], hf_bf16["tokens_per_s"])
    if ran(hf) and ran(mha_bf16):
        out["tokens_per_s_lmlab_bf16_vs_hf"] = ratio(mha_bf16["tokens_per_s"], hf["tokens_per_s"])
    if ran(hf) and ran(mha):
        out["tokens_per_s_lmlab_vs_hf"] = ratio(mha["tokens_per_s"], hf["tokens_per_s"])
        out["peak_mem_increase_lmlab_vs_hf"] = ratio(mha["peak_memory_increase_mb"], hf["peak_memory_increase_mb"])
    if ran(tev_run):
        out["tev_overhead"] = ratio(tev_run["monitor_time_s"], tev_run["step_time_s"], 5)
    if ran(tev_run) and ran(mha):
        out["step_time_tev_vs_mha"] = ratio(tev_run["step_time_s"], mha["step_time_s"])
    if ran(mlra) and ran(mha):
        out["tokens_per_s_mlra_vs_mha"] = ratio(mlra["tokens_per_s"], mha["tokens_per_s"])
        out["peak_mem_increase_mlra_vs_mha"] = ratio(mlra["peak_memory_increase_mb"], mha["peak_memory_increase_mb"])
    return out


def _print_table(report: dict[str, Any]) -> None:
    from rich.markup import escape

    s, results = report["settings"], report["results"]
    hf, tev_run = results.get("hf-gpt2", {}), results.get("lmlab-mha-tev", {})
    lines = ["throughput: " + escape(s["throughput_compared"])]
    if "first_loss_abs_diff_vs_lmlab_mha" in hf:
        lines.append(f"first-batch loss |lmlab-mha − hf-gpt2|: {hf['first_loss_abs_diff_vs_lmlab_mha']:.2e} (same "
                     f"initial weights; same batches: {hf['same_batches_as_others']})")
    if "step_time_diff_vs_mha_s" in tev_run:
        lines.append(f"TEV every step: monitor {tev_run['monitor_time_s'] * 1e3:.2f} ms/step; median step time "
                     f"{tev_run['step_time_diff_vs_mha_s'] * 1e3:+.1f} ms vs lmlab-mha (the monitor is timed apart "
                     "from the step)")
    lines.append(f"[dim]MFU: {escape(s['mfu'])}; GEMM peak: {escape(s['gemm_peak'])}[/dim]")
    lines.append(f"[dim]tev_overhead = median(monitor_time) / median(step_time); memory ({s['memory_source']}): peak "
                 "increase over the memory in use after the model and data are loaded[/dim]")

    def row(r: dict[str, Any]) -> list[str]:
        monitor = f"{r['monitor_time_s']:.4f}" if r.get("monitor_time_s") is not None else "–"
        return [r["attention"], f"{r['parameters']:,}", f"{r['tokens_per_s']:.1f}", f"{r['step_time_s']:.3f}",
                f"{r['mfu']:.1%} of {r['gemm_peak_gflops']:.3g}", monitor, f"{r['peak_memory_mb']:.0f}",
                f"{r['peak_memory_increase_mb']:.0f}", f"{r['loss_first_batch']:.6f}"]

    print_results(report, f"Pre-training vs HF GPT-2 · {s['n_layer']} layers × {s['n_embd']} · {s['n_head']} heads · "
                          f"batch {s['batch_size']} × {s['block_size']} tokens · vocab {s['vocab_size']:,} · "
                          f"{s['timed_steps']} timed steps · {s['threads']} threads · fp32 {s['device']} "
                          "(*-bf16: autocast)",
                  ("attention", "parameters", "tokens/s", "median step s", "MFU of GEMM GFLOP/s", "monitor s",
                   "peak memory MB", "peak memory increase MB", "loss (first batch)"), row, TARGETS, lines=lines)


# ---------------------------------------------------------------------------------------------------------
# Worker side: one system in its own process.


def _train_tokens(settings: dict[str, Any]) -> Any:
    import numpy as np

    return np.memmap(Path(settings["tokens_dir"]) / "train.bin", dtype=settings["tokens_dtype"], mode="r",
                     shape=(settings["train_tokens"],))


def _build_gpt(settings: dict[str, Any], attn: str) -> Any:
    """Our model exactly as `lmlab pretrain` builds it: seed, then the registered architecture and attention."""
    import torch

    from lmlab.core.models.architectures import build_model

    torch.manual_seed(settings["seed"])
    model, _ = build_model("gpt", attn, vocab_size=settings["vocab_size"], block_size=settings["block_size"],
                           n_layer=settings["n_layer"], n_head=settings["n_head"], n_embd=settings["n_embd"],
                           dropout=0.0)
    return model


def _model_flops_per_token(model: Any, settings: dict[str, Any]) -> int:
    """Training FLOPs per token (settings["mfu"]): 6 per weight a token meets in a matmul, plus 12·L·T·d for the
    attention scores and values over the full context."""
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in name)
    return 6 * matmul + 12 * settings["n_layer"] * settings["block_size"] * settings["n_embd"]


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Build the model and the batches, check the first batch's loss, then train and time; returns the figures."""
    import torch

    from lmlab.core.kernel.console import set_quiet
    from lmlab.plugins.pretrain.task import PretrainTask

    set_quiet(True)
    torch.set_num_threads(settings["threads"])
    # The first optimizer imports torch._dynamo (~70 MB of modules); transformers imports it when it loads. Load it
    # up front in every worker so that the measured memory increase is training, not a module import.
    import torch._dynamo  # noqa: F401

    tokens = _train_tokens(settings)
    order: list[list[int]] = settings["order"]
    task = PretrainTask(tokens, tokens, block_size=settings["block_size"], seed=settings["seed"], tev_every=0,
                        eval_every=0, batch_size=settings["batch_size"])
    batches = [task.collate(indices) for indices in order]
    batches_sha = tensors_sha256((f"{i}.{key}", batch[key]) for i, batch in enumerate(batches)
                                 for key in ("input_ids", "targets"))
    bf16 = system in BF16
    device = worker_device(settings)
    if system.startswith("hf-gpt2"):
        result = _run_hf(settings, [{k: v.to(device) for k, v in b.items()} for b in batches], device, bf16=bf16)
    else:
        attn = "mlra" if system == "lmlab-mlra" else "mha"
        result = _run_lmlab(settings, order, attn, device, tev_every=1 if system == "lmlab-mha-tev" else 0,
                            bf16=bf16)
    times = result.pop("step_times")[WARMUP_STEPS:]
    monitor = result.pop("monitor_times", None)
    step_time = statistics.median(times)
    tokens_per_step = settings["batch_size"] * settings["block_size"]
    out = {
        "tokens_per_s": round(statistics.median(tokens_per_step / t for t in times), 2),
        "step_time_s": round(step_time, 5),
        "step_times_s": [round(t, 4) for t in times],
        **result,
        "peak_memory_increase_mb": round(result["peak_memory_mb"] - result["memory_after_load_mb"], 1),
        "batches_sha256": batches_sha,
        "torch_threads": torch.get_num_threads(),
    }
    peak = gemm_peak_flops(tokens_per_step, settings["n_embd"], 4 * settings["n_embd"],
                           torch.bfloat16 if bf16 else torch.float32, runs=GEMM_RUNS, device=device)
    out["gemm_peak_gflops"] = float(f"{peak / 1e9:.4g}")  # significant digits: a toy shape can be far below 1
    out["mfu"] = float(f"{result['model_flops_per_token'] * out['tokens_per_s'] / peak:.4g}")
    if monitor is not None:
        timed_monitor = monitor[WARMUP_STEPS:]
        out["monitor_time_s"] = round(statistics.median(timed_monitor), 6)
        out["tokens_per_s_with_monitor"] = round(statistics.median(
            tokens_per_step / (t + m) for t, m in zip(times, timed_monitor, strict=True)), 2)
    return out


def _run_lmlab(settings: dict[str, Any], order: list[list[int]], attn: str, device: Any, *, tev_every: int,
               bf16: bool = False) -> dict[str, Any]:
    import gc

    import torch

    from lmlab.core.training.loop import TrainConfig, make_accelerator
    from lmlab.plugins.pretrain.task import PretrainTask

    tokens = _train_tokens(settings)
    task = PretrainTask(tokens, tokens, block_size=settings["block_size"], seed=settings["seed"],
                         tev_every=tev_every, grad_var_every=0, eval_every=0, batch_size=settings["batch_size"])
    model = _build_gpt(settings, attn).to(device)
    model.train()
    with torch.no_grad():
        batch = {key: value.to(device) for key, value in task.collate(order[0]).items()}
        loss, _ = task.loss(model, batch, task.counts(batch))
    del batch
    gc.collect()
    after_load, peak_was_reset = start_peak(device)
    cfg = TrainConfig(max_steps=len(order) + 1, batch_size=settings["batch_size"], lr=LR, schedule="constant",
                      warmup_steps=0, weight_decay=WEIGHT_DECAY, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
                      max_grad_norm=MAX_GRAD_NORM, seed=settings["seed"], save_every=10**9)
    records, peak = replay_training(model, task, order, cfg, make_accelerator("bf16" if bf16 else "fp32"),
                                    peak=lambda: read_peak(device))
    if tev_every and not all("tev_mean" in r for r in records):
        raise LmlabError("the TEV run logged no TEV on some steps.", hint="this is a bug in the benchmark")
    inner = model.transformer.h[0].attn
    attention = attn if attn == "mha" else f"mlra (rank {inner.rank}, targets {','.join(inner.low_rank) or '-'}" \
        f"{',o' if getattr(inner, 'o_a', None) is not None else ''})"
    return {"version": version("lmlab"), "attention": attention + (" · bf16 autocast" if bf16 else ""),
            "parameters": model.num_params(non_embedding=False),
            "model_flops_per_token": _model_flops_per_token(model, settings), "loss_first_batch": float(loss),
            "final_loss": records[-1]["loss"],
            "memory_after_load_mb": round(after_load, 1), "peak_memory_mb": round(peak, 1),
            "peak_reset_after_load": peak_was_reset, "step_times": [r["step_time"] for r in records],
            "monitor_times": [r["monitor_time"] for r in records],
            **({"tev_mean_last": records[-1]["tev_mean"], "tev_std_last": records[-1]["tev_std"]} if tev_every
               else {})}


def _hf_model(settings: dict[str, Any]) -> tuple[Any, str]:
    """GPT2LMHeadModel of our size with its fastest attention ("sdpa", else "eager"), holding our MHA model's
    initial weights (Linear (out, in) → Conv1D (in, out); HF's biases zero), so both compute the same function."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=settings["vocab_size"], n_positions=settings["block_size"],
                        n_embd=settings["n_embd"], n_layer=settings["n_layer"], n_head=settings["n_head"],
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, use_cache=False, tie_word_embeddings=True, bos_token_id=None,
                        eos_token_id=None, loss_type="ForCausalLM")
    try:
        hf = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):
        hf = GPT2LMHeadModel._from_config(config, attn_implementation="eager")
    attention = hf.config._attn_implementation
    ours = _build_gpt(settings, "mha").state_dict()
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
            elif name in ours:
                source = ours[name]
                param.copy_(source.t() if name.endswith(transposed) else source)
            else:
                raise LmlabError(f"HF GPT-2 parameter {name} has no counterpart in our GPT.",
                                 hint=f"transformers {version('transformers')} changed GPT2's layout; update "
                                      "plugins/pretrain/bench.py")
    if hf.lm_head.weight is not hf.transformer.wte.weight:
        raise LmlabError("HF GPT-2's lm_head is not tied to its token embedding.", hint="a bug in the benchmark")
    return hf, attention


def _run_hf(settings: dict[str, Any], batches: list[dict[str, Any]], device: Any, *,
            bf16: bool = False) -> dict[str, Any]:
    import gc

    import torch

    from lmlab.core.training.loop import param_groups

    hf, attention = _hf_model(settings)
    hf.to(device)
    gc.collect()
    hf.train()

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # shift_labels: the window's next tokens, already aligned, so HF predicts the same B × T tokens as ours.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return hf(input_ids=batch["input_ids"], labels=batch["targets"], shift_labels=batch["targets"],
                      use_cache=False).loss

    with torch.no_grad():
        first = float(loss_of(batches[0]))
    gc.collect()
    after_load, peak_was_reset = start_peak(device)
    optimizer = torch.optim.AdamW(param_groups(hf, WEIGHT_DECAY), lr=LR, betas=BETAS)
    params = [p for p in hf.parameters() if p.requires_grad]
    times, losses = [], []
    for batch in batches:
        tick = clock(device)
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(clock(device) - tick)
        losses.append(loss.detach())
    peak = read_peak(device)
    return {"version": version("transformers"), "attention": f"GPT2 {attention}" + (" · bf16 autocast" if bf16
                                                                                    else ""),
            "parameters": sum(p.numel() for p in hf.parameters()),
            "model_flops_per_token": _model_flops_per_token(hf, settings), "loss_first_batch": first,
            "final_loss": float(losses[-1]), "memory_after_load_mb": round(after_load, 1),
            "peak_memory_mb": round(peak, 1),
            "peak_reset_after_load": peak_was_reset, "step_times": times}
