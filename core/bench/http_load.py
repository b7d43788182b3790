"""Load on an lmlab HTTP server over real loopback HTTP: start `lmlab <serve command>` on a free port, drive it
with closed-loop clients at one concurrency level after another (its load from the benchmark's settings), read its
/metrics, stop it with SIGTERM (it drains) and keep its exit code. docs/benchmarks.md#bench-serve says what each
level's figures mean; the client shares the machine's cores with the server, and its cost is client_cpu_seconds."""

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
from pathlib import Path
from typing import Any

from lmlab.core.bench.benchmark import Column
from lmlab.core.bench.machine import cpu_seconds, other_cpu_share
from lmlab.core.kernel.errors import LmlabError

STARTUP_SECONDS = 120.0
DRAIN_SECONDS = 30.0


def start_server(command: list[str], settings: dict[str, Any], log_file: Any) -> tuple[subprocess.Popen, str, float]:
    """`lmlab COMMAND --port P` on a free loopback port with `settings["threads"]` threads, its log into
    `log_file`; (process, base URL, seconds until /health answered 200). It runs where the calling benchmark worker
    runs: it inherits the worker's environment (`CUDA_VISIBLE_DEVICES`, `LMLAB_DEVICE`: core.bench.worker)."""
    import httpx

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "lmlab.cli", *command, "--port", str(port), "--drain-seconds", str(DRAIN_SECONDS)]
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
    tick = time.perf_counter()
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - tick < STARTUP_SECONDS and proc.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, round(time.perf_counter() - tick, 2)
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log_file.flush()
    tail = " | ".join(Path(log_file.name).read_text().strip().splitlines()[-3:])
    shown = " ".join(command)
    raise LmlabError(f"`lmlab {shown}` did not come up within {STARTUP_SECONDS:g} s (exit code "
                     f"{proc.returncode}): {tail}", hint=f"run `lmlab {shown}` to see the whole error")


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then wait for the drain; the exit code (None: it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DRAIN_SECONDS + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


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

    return httpx.get(f"{url}/metrics?format=json", timeout=30).json()


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
    up to `requests` in all, none started after `max_seconds` (but the first `concurrency`); the level's figures once
    every one sent is answered. Each client is its own httpx.AsyncClient with one connection: one shared by all cost
    24 ms of CPU per request at concurrency 64 (httpcore scans its whole pool on every request), so the load
    generator, not the server, capped the requests/s (docs/benchmarks.md); with a connection each, 2.5-4 ms."""
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


#: What the figures of a level mean, for a report's settings.
FIGURES = {
    "requests_per_s": "requests answered with 200 / wall seconds from the first request to the last answer",
    "latency": "per request, from sending it to its answer; p50 and p99 by nearest rank",
    "mean_batch_size": "the server's sequences per decode step over the level (/metrics batch_sizes, after - before)",
    "client": "in the system's worker: `concurrency` asyncio httpx.AsyncClients with one connection each, in a closed "
              "loop (each sends its next request when its last is answered), POST /v1/completions {prompt, "
              "max_tokens, temperature: 0}",
}


def text_prompts(text: str, tokenizer: Any, n_tokens: int, count: int, seed: int) -> list[str]:
    """`count` prompts of `n_tokens` tokens each: seeded random slices of `text`, cut to `n_tokens` tokens and decoded
    back to text (16 characters a token: far more than n tokens of English text)."""
    rng, span = random.Random(seed), 16 * n_tokens
    starts = [rng.randrange(max(1, len(text) - span)) for _ in range(count)]
    return [tokenizer.decode(tokenizer(text[s:s + span], add_special_tokens=False)["input_ids"][:n_tokens])
            for s in starts]


def serve_and_measure(command: list[str], prompts: list[str], settings: dict[str, Any],
                      warmup_requests: int) -> dict[str, Any]:
    """Start `lmlab COMMAND`, warm it up with `warmup_requests` requests, run every level of
    `settings["concurrency"]`, stop it; its startup seconds, warm-up, levels (`c<N>`) and exit code."""
    with tempfile.NamedTemporaryFile("w", prefix="lmlab-serve-", suffix=".log") as log_file:
        proc, url, startup = start_server(command, settings, log_file)
        out: dict[str, Any] = {"startup_seconds": startup}
        try:
            warm = min(warmup_requests, settings["requests_per_level"])
            warmup = asyncio.run(run_level(url, prompts[:warm], warm, warm, math.inf, settings))
            out["warmup"] = {k: warmup[k] for k in ("requests", "errors", "dropped", "wall_seconds")}
            out["levels"] = {f"c{c}": measure_level(proc.pid, url, prompts, c, settings)
                             for c in settings["concurrency"]}
        finally:
            out["server_exit_code"] = stop_server(proc)
    return out


def load_levels(text: str, requests: int) -> list[int]:
    """`--concurrency-levels 1,16,64` → [1, 16, 64] (each a positive whole number; duplicates dropped, order kept), with
    `--requests` at least the largest level (a level needs one request per slot)."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise LmlabError(f"--concurrency-levels must be comma-separated whole numbers of 1 or more, got '{text}'.",
                         hint="e.g. --concurrency-levels 1,16,64,200")
    levels = list(dict.fromkeys(int(v) for v in values))
    if requests < max(levels):
        raise LmlabError(f"--requests {requests} is below the largest --concurrency-levels {max(levels)}: a level "
                         "needs at least one request per slot.", hint=f"use --requests {max(levels)} or more")
    return levels


