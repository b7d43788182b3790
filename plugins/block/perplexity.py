"""The perplexity part of `lmlab bench block`: the block model and its vanilla twin trained with the real
`lmlab pretrain`, in subprocesses, for equal steps on equal tokens per step, and each run's validation perplexity
(docs/benchmarks.md#bench-block)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lmlab.core.bench.machine import cpu_seconds, other_cpu_share
from lmlab.core.bench.report import ran
from lmlab.core.bench.worker import WORKER_ENV, device_env
from lmlab.core.kernel.errors import LmlabError

TRAIN_CONTEXT, TRAIN_BATCH = 128, 16


def warmup_steps(train_steps: int) -> int:
    return train_steps // 10


def training_note(train_steps: int) -> str:
    """What the report's settings say about the training runs."""
    if not train_steps:
        return "skipped (--train-steps 0)"
    return (f"`lmlab pretrain` on the bundled Tiny Shakespeare, equal steps and equal tokens per step (batch "
            f"{TRAIN_BATCH} × context {TRAIN_CONTEXT}), warm-up {warmup_steps(train_steps)} steps, its defaults "
            "otherwise; val_ppl from its summary (the block model's loss leaves out each window's first block, which "
            "it never predicts)")


def train_and_evaluate(arch: str, settings: dict[str, Any], arch_opt: list[str], folder: Path) -> dict[str, Any]:
    """Train `arch` ("block" or "gpt") with `lmlab pretrain` in a subprocess on the bench's device and threads; its
    summary's validation loss and perplexity, parameters and training time."""
    steps = settings["train_steps"]
    args = ["pretrain", "--arch", arch, "--attn", "mha", "--n-layer", settings["n_layer"], "--n-embd",
            settings["n_embd"], "--n-head", settings["n_head"], "--block-size", TRAIN_CONTEXT, "--batch-size",
            TRAIN_BATCH, "--vocab-size", settings["vocab_size"], "--max-steps", steps, "--warmup-steps",
            warmup_steps(steps), "--eval-every", 0, "--tev-every", 0, "--save-every", steps, "--seed", settings["seed"]]
    if arch == "block":
        for option in arch_opt:
            args += ["--arch-opt", option]
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), **WORKER_ENV, **device_env(settings["device"])}
    before = cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args), "-o", str(folder), "--json",
                           "--quiet"], capture_output=True, text=True, env=env, check=False)
    other = other_cpu_share(before, cpu_seconds(), settings["threads"])
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise LmlabError(f"`lmlab pretrain --arch {arch}` failed (exit code {proc.returncode}): {tail}",
                         hint=f"run `lmlab {' '.join(map(str, args))}` to see the whole error")
    summary = json.loads(proc.stdout)
    return {"val_loss": round(summary["val_loss"], 4), "val_ppl": round(summary["val_ppl"], 2),
            "trained_parameters": summary["parameters"], "train_seconds": summary["train_seconds"],
            "train_other_processes_cpu_share": other}


def train_all(results: dict[str, dict[str, Any]], settings: dict[str, Any], arch_opt: list[str]) -> None:
    """Perplexity after equal training, for block and vanilla where they ran (into their results)."""
    from lmlab.core.kernel.console import log

    with tempfile.TemporaryDirectory(prefix="lmlab-bench-block-") as tmp:
        for system, arch in (("block", "block"), ("vanilla", "gpt")):
            if ran(results.get(system)):
                log(f"bench block: training {system} for {settings['train_steps']} steps (lmlab pretrain --arch "
                    f"{arch})…")
                results[system].update(train_and_evaluate(arch, settings, arch_opt, Path(tmp) / arch))
