"""`lmlab bench serve`: `lmlab serve-block` under load over real HTTP on loopback, with continuous batching against
one sequence at a time, for a Block Transformer and its vanilla twin, side by side, in one run.

What is compared (docs/benchmarks.md): two models with random weights from --seed, saved as
`lmlab pretrain` leaves them (config.json, model.safetensors and the tokenizer) into a temporary folder each, with
one byte-level BPE (`lmlab pretrain`'s, trained on the bundled Tiny Shakespeare and cached):

- `block`: our BlockTransformer (`--arch block`), n_layer/2 block-decoder + n_layer/2 token-decoder layers of the
  given width, block_len L_B, prefix 2; waiting requests join its running batch between blocks.
- `vanilla`: our GPT (`--arch gpt`, registered by the pretrain plugin and built through the registry), n_layer
  layers of the same width; waiting requests join its running batch at every step.

Each model is served twice by the real `lmlab serve-block` in a subprocess (on the bench's `--device`, which is all
the server sees, with the machine's threads): with `--max-batch-size 1` (`batch1`: one sequence at a time) and with
`--max-batch-size --batch-size` (`dynamic`). After /health answers and a short warm-up, a load generator in this
process (`concurrency` asyncio httpx clients with one connection each, in a closed loop: each sends its next request
when its last is answered) runs one level per `--concurrency`: POST /v1/completions with a prompt of --prompt-tokens
tokens (random slices of Tiny Shakespeare, seeded, the same for every server), --max-tokens and temperature 0. A
level sends at most --requests requests and starts none after --max-seconds (but the first `concurrency`, which go
out together), then waits for those in flight.

Per level: requests sent, answered with 200, errors (another status, or the connection failed), dropped (no
answer within --timeout), wall seconds from the first request to the last answer, requests/s (answered / wall),
p50 and p99 latency of the answered requests, generated tokens/s (their usage.completion_tokens / wall), and the
server's mean batch size over the level (its /metrics batch-size histogram before and after). CPU seconds of the
server and of the load generator are recorded, and the share of the CPU other processes took. Then SIGTERM stops
the server, and its exit code (0 expected: it drains and exits cleanly) is recorded.

The client shares the machine's cores with the server, as any loopback benchmark does; what it costs is in each
level's client_cpu_seconds (a connection per client keeps it small: see `run_level`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from importlib import util
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, cpu_seconds, machine, other_cpu_share, version
from lmlab.core.bench.report import Targets, emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, parse_systems, systems_option
from lmlab.core.bench.worker import WORKER_ENV, device_env
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt
from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.block.bench import PREFIX, _arch_opt, check_shape


def _server_missing() -> str | None:
    missing = [name for name in ("fastapi", "uvicorn") if util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed (pip install 'lmlab[serve]')" if missing else None


def _vanilla_missing() -> str | None:
    from lmlab.core.models.architectures import architectures

    if "gpt" not in architectures():
        return "no 'gpt' architecture is registered (the pretrain plugin adds it)"
    return _server_missing()


SYSTEMS = {"block": System(precondition=_server_missing), "vanilla": System(precondition=_vanilla_missing)}
SystemsOpt = systems_option(SYSTEMS)
MODES = ("batch1", "dynamic")
BATCH_WINDOW_MS = 5.0  # serve-block's default
MAX_QUEUE = 1024
WARMUP_REQUESTS = 4
STARTUP_SECONDS = 120.0
DRAIN_SECONDS = 30.0
TARGETS = {"requests_per_s_dynamic_vs_batch1_c64_block": (">=", 3.0),
           "requests_per_s_dynamic_vs_batch1_c64_vanilla": (">=", 3.0)}


def bench_serve(
    n_layer: Annotated[int, typer.Option("--n-layer", min=2, help="Layers of the vanilla model; the block model "
                       "splits them in half (block decoder + token decoder).")] = 6,
    n_embd: Annotated[int, typer.Option("--n-embd", min=8, help="Width of both models.")] = 256,
    n_head: Annotated[int, typer.Option("--n-head", min=1, help="Attention heads.")] = 4,
    block_len: Annotated[int, typer.Option("--block-len", help="Tokens per block, L_B: 1, 2, 4 or 8.")] = 4,
    context: Annotated[int, typer.Option("--context", min=1, help="Context (block_size) of both models: a multiple "
                       "of --block-len, at least --prompt-tokens + --max-tokens.")] = 256,
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=260, help="Vocabulary: the byte-level BPE "
                          "`lmlab pretrain` trains on Tiny Shakespeare (4096 is its default, cached).")] = 4096,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, help="Tokens of every prompt.")] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="max_tokens of every request.")] = 32,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated concurrency levels: requests "
                           "in flight at once.")] = "1,16,64,200",
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests per level at most (at least the "
                        "largest --concurrency).")] = 1000,
    max_seconds: Annotated[float, typer.Option("--max-seconds", min=0.0, help="Per level: stop issuing new "
                           "requests after this many seconds, then wait for those in flight.")] = 6.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="--max-batch-size of the dynamic-batching "
                          "servers.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds a request may take before it counts "
                       "as dropped.")] = 300.0,
    systems: SystemsOpt = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the models' init and of the prompts.")] = 42,
    device: DeviceOpt = "auto",
) -> None:
    """serve-block under load: requests/s, p50/p99 latency, tokens/s, batch 1 vs dynamic batching, block vs vanilla."""
    from rich.markup import escape

    from lmlab.core.kernel.console import log
    from lmlab.core.models.architectures import check_model_choice

    chosen = parse_systems(systems, SYSTEMS)
    where = device_settings(device)
    levels = parse_concurrency(concurrency)
    least = check_shape(n_layer, n_embd, n_head, block_len, {"serve": (prompt_tokens, max_tokens)})
    if context % block_len or context < least:
        raise LmlabError(f"--context {context} must be a multiple of --block-len {block_len} and at least "
                         f"--prompt-tokens + --max-tokens = {prompt_tokens + max_tokens}.",
                         hint=f"e.g. --context {least}")
    check_model_choice("block", "mha", block_size=context, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       arch_opt=_arch_opt(block_len, n_layer))
    if requests < max(levels):
        raise LmlabError(f"--requests {requests} is below the largest --concurrency {max(levels)}: a level needs at "
                         "least one request per slot.", hint=f"use --requests {max(levels)} or more")
    threads = cpu_count()
    settings: dict[str, Any] = {
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "block_len": block_len, "prefix": PREFIX,
        "block_layers": n_layer // 2, "token_layers": n_layer - n_layer // 2, "context": context,
        "vocab_size": vocab_size, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "concurrency": levels,
        "requests_per_level": requests, "max_seconds_per_level": max_seconds, "timeout_seconds": timeout,
        "modes": {"batch1": 1, "dynamic": batch_size}, "batch_window_ms": BATCH_WINDOW_MS, "max_queue": MAX_QUEUE,
        "warmup_requests": WARMUP_REQUESTS, "seed": seed, "dtype": "float32", **where, "threads": threads,
        "server": "`python -m lmlab.cli serve-block MODEL --max-batch-size N --precision fp32` in a subprocess, "
                  "OMP_NUM_THREADS = threads; stopped with SIGTERM",
        "client": "in the parent process: `concurrency` asyncio httpx.AsyncClients with one connection each, in a "
                  "closed loop (each sends its next request when its last is answered), POST /v1/completions "
                  "{prompt, max_tokens, temperature: 0}",
        "requests_per_s": "requests answered with 200 / wall seconds from the first request to the last answer",
        "latency": "per request, from sending it to its answer; p50 and p99 by nearest rank",
        "mean_batch_size": "the server's sequences per decode step over the level (/metrics batch_sizes, after - "
                           "before)",
    }
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-serve-") as tmp:
        prompts, tokenizer = _prepare(settings, requests)
        for name in chosen:
            reason = SYSTEMS[name].skip_reason()
            if reason is not None:
                results[name] = {"skipped": reason}
                log(f"[yellow]bench serve: {name} skipped: {escape(reason)}[/yellow]")
                continue
            folder = Path(tmp) / name / "model"
            results[name] = save_model(name, settings, tokenizer, folder)
            for mode in MODES:
                results[name][mode] = serve_and_measure(name, mode, folder, prompts, settings)
    report = make_report("serve", machine(threads, ("torch", "transformers", "fastapi", "uvicorn", "httpx")),
                         settings, results, _ratios(results, levels))
    emit(report, json_output, _print_table)


# ---------------------------------------------------------------------------------------------------------
# Options, prompts and models.


def parse_concurrency(text: str) -> list[int]:
    """`--concurrency 1,16,64` → [1, 16, 64] (each a positive whole number; duplicates dropped, order kept)."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise LmlabError(f"--concurrency must be comma-separated whole numbers of 1 or more, got '{text}'.",
                         hint="e.g. --concurrency 1,16,64,200")
    return list(dict.fromkeys(int(v) for v in values))


