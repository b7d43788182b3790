"""`lmlab bench block`: the Block Transformer's decode throughput and KV cache against its vanilla twin and HF
GPTNeoX `generate`, and its perplexity against the twin's after equal training (docs/benchmarks.md#bench-block)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from lmlab.core.bench import benchmark as b
from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Cell, Column, Ratio, System, bench_command, ran
from lmlab.core.commands import options as o
from lmlab.plugins.block import twins

SYSTEMS = {"block": System(), "vanilla": System(), "hf-gptneox": System("transformers", "pip install transformers")}
SETTINGS, DEFAULT_RUNS = ("prefill_heavy", "decode_heavy"), 3  # the paper's protocol times 5 runs (--runs 5)
SPEED_TARGETS = {"block_vs_hf_decode_heavy": (">=", 10.0), "block_vs_hf_prefill_heavy": (">=", 5.0),
                 "vanilla_vs_hf_decode_heavy": (">=", 2.0), "vanilla_vs_hf_prefill_heavy": (">=", 2.0)}


@dataclass
class BlockBenchOptions(BenchOptions):
    batch_size: int = o.option(16, "Prompts generated at once.", min=1)
    n_layer: int = o.option(6, "Layers of the vanilla models; the block model's two decoders split them.", min=2)
    n_embd: int = o.option(256, "Width of every model.", min=8)
    n_head: int = o.option(4, "Attention heads (default: head dim 64, as the paper's).", min=1)
    block_len: int = o.option(4, "Tokens per block, L_B: 1, 2, 4 or 8.")
    vocab_size: int = o.option(4096, "Vocabulary of every model (and of the perplexity part's BPE, cached).", min=260)
    prefill_heavy_prompt: int = o.option(512, "Prompt tokens of the prefill-heavy setting.", min=1)
    prefill_heavy_max_new_tokens: int = o.option(64, "Tokens per sequence, prefill-heavy.", min=1,
                                                 deprecated=("--prefill-heavy-tokens",))
    decode_heavy_prompt: int = o.option(64, "Prompt tokens of the decode-heavy setting.", min=1)
    decode_heavy_max_new_tokens: int = o.option(512, "Tokens per sequence, decode-heavy.", min=1, deprecated=(
        "--decode-heavy-tokens",))
    runs: int = o.option(DEFAULT_RUNS, "Timed runs per system and setting, after one warm-up (the paper's: 5).", min=1)
    train_steps: int = o.option(40, "`lmlab pretrain` steps for block and vanilla before their perplexity (0: skip).",
                                min=0)


def _settings(opts: BlockBenchOptions) -> dict[str, Any]:
    lengths = {name: (getattr(opts, f"{name}_prompt"), getattr(opts, f"{name}_max_new_tokens")) for name in SETTINGS}
    context = twins.check_shape(opts.n_layer, opts.n_embd, opts.n_head, opts.block_len, lengths)
    shape = {key: getattr(opts, key) for key in ("batch_size", "n_layer", "n_embd", "n_head", "block_len")}
    return {**shape, "prefix": twins.PREFIX, "block_layers": opts.n_layer // 2, "token_layers": (opts.n_layer + 1) // 2,
            "vocab_size": opts.vocab_size, "context": context, "seed": opts.seed, "dtype": "float32",
            "lengths": {name: {"prompt": p, "decode": n} for name, (p, n) in lengths.items()},
            "warmup_runs": 1, "timed_runs": opts.runs, "timed_runs_note": f"the paper's protocol: one warm-up, then "
            f"the mean of 5 timed runs; {DEFAULT_RUNS} by default so the default run stays near 5 minutes on 2 cores",
            "prompts": "uniform random token ids from torch.Generator().manual_seed(seed + i) on the CPU, i = 0 "
                       "prefill-heavy, 1 decode-heavy; the same for every system (sha256 in each result)",
            "generation": "greedy, EOS disabled (HF: min_new_tokens = max_new_tokens), KV-cached, in inference mode",
            "tokens_per_s": "tokens generated (batch × decode, checked) / mean wall seconds of the timed runs",
            "kv_bytes": "peak KV-cache bytes per sequence: ours measured (Completion.kv_bytes); hf-gptneox computed, "
                        "2 · layers · (prompt + decode - 1) · width · 4 bytes (what its DynamicCache holds at the end)",
            "train_steps": opts.train_steps, "training": twins.training_note(opts.train_steps)}


def _finish(settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    if settings["train_steps"]:
        twins.train_all(results, settings)
    for name in SETTINGS:
        b.same_for_all(results, f"{name}.prompts_sha256", "same_prompts_as_others")


def _ratios(s: dict[str, Any]) -> list[Ratio]:
    """Per setting: the architecture gain (block vs vanilla), the implementation gain (vanilla vs HF), the KV cache
    (the paper's L_B-fold cut per block-decoder layer); then the perplexity after equal training."""
    pairs = {"block_vs_hf": ("block", "hf-gptneox"), "vanilla_vs_hf": ("vanilla", "hf-gptneox"),
             "block_vs_vanilla": ("block", "vanilla")}
    ratios = []
    for n in SETTINGS:
        ratios += [Ratio(f"tokens_per_s_{pair}_{n}", ours, anchor, f"{n}.tokens_per_s", target=SPEED_TARGETS.get(
            f"{pair}_{n}")) for pair, (ours, anchor) in pairs.items()]
        ratios += [Ratio(f"kv_bytes_vanilla_vs_block_{n}", "vanilla", "block", f"{n}.kv_bytes_per_sequence"),
                   Ratio(f"kv_bytes_per_layer_vanilla_vs_block_{n}", "vanilla", "block", f"{n}.kv_bytes_per_layer",
                         target=(">=", float(s["block_len"])))]
    return [*ratios, Ratio("val_ppl_block_vs_vanilla", "block", "vanilla", "val_ppl", target=("<=", 1.1))]


def _columns(s: dict[str, Any]) -> list[Column]:
    speed = [column for name, length in s["lengths"].items() for column in (
        Column(f"{name.replace('_', '-')} {length['prompt']}/{length['decode']} tokens/s", f"{name}.tokens_per_s",
               "{:.1f}"), Column("s/run", f"{name}.mean_seconds", "{:.2f}"))]
    kv = [Cell(f"KV KiB/{unit} (prefill · decode)", f"decode_heavy.{key}", text=lambda r, key=key: " · ".join(
        f"{r[name][key] / 1024:,.1f}" for name in SETTINGS)) for unit, key in (("seq", "kv_bytes_per_sequence"),
                                                                               ("layer", "kv_bytes_per_layer"))]
    return [Column("parameters", "parameters", "{:,}"), *speed, *kv,
            Column(f"val ppl ({s['train_steps']} steps)", "val_ppl", "{:.2f}")]


def _lines(report: dict[str, Any]) -> list[str]:
    s, measured = report["settings"], {name: r for name, r in report["results"].items() if ran(r)}
    same, exact = ([all(r[name][key] for r in measured.values() for name in SETTINGS)
                    for key in ("same_prompts_as_others", "exact_tokens")])
    return [*(f"{name}: {escape(r['implementation'])}" for name, r in measured.items()),
            f"same prompts for every system: {same}; every sequence got exactly the requested tokens: {exact}",
            "architecture gain: block vs vanilla (the same generation code and caches); implementation gain: "
            "vanilla vs hf-gptneox (our cached generation vs HF generate)",
            f"[dim]KV-cache KiB per sequence (the peak, all layers) and per layer; block's per layer: its global "
            f"cache per block-decoder layer (the local cache, at most {s['prefix']} + L_B - 1 entries per "
            "token-decoder layer, counts in the per-sequence total); hf-gptneox's computed, ours measured[/dim]",
            f"[dim]perplexity: {escape(s['training'])}[/dim]"]


BENCHMARK = Benchmark(
    name="block", options=BlockBenchOptions, systems=SYSTEMS, worker="lmlab.plugins.block.bench:run_system",
    doc="Block Transformer vs its vanilla twin vs HF GPTNeoX `generate`: tokens/s, KV-cache bytes, perplexity.",
    settings=_settings, finish=_finish, ratios=_ratios, columns=_columns, lines=_lines,
    versions=("torch", "transformers"),
    title=lambda s: f"Block Transformer vs vanilla vs HF GPTNeoX generate · {s['n_layer']} layers × {s['n_embd']} · "
                    f"{s['n_head']} heads · L_B {s['block_len']} · batch {s['batch_size']} · vocab {s['vocab_size']:,} "
                    f"· 1 warm-up + {s['timed_runs']} timed runs · {s['threads']} threads · fp32 {s['device']}",
    detail=lambda s: f"batch {s['batch_size']}, prompt/decode " + " and ".join(
        f"{length['prompt']}/{length['decode']}" for length in s["lengths"].values()))
bench_block = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: build the system's model, then per setting one untimed warm-up and the timed runs of generating from
    the shared prompts (uniform random ids, the same in every worker: drawn by a CPU generator, seed + index)."""
    import torch

    device, hf = w.worker_setup(settings), system == "hf-gptneox"
    model, out = twins.build(system, settings)
    out["parameters"] = sum(p.numel() for p in model.to(device).parameters())
    for index, name in enumerate(SETTINGS):
        prompt_len, n = settings["lengths"][name]["prompt"], settings["lengths"][name]["decode"]
        prompts = torch.randint(0, settings["vocab_size"], (settings["batch_size"], prompt_len),
                                generator=torch.Generator().manual_seed(settings["seed"] + index)).to(device)
        run = (twins.generate_hf if hf else twins.generate_ours)(model, prompts, n)
        probe = twins.global_cache_probe(model, settings["block_layers"]) if system == "block" else None
        warmup, (counts, kv) = w.timed(run, device)
        per_layer = probe() if probe else kv // settings["n_layer"]  # block: its global cache per block-decoder layer
        timed = [w.timed(run, device) for _ in range(settings["timed_runs"])]
        times, generated = [t for t, _ in timed], [c for _, (made, _) in timed for c in made]
        out[name] = {"prompt": prompt_len, "decode": n, "tokens_per_s": round(sum(generated) / sum(times), 2),
                     "mean_seconds": round(statistics.mean(times), 4), "run_seconds": [round(t, 4) for t in times],
                     "warmup_seconds": round(warmup, 4), "exact_tokens": all(c == n for c in counts + generated),
                     "kv_bytes_per_sequence": kv, "kv_bytes_per_layer": per_layer,
                     "kv_bytes_source": "computed" if hf else "measured",
                     "prompts_sha256": w.tensors_sha256([(name, prompts)])}
    out["torch_threads"] = torch.get_num_threads()
    return out