def prompt_facts(prompts: list[str], tokenizer: Any, max_tokens: int, context: int, source: str) -> dict[str, Any]:
    """What a report's settings say about the `text_prompts` of `source` every server gets (how they are made, their
    sha256 and re-encoded token counts); refused when the longest with `max_tokens` does not fit `context`."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    if max(lengths) + max_tokens > context:
        raise LmlabError(f"A prompt re-encodes to {max(lengths)} tokens, which with --max-new-tokens {max_tokens} "
                         f"exceeds --block-size {context}.", hint="raise --block-size or lower --prompt-tokens")
    return {"prompts_sha256": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
            "prompt_tokens_served": {"min": min(lengths), "max": max(lengths)},
            "prompts": f"random slices of {source} (random.Random(seed)), cut to --prompt-tokens tokens and decoded; "
                       "every level of every server sends prompts 0, 1, 2, … in order"}


def error_figures(results: dict[str, dict[str, Any]], modes: tuple[str, ...], top: str) -> dict[str, int]:
    """Errors and dropped requests summed over every system and mode at level `top` (e.g. "c200")."""
    served = [r[mode]["levels"][top] for r in results.values() if "skipped" not in r for mode in modes]
    return {key: sum(level[key] for level in served) for key in ("errors", "dropped")} if served else {}


def level_rows(results: dict[str, dict[str, Any]], modes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A report table's rows: one per system, mode and level ("block · dynamic · c64"); a skipped system's one."""
    return {f"{name} · {mode} · {key}": level for name, r in results.items() if "skipped" not in r
            for mode in modes for key, level in r[mode]["levels"].items()} | \
        {name: r for name, r in results.items() if "skipped" in r}


#: The table columns of a level's figures.
COLUMNS = [Column(h, k, f) for h, k, f in (
    ("requests", "requests", "{}"), ("errors", "errors", "{}"), ("dropped", "dropped", "{}"),
    ("wall s", "wall_seconds", "{:.1f}"), ("requests/s", "requests_per_s", "{:.2f}"), ("p50 ms", "p50_ms", "{:.0f}"),
    ("p99 ms", "p99_ms", "{:.0f}"), ("tokens/s", "tokens_per_s", "{:.1f}"), ("mean batch", "mean_batch_size", "{:.2f}"),
    ("CPU s server", "server_cpu_seconds", "{}"), ("CPU s client", "client_cpu_seconds", "{}"),
    ("other CPU", "other_processes_cpu_share", "{:.1%}"))]