def _prepare(settings: dict[str, Any], count: int) -> tuple[list[str], Any]:
    """`count` prompts of `prompt_tokens` tokens each (seeded random slices of Tiny Shakespeare, decoded back to
    text) and the BPE `lmlab pretrain` trains on it (cached); the prompts' sha256 and token counts go into
    `settings`, and the vocabulary the tokenizer has."""
    from lmlab.core.files.paths import example
    from lmlab.core.models.loading import cache_dir
    from lmlab.core.training.text_corpus import read_texts, resolve_tokenizer

    texts = [t for _, t in read_texts(str(example("pretrain/tinyshakespeare.txt")))]
    tokenizer = resolve_tokenizer(None, texts, settings["vocab_size"], cache_dir() / "tokenizers")
    text, n, rng = "\n".join(texts), settings["prompt_tokens"], random.Random(settings["seed"])
    span = 16 * n  # characters: far more than n tokens of English text
    prompts = []
    for _ in range(count):
        start = rng.randrange(max(1, len(text) - span))
        prompts.append(tokenizer.decode(tokenizer(text[start:start + span], add_special_tokens=False)["input_ids"][:n]))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    if max(lengths) + settings["max_tokens"] > settings["context"]:
        raise LmlabError(f"A prompt re-encodes to {max(lengths)} tokens, which with --max-tokens "
                         f"{settings['max_tokens']} exceeds --context {settings['context']}.",
                         hint="raise --context or lower --prompt-tokens")
    settings.update(vocab_size=len(tokenizer), prompts_sha256=hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
                    prompt_tokens_served={"min": min(lengths), "max": max(lengths)},
                    prompts="random slices of examples/pretrain/tinyshakespeare.txt (random.Random(seed)), cut to "
                            "--prompt-tokens tokens and decoded; every level of every server sends prompts 0, 1, 2, "
                            "… in order")
    return prompts, tokenizer


