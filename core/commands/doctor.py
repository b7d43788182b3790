"""`lmlab demo`'s steps (one per plugin, through `register_demo_steps`) and the smoke check behind `lmlab doctor`:
every command once, at toy size ("tiny": what the test suite runs on the CPU; "small": a few more steps and SmolLM2-135M
for evaluation), on one device. Each step is one `lmlab` process, as a user runs it; it reports its exit code and the
peak memory it used (CUDA's allocator peak on a GPU, else peak RSS), which every lmlab process records at exit when
LMLAB_PEAK_MEMORY_DIR names a folder. A step whose input step failed is skipped."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.core.files.records import example
from lmlab.core.kernel.plugins import collect

PEAK_MEMORY_DIR = "LMLAB_PEAK_MEMORY_DIR"
SIZES = ("tiny", "small")
SERVE_REQUESTS = 4


def record_peak_memory() -> None:
    """At the end of an lmlab process: when LMLAB_PEAK_MEMORY_DIR is set, write this process's peak memory
    (CUDA's allocator peak when torch used a GPU, and peak RSS) to <dir>/<pid>.json."""
    folder = os.environ.get(PEAK_MEMORY_DIR)
    if not folder:
        return
    from lmlab.core.bench.machine import peak_rss_mb

    record: dict[str, Any] = {"pid": os.getpid(), "rss_peak_mb": round(peak_rss_mb(), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_peak_mb"] = round(max(torch.cuda.max_memory_allocated(i)
                                           for i in range(torch.cuda.device_count())) / 2**20, 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps(record))


@dataclass
class Step:
    """One command of the smoke check; `args` after `lmlab`, `needs` a step whose output it uses."""

    name: str
    args: list[str]
    needs: str | None = None
    launcher: list[str] = field(default_factory=list)  # e.g. torchrun for the FSDP2 step
    env: dict[str, str] = field(default_factory=dict)
    run: Callable[[Step, Path, dict[str, str]], int] | None = None  # a step that is more than one process


@dataclass
class Outcome:
    name: str
    exit_code: int | None  # None: skipped
    seconds: float
    peak_mb: float | None
    memory_source: str
    note: str = ""


def _seed_rows(path: Path, n: int) -> Path:
    """The first n bundled RADA seeds as a stand-in augmented file for `augment eval`."""
    lines = example("augment/seeds.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def steps(out: Path, device: str, size: str) -> list[Step]:
    """The commands, at `size`, writing under `out`, each with `--device device`. The trainers use bf16 autocast
    on a GPU (`--precision auto`) and fp32 on the CPU."""
    small = size == "small"
    dev = ["--device", device]
    q = ["--quiet"]
    gpt = ["--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--block-size", "64", *dev]
    orpo = ["train-orpo", "--model", "tiny-llama", "--batch-size", "2", "--max-length", "64", "--save-every", "1", *q,
            *dev]
    train_steps = "4" if small else "2"
    fsdp_env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "1", "-m"]
    augmented = _seed_rows(out / "augmented.jsonl", 3)
    index = ["--index", str(out / "index")]
    return [
        Step("train-orpo", [*orpo, "--max-steps", train_steps, "-o", str(out / "orpo")]),
        Step("train-orpo --resume", ["train-orpo", "--resume", str(out / "orpo"), "--max-steps",
                                     str(int(train_steps) + 1), *q, *dev], needs="train-orpo"),
        Step("train-orpo --lora", [*orpo, "--lora", "--max-steps", "1", "-o", str(out / "orpo-lora")]),
        Step("train-orpo --gradient-checkpointing", [*orpo, "--gradient-checkpointing", "--max-steps", "1",
                                                     "-o", str(out / "orpo-gc")]),
        Step("train-mapo", ["train-mapo", "--max-steps", train_steps, "--batch-size", "1", "--samples", "1",
                            "--sample-steps", "2", "-o", str(out / "mapo"), *q, *dev]),
        Step("pretrain", ["pretrain", *gpt, "--max-steps", train_steps, "-o", str(out / "gpt"), *q]),
        Step("pretrain (FSDP2, one rank)", ["lmlab.cli", "pretrain", *gpt, "--max-steps", "2", "-o",
                                            str(out / "gpt-fsdp2"), *q], launcher=torchrun, env=fsdp_env),
        Step("pretrain --arch block", ["pretrain", "--arch", "block", *gpt, "--max-steps", train_steps, "-o",
                                       str(out / "block"), *q]),
        Step("generate", ["generate", str(out / "block"), "--prompt", "ROMEO:", "--max-new-tokens", "8", *dev],
             needs="pretrain --arch block"),
        Step("serve-block", ["serve-block", str(out / "block"), *dev], needs="pretrain --arch block",
             run=_serve_step),
        Step("eval click", ["eval", "click", "--model", "smollm2-135m" if small else "tiny-llama", "--limit",
                            "8" if small else "2", "-o", str(out / "eval-click"), *dev, *q]),
        Step("retrieve index", ["retrieve", "index", "-r", "bm25", "-r", "dense", "-o", str(out / "index"),
                                *dev, *q]),
        Step("retrieve search", ["retrieve", "search", *index, "-r", "dense", "--query",
                                 "Which planet is nearest the Sun?", "--top-k", "3", *dev, *q], needs="retrieve index"),
        Step("retrieve train --method reinforce", ["retrieve", "train", *index, "--method", "reinforce", "--model",
                                                   "tiny-llama", "--max-steps", train_steps, "--batch-size", "2",
                                                   "--num-beams", "2", "-o", str(out / "reinforce"), *q, *dev],
             needs="retrieve index"),
        Step("retrieve train-reranker", ["retrieve", "train-reranker", *index, "--members", "2", "--max-steps",
                                         train_steps, "--batch-size", "2", "--max-length", "64", "--swa-window", "2",
                                         "--swa-every", "1", "-o", str(out / "reranker"), *q, *dev],
             needs="retrieve index"),
        Step("augment eval", ["augment", "eval", "-a", str(augmented), "--max-steps", train_steps, "--max-length",
                              "128", "-o", str(out / "augment-eval"), *dev, *q]),
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_step(step: Step, out: Path, env: dict[str, str]) -> int:
    """Start `serve-block`, send SERVE_REQUESTS completions at once over loopback, stop it with SIGTERM; the exit
    code is the server's, or 1 when a request failed."""
    import httpx

    port = _free_port()
    log = (out / "serve-block.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *step.args, "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        if server.poll() is not None:
            return server.returncode

        def ask(i: int) -> int:
            body = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0.8, "seed": i}
            return httpx.post(f"{url}/completions", json=body, timeout=120).status_code

        with concurrent.futures.ThreadPoolExecutor(SERVE_REQUESTS) as pool:
            codes = list(pool.map(ask, range(SERVE_REQUESTS)))
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        return code if all(c == 200 for c in codes) else 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def _peak(folder: Path) -> tuple[float | None, str]:
    """The largest peak any process of the step recorded: CUDA's when one used the GPU, else RSS."""
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    cuda = [r["cuda_peak_mb"] for r in records if "cuda_peak_mb" in r]
    if cuda:
        return max(cuda), "torch.cuda.max_memory_allocated"
    rss = [r["rss_peak_mb"] for r in records]
    return (max(rss), "peak RSS") if rss else (None, "")


def run_step(step: Step, out: Path, timeout: float) -> Outcome:
    """Run one step as its own process(es); its output goes to <out>/<name>.log."""
    memory = out / "peak-memory" / step.name.replace(" ", "_").replace("/", "_")
    shutil.rmtree(memory, ignore_errors=True)
    env = {**os.environ, PEAK_MEMORY_DIR: str(memory), **step.env}
    started = time.perf_counter()
    if step.run is not None:
        code = step.run(step, out, env)
    else:
        command = [*step.launcher, *step.args] if step.launcher else [sys.executable, "-m", "lmlab.cli", *step.args]
        log = out / f"{memory.name}.log"
        try:
            with log.open("w") as fh:
                code = subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                      check=False).returncode
        except subprocess.TimeoutExpired:
            code = 124
    peak, source = _peak(memory)
    return Outcome(step.name, code, time.perf_counter() - started, peak, source)


def run_smoke(out: Path, device: str, size: str, only: Sequence[str] = (), timeout: float = 600,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Every step in order (or those named in `only`); a step whose input step failed is skipped."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    for step in steps(out, device, size):
        if only and step.name not in only:
            continue
        needed = outcomes.get(step.needs) if step.needs else None
        if step.needs and (needed is None or needed.exit_code != 0):
            outcome = Outcome(step.name, None, 0.0, None, "", note=f"skipped: needs {step.needs}")
        else:
            outcome = run_step(step, out, timeout)
        outcomes[step.name] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
    return list(outcomes.values())


@dataclass
class DemoStep:
    """One demo step: `run(output_dir, quick)`; `quick` steps use only tiny random models."""

    name: str
    title: str
    order: int
    run: Callable[[str, bool], None]
    quick: bool = True


def demo_steps() -> list[DemoStep]:
    return sorted(collect("register_demo_steps", "demo", key=lambda s: s.name).values(), key=lambda s: s.order)
