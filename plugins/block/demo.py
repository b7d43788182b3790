"""The Block Transformer's part of `lmlab demo`: a tiny block model and its vanilla twin trained alike by `lmlab
pretrain` (in a subprocess: this plugin does not import pretrain), samples and decode throughput; then the block
model served over HTTP, concurrent requests answered with and without batching."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmlab.core.kernel.console import err
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.serving.generation import Sampling, generate_text, generate_tokens, load_generator

SHAPE = ("--n-layer", "4", "--n-embd", "128", "--n-head", "2", "--block-size", "128")
BATCH, PROMPT, NEW = 8, 32, 128  # the throughput check: 8 random prompts of 32 tokens, 128 new tokens each
SERVE_REQUESTS, SERVE_TOKENS = 16, 24  # the serving check: 16 concurrent requests of 24 tokens


def _pretrain(arch: str, folder: Path, steps: int) -> dict:
    args = [sys.executable, "-m", "lmlab.cli", "pretrain", "--arch", arch, *SHAPE, "--max-steps", str(steps),
            "--eval-every", str(steps), "-o", str(folder), "--overwrite", "--json", "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LmlabError(f"lmlab pretrain --arch {arch} failed in the demo: {done.stderr.strip()[-300:]}",
                         hint=f"run `{' '.join(args[2:])}` to see it")
    return json.loads(done.stdout)


def _tokens_per_s(folder: Path) -> float:
    model, _ = load_generator(folder)
    prompts = torch.randint(1, model.config.vocab_size, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    generate_tokens(model, prompts[:, :8].tolist(), Sampling(max_tokens=8, temperature=0))  # warm-up
    start = time.perf_counter()
    generate_tokens(model, prompts.tolist(), Sampling(max_tokens=NEW, temperature=0, ignore_eos=True))
    return BATCH * NEW / (time.perf_counter() - start)


def run_demo(output_dir: str, quick: bool) -> None:
    steps = 20 if quick else 150
    rates = {}
    for arch in ("block", "gpt"):
        folder = Path(output_dir) / f"pretrain-{arch}"
        summary = _pretrain(arch, folder, steps)
        rates[arch] = _tokens_per_s(folder)
        sample = generate_text(folder, "ROMEO:", max_new_tokens=32, temperature=0.8, top_k=50, seed=0).text
        err.print(f"{arch}: {summary['parameters']:,} params · val ppl {summary['val_ppl']:.1f} after {steps} steps · "
                  f"decode {rates[arch]:,.0f} tok/s → [bold]{folder}[/bold]")
        err.print(f"[dim]sample ({arch}):[/dim] ROMEO:{sample}")
    err.print(f"block vs vanilla decode throughput (batch {BATCH}, {PROMPT}-token prompts, {NEW} new tokens, cached): "
              f"[bold]{rates['block'] / rates['gpt']:.2f}×[/bold]; `lmlab bench block` measures it at scale")


def _serve_and_ask(model: object, tokenizer: object, max_batch_size: int) -> tuple[float, str, float]:
    """(requests/s, one answer, mean batch size) of SERVE_REQUESTS concurrent requests to a loopback server."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from lmlab.core.serving.engine import Engine
    from lmlab.core.serving.server import InThread, Limits, Server

    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, batch_window_ms=20).start()
    served = InThread(Server(engine, tokenizer, model_name="demo-block",
                             limits=Limits(max_tokens=SERVE_TOKENS, context=model.config.block_size)))
    try:
        def ask(i: int) -> str:
            body = {"prompt": "ROMEO:", "max_tokens": SERVE_TOKENS, "temperature": 0.8, "seed": i}
            response = httpx.post(f"{served.url}/v1/completions", json=body, timeout=120)
            response.raise_for_status()
            return response.json()["choices"][0]["text"]

        start = time.perf_counter()
        with ThreadPoolExecutor(SERVE_REQUESTS) as pool:
            answers = list(pool.map(ask, range(SERVE_REQUESTS)))
        rate = SERVE_REQUESTS / (time.perf_counter() - start)
        mean_batch = httpx.get(f"{served.url}/metrics?format=json").json()["mean_batch_size"]
    finally:
        served.stop()
    return rate, answers[0], mean_batch


def run_serve_demo(output_dir: str, quick: bool) -> None:
    folder = Path(output_dir) / "pretrain-block"
    if not (folder / "model").is_dir():
        raise LmlabError(f"{folder}: no block model to serve.", hint="the demo's block step makes it; run the whole "
                         "`lmlab demo`")
    model, tokenizer = load_generator(folder)
    one, _, _ = _serve_and_ask(model, tokenizer, 1)
    many, answer, mean_batch = _serve_and_ask(model, tokenizer, SERVE_REQUESTS)
    err.print(f"served {folder} on 127.0.0.1; {SERVE_REQUESTS} concurrent requests of {SERVE_TOKENS} tokens: "
              f"{one:.1f} req/s one at a time, {many:.1f} req/s batched (mean batch {mean_batch:.1f}): "
              f"[bold]{many / one:.2f}×[/bold]; try `lmlab serve-block {folder}`")
    err.print(f"[dim]answer:[/dim] ROMEO:{answer}")
