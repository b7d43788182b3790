"""`lmlab bench serve`: `lmlab serve-block` under load over loopback HTTP, batch 1 against continuous batching, for a
Block Transformer and its vanilla twin (docs/benchmarks.md#bench-serve; the load generator is core.bench.http_load)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.bench import http_load as load
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Figure, Ratio, System, bench_command, ran
from lmlab.core.bench.machine import version
from lmlab.core.commands import options as o
from lmlab.core.files.records import example
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.loading import cache_dir
from lmlab.plugins.block import twins

MODES = ("batch1", "dynamic")
BATCH_WINDOW_MS, MAX_QUEUE, WARMUP_REQUESTS = 5.0, 1024, 4  # serve-block's default window; warm-up per server


@dataclass
class ServeBenchOptions(BenchOptions):
    n_layer: int = o.option(6, "Layers of the vanilla model; the block model splits them in half.", min=2)
    n_embd: int = o.option(256, "Width of both models.", min=8)
    n_head: int = o.option(4, "Attention heads.", min=1)
    block_len: int = o.option(4, "Tokens per block, L_B: 1, 2, 4 or 8.")
    block_size: int = o.option(256, "Context of both models: a multiple of --block-len, at least "
                            "--prompt-tokens + --max-new-tokens.", min=1)
    vocab_size: int = o.option(4096, "Vocabulary: the byte-level BPE `lmlab pretrain` trains on Tiny Shakespeare "
                               "(cached).", min=260)
    prompt_tokens: int = o.option(64, "Tokens of every prompt.", min=1)
    max_new_tokens: int = o.option(32, "max_tokens of every request.", min=1, deprecated=("--max-tokens",))
    concurrency_levels: str = o.option("1,16,64,200", "Comma-separated levels: requests in flight at once.",
                                       deprecated=("--concurrency",))
    requests: int = o.option(1000, "Requests per level at most (at least the largest level).", min=1)
    max_seconds: float = o.option(6.0, "Per level: stop issuing new requests after this many seconds.", min=0.0)
    batch_size: int = o.option(64, "--max-batch-size of the dynamic-batching servers.", min=2)
    timeout: float = o.option(300.0, "Seconds a request may take before it counts as dropped.", min=1.0)


def _settings(opts: ServeBenchOptions) -> dict[str, Any]:
    levels, n = load.load_levels(opts.concurrency_levels, opts.requests), opts.n_layer
    least = twins.check_shape(n, opts.n_embd, opts.n_head, opts.block_len,
                              {"serve": (opts.prompt_tokens, opts.max_new_tokens)})
    if opts.block_size % opts.block_len or opts.block_size < least:
        raise LmlabError(f"--block-size {opts.block_size} must be a multiple of --block-len {opts.block_len} and at "
                         f"least --prompt-tokens + --max-new-tokens = {opts.prompt_tokens + opts.max_new_tokens}.",
                         hint=f"e.g. --block-size {least}")
    return {"n_layer": n, "n_embd": opts.n_embd, "n_head": opts.n_head, "block_len": opts.block_len,
            "prefix": twins.PREFIX, "block_layers": n // 2, "token_layers": n - n // 2, "context": opts.block_size,
            "vocab_size": opts.vocab_size, "prompt_tokens": opts.prompt_tokens, "max_tokens": opts.max_new_tokens,
            "concurrency": levels, "requests_per_level": opts.requests, "max_seconds_per_level": opts.max_seconds,
            "timeout_seconds": opts.timeout, "modes": {"batch1": 1, "dynamic": opts.batch_size},
            "batch_window_ms": BATCH_WINDOW_MS, "max_queue": MAX_QUEUE, "warmup_requests": WARMUP_REQUESTS,
            "seed": opts.seed, "dtype": "float32",
            "server": "`python -m lmlab.cli serve-block MODEL --max-batch-size N --precision fp32` in a subprocess of "
                      "the system's worker, OMP_NUM_THREADS = threads; stopped with SIGTERM",
            **load.FIGURES}


def _prepare(opts: ServeBenchOptions, settings: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """The prompts (seeded random slices of Tiny Shakespeare cut to --prompt-tokens tokens and decoded) and the BPE
    `lmlab pretrain` trains on it, saved into `scratch` for the workers; their facts go into the settings."""
    from lmlab.core.training.text_corpus import read_texts, resolve_tokenizer

    texts = [t for _, t in read_texts(str(example("pretrain/tinyshakespeare.txt")))]
    tokenizer = resolve_tokenizer(None, texts, settings["vocab_size"], cache_dir() / "tokenizers")
    prompts = load.text_prompts("\n".join(texts), tokenizer, settings["prompt_tokens"], settings["requests_per_level"],
                                settings["seed"])
    settings.update(vocab_size=len(tokenizer), **load.prompt_facts(prompts, tokenizer, settings["max_tokens"],
                                                                    settings["context"], "Tiny Shakespeare"))
    tokenizer.save_pretrained(scratch / "tokenizer")
    (scratch / "prompts.json").write_text(json.dumps(prompts))
    return {"tokenizer_dir": str(scratch / "tokenizer"), "prompts_file": str(scratch / "prompts.json")}


def _lines(report: dict[str, Any]) -> list[str]:
    s, measured = report["settings"], {n: r for n, r in report["results"].items() if ran(r)}
    return [*(f"{n}: {r['implementation']}, {r['parameters']:,} parameters; server exit codes "
              + ", ".join(f"{mode} {r[mode]['server_exit_code']}" for mode in MODES) for n, r in measured.items()),
            f"[dim]requests/s: {s['requests_per_s']}; latency: {s['latency']}; batch: {s['mean_batch_size']}[/dim]"]


def _ratios(s: dict[str, Any]) -> list[Ratio | Figure]:
    rps, levels, top = "levels.c{}.requests_per_s", s["concurrency"], f"c{max(s['concurrency'])}"
    return [*(Ratio(f"requests_per_s_dynamic_vs_batch1_c{c}_{name}", name, name, "dynamic." + rps.format(c),
                    "batch1." + rps.format(c), target=(">=", 3.0) if c == 64 else None)
              for name in ("block", "vanilla") for c in levels),
            *(Ratio(f"requests_per_s_block_vs_vanilla_c{c}_{mode}", "block", "vanilla", f"{mode}." + rps.format(c),
                    target=(">=", 2.0) if mode == "dynamic" else None) for mode in MODES for c in levels),
            *(Figure(f"{key}_{top}", lambda results, key=key: load.error_figures(results, MODES, top).get(key),
                     ("<=", 0.0)) for key in ("errors", "dropped"))]


BENCHMARK = Benchmark(
    name="serve", doc="serve-block under load: requests/s, p50/p99 latency, tokens/s, batch 1 vs dynamic batching, "
    "block vs vanilla.", options=ServeBenchOptions, worker="lmlab.plugins.block.bench_serve:run_system",
    systems={name: System("uvicorn", "pip install 'lmlab[serve]'") for name in ("block", "vanilla")},
    settings=_settings, prepare=_prepare, ratios=_ratios, lines=_lines,
    table_rows=lambda report: load.level_rows(report["results"], MODES),
    versions=("torch", "transformers", "fastapi", "uvicorn", "httpx"),
    detail=lambda s: f"concurrency {', '.join(map(str, s['concurrency']))}, batch 1 and ≤ {s['modes']['dynamic']}",
    title=lambda s: f"serve-block under load · {s['n_layer']} layers × {s['n_embd']} · {s['n_head']} heads · L_B "
                    f"{s['block_len']} · context {s['context']} · prompt {s['prompt_tokens']} + {s['max_tokens']} "
                    f"tokens · dynamic batch ≤ {s['modes']['dynamic']} · ≤ {s['requests_per_level']} requests or "
                    f"{s['max_seconds_per_level']:g} s per level · {s['threads']} threads · {s['device']}",
    columns=load.COLUMNS)
bench_serve = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: the system's model, seeded, saved as `lmlab pretrain` saves one, served in each mode at every level."""
    from transformers import AutoTokenizer

    model, name = twins.build_ours(system, settings)
    prompts = json.loads(Path(settings["prompts_file"]).read_text())
    out: dict[str, Any] = {"implementation": f"{name} · serve-block (continuous batching)",
                           "version": version("lmlab"), "parameters": sum(p.numel() for p in model.parameters())}
    with tempfile.TemporaryDirectory(prefix=f"lmlab-bench-serve-{system}-") as tmp:
        model.save(Path(tmp))
        AutoTokenizer.from_pretrained(settings["tokenizer_dir"]).save_pretrained(tmp)
        for mode, size in settings["modes"].items():
            command = ["serve-block", tmp, "--max-batch-size", str(size), "--batch-window-ms", str(BATCH_WINDOW_MS),
                       "--max-queue", str(MAX_QUEUE), "--max-new-tokens", str(settings["max_tokens"]), "--precision",
                       "fp32"]  # the settings' dtype (auto would be bf16 on a GPU)
            out[mode] = {"max_batch_size": size, **load.serve_and_measure(command, prompts, settings, WARMUP_REQUESTS)}
    return out