def save_model(system: str, settings: dict[str, Any], tokenizer: Any, folder: Path) -> dict[str, Any]:
    """Build the system's model with random weights from the seed and save it with the tokenizer into `folder`, as
    `lmlab pretrain` leaves a run's model/; its parameters and a description."""
    import torch

    from lmlab.core.models.architectures import build_model

    torch.manual_seed(settings["seed"])
    block = system == "block"
    model, _ = build_model("block" if block else "gpt", "mha", vocab_size=settings["vocab_size"],
                           block_size=settings["context"], n_layer=settings["n_layer"], n_head=settings["n_head"],
                           n_embd=settings["n_embd"],
                           arch_opt=_arch_opt(settings["block_len"], settings["n_layer"]) if block else [])
    model.save(folder)
    tokenizer.save_pretrained(folder)
    name = f"BlockTransformer {settings['block_layers']}+{settings['token_layers']}, L_B {settings['block_len']}" \
        if block else "GPT (gpt arch)"
    return {"implementation": f"{name} · serve-block (continuous batching)", "version": version("lmlab"),
            "parameters": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------------------------------
# One server: start it, warm it up, measure every level, stop it.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, max_batch_size: int, settings: dict[str, Any],
                 log_file: Any) -> tuple[subprocess.Popen, str, float]:
    """`lmlab serve-block` on a free loopback port, its log into `log_file`; (process, base URL, seconds until
    /health answered 200)."""
    import httpx

    port = _free_port()
    args = [sys.executable, "-m", "lmlab.cli", "serve-block", str(folder), "--port", str(port), "--max-batch-size",
            str(max_batch_size), "--batch-window-ms", str(BATCH_WINDOW_MS), "--max-queue", str(MAX_QUEUE),
            "--max-tokens", str(settings["max_tokens"]), "--drain-seconds", str(DRAIN_SECONDS),
            "--precision", "fp32"]  # the settings' dtype (auto would be bf16 on a GPU)
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), **WORKER_ENV, **device_env(settings["device"])}
    tick = time.perf_counter()
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - tick < STARTUP_SECONDS and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, round(time.perf_counter() - tick, 2)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log_file.flush()
    tail = " | ".join(Path(log_file.name).read_text().strip().splitlines()[-3:])
    raise LmlabError(f"`lmlab serve-block {folder}` did not come up within {STARTUP_SECONDS:g} s (exit code "
                     f"{proc.returncode}): {tail}", hint=f"run `lmlab serve-block {folder}` to see the whole error")


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then wait for the drain; the exit code (None: it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DRAIN_SECONDS + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def serve_and_measure(system: str, mode: str, folder: Path, prompts: list[str],
                      settings: dict[str, Any]) -> dict[str, Any]:
    """Serve `folder` in `mode` (batch1 or dynamic), warm it up, run every level; the figures."""
    from lmlab.core.kernel.console import log

    size = settings["modes"][mode]
    with tempfile.NamedTemporaryFile("w", prefix=f"lmlab-serve-{system}-{mode}-", suffix=".log") as log_file:
        proc, url, startup = start_server(folder, size, settings, log_file)
        out: dict[str, Any] = {"max_batch_size": size, "startup_seconds": startup}
        try:
            warm = min(WARMUP_REQUESTS, settings["requests_per_level"])
            warmup = asyncio.run(run_level(url, prompts[:warm], warm, warm, math.inf, settings))
            out["warmup"] = {k: warmup[k] for k in ("requests", "errors", "dropped", "wall_seconds")}
            out["levels"] = {}
            for c in settings["concurrency"]:
                log(f"bench serve: {system} · {mode} (max batch {size}) · concurrency {c}…")
                out["levels"][f"c{c}"] = measure_level(proc.pid, url, prompts, c, settings)
        finally:
            out["server_exit_code"] = stop_server(proc)
    return out


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a running process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _metrics(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/metrics", timeout=30).json()


def measure_level(pid: int, url: str, prompts: list[str], c: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One level at concurrency c: the load generator's figures, the server's mean batch size over the level, the
    CPU seconds of the server and of the client, and the share other processes took."""
    before, machine_before = _metrics(url), cpu_seconds()
    server_before, client_before = _process_cpu(pid), _own_cpu()
    out = asyncio.run(run_level(url, prompts, c, settings["requests_per_level"], settings["max_seconds_per_level"],
                                settings))
    server_after, client_after, machine_after = _process_cpu(pid), _own_cpu(), cpu_seconds()
    after = _metrics(url)
    steps = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    n_steps = sum(steps.values())
    out["mean_batch_size"] = round(sum(k * v for k, v in steps.items()) / n_steps, 3) if n_steps else 0.0
    out["max_batch_size_seen"] = max((k for k, v in steps.items() if v), default=0)
    out["server_steps"] = n_steps
    out["server_generated_tokens"] = after["generated_tokens"] - before["generated_tokens"]
    out["client_cpu_seconds"] = round(client_after - client_before, 2)
    if server_before is None or server_after is None:
        out["server_cpu_seconds"] = out["other_processes_cpu_share"] = None
    else:
        out["server_cpu_seconds"] = round(server_after - server_before, 2)
        ours = server_after - server_before + client_after - client_before
        if machine_before is not None and machine_after is not None:
            machine_after = (machine_after[0], machine_after[1], machine_before[2] + ours)
        out["other_processes_cpu_share"] = other_cpu_share(machine_before, machine_after, settings["threads"])
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 < q ≤ 1) of `values` by nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def run_level(url: str, prompts: list[str], concurrency: int, requests: int, max_seconds: float,
                    settings: dict[str, Any]) -> dict[str, Any]:
    """`concurrency` clients in a closed loop, each sending its next completion as soon as its last one is answered:
    up to `requests` in all, none started after `max_seconds` (but the first `concurrency`); wait for every one
    sent, then the level's figures.

    Each client is its own httpx.AsyncClient with one connection: one client shared by all (its pool sized
    concurrency + 8) cost 24 ms of CPU per request at concurrency 64 and more on the 2-core machine the figures
    in docs/benchmarks.md come from (httpcore scans its whole pool on every request), so the load generator, not the
    server, capped the requests/s near 38; with a connection each, 2.5-4 ms."""
    import httpx

    timeout, body = settings["timeout_seconds"], {"max_tokens": settings["max_tokens"], "temperature": 0}
    latencies: list[float] = []
    counts = {"requests": 0, "tokens": 0, "errors": 0, "dropped": 0}
    first_error: list[str] = []

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        tick = time.perf_counter()
        try:
            response = await asyncio.wait_for(client.post("/v1/completions", json={"prompt": prompt, **body}), timeout)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - tick)
                counts["tokens"] += response.json()["usage"]["completion_tokens"]
                return
            counts["errors"] += 1
            first_error.append(f"HTTP {response.status_code}: {response.text[:200]}")
        except (asyncio.TimeoutError, httpx.TimeoutException):
            counts["dropped"] += 1
        except Exception as exc:  # refused, reset, or an answer that is not a completion: an error, not a crash
            counts["errors"] += 1
            first_error.append(f"{type(exc).__name__}: {exc}")

    async def client_loop(client: httpx.AsyncClient) -> None:
        while counts["requests"] < requests and (counts["requests"] < concurrency
                                                 or time.perf_counter() - start < max_seconds):
            counts["requests"] += 1
            await one(client, prompts[(counts["requests"] - 1) % len(prompts)])

    tls = ssl.create_default_context()  # loaded once, not per client (plain HTTP on loopback never uses it)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout,
                                                                     verify=tls)) for _ in range(concurrency)]
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for client in clients))
        wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "concurrency": concurrency, "requests": counts["requests"], "ok": len(latencies), "errors": counts["errors"],
        "dropped": counts["dropped"], "wall_seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "generated_tokens": counts["tokens"], "tokens_per_s": round(counts["tokens"] / wall, 2)}
    if first_error:
        out["first_error"] = first_error[0]
    return out


# ---------------------------------------------------------------------------------------------------------
# The comparison and the report.


def targets(levels: list[int]) -> Targets:
    """TARGETS, plus block ≥ 2× vanilla in requests/s at every level with dynamic batching, and no errors and no
    dropped requests at the largest level."""
    top = max(levels)
    return {**TARGETS, **{f"requests_per_s_block_vs_vanilla_c{c}_dynamic": (">=", 2.0) for c in levels},
            f"errors_c{top}": ("<=", 0.0), f"dropped_c{top}": ("<=", 0.0)}


def _ratios(results: dict[str, dict[str, Any]], levels: list[int]) -> dict[str, float | None]:
    def rps(system: str, mode: str, c: int) -> float | None:
        return results[system][mode]["levels"][f"c{c}"]["requests_per_s"] if ran(results.get(system)) else None

    out: dict[str, float | None] = {}
    for system in SYSTEMS:
        for c in levels:
            out[f"requests_per_s_dynamic_vs_batch1_c{c}_{system}"] = ratio(rps(system, "dynamic", c),
                                                                           rps(system, "batch1", c))
    for mode in MODES:
        for c in levels:
            out[f"requests_per_s_block_vs_vanilla_c{c}_{mode}"] = ratio(rps("block", mode, c), rps("vanilla", mode, c))
    top = f"c{max(levels)}"
    served = [r[mode]["levels"][top] for r in results.values() if ran(r) for mode in MODES]
    if served:
        out[f"errors_{top}"] = sum(level["errors"] for level in served)
        out[f"dropped_{top}"] = sum(level["dropped"] for level in served)
    return out


def _print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    rows: dict[str, dict[str, Any]] = {}
    lines = []
    for name, result in report["results"].items():
        if not ran(result):
            rows[name] = result
            continue
        lines.append(f"{name}: {result['implementation']}, {result['parameters']:,} parameters; server exit codes "
                     + ", ".join(f"{mode} {result[mode]['server_exit_code']}" for mode in MODES))
        for mode in MODES:
            for key, level in result[mode]["levels"].items():
                rows[f"{name} · {mode} · {key}"] = level
    lines.append(f"[dim]requests/s: {s['requests_per_s']}; latency: {s['latency']}; batch: {s['mean_batch_size']}"
                 "[/dim]")

    def row(r: dict[str, Any]) -> list[str]:
        share = r.get("other_processes_cpu_share")
        return [str(r["requests"]), str(r["errors"]), str(r["dropped"]), f"{r['wall_seconds']:.1f}",
                f"{r['requests_per_s']:.2f}", f"{r['p50_ms'] or 0:.0f}", f"{r['p99_ms'] or 0:.0f}",
                f"{r['tokens_per_s']:.1f}", f"{r['mean_batch_size']:.2f}",
                f"{r['server_cpu_seconds']} / {r['client_cpu_seconds']}", "–" if share is None else f"{share:.1%}"]

    print_results({**report, "results": rows},
                  f"serve-block under load · {s['n_layer']} layers × {s['n_embd']} · {s['n_head']} heads · L_B "
                  f"{s['block_len']} · context {s['context']} · prompt {s['prompt_tokens']} + {s['max_tokens']} "
                  f"tokens · dynamic batch ≤ {s['modes']['dynamic']} · ≤ {s['requests_per_level']} requests or "
                  f"{s['max_seconds_per_level']:g} s per level · {s['threads']} threads · {s['device']}",
                  ("requests", "errors", "dropped", "wall s", "requests/s", "p50 ms", "p99 ms", "tokens/s",
                   "mean batch", "CPU s server / client", "other CPU"), row, targets(s["concurrency"]), lines=lines)
