"""One benchmark system per subprocess, so that its peak memory is its own.

`run_worker` starts a fresh interpreter that calls a plugin's `"module:function"` with (system, settings) and
hands its JSON result back; `run_measured` adds how much of the CPU other processes took meanwhile. Core never
imports a plugin: the worker's entry point is a string the plugin passes in.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError
from lmlab.core.machine import BUSY_SHARE, cpu_seconds, other_cpu_share

#: Environment of every worker: quiet, offline, the parent's thread count (OMP_NUM_THREADS added per run).
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error"}


def run_worker(entry: str, system: str, settings: dict[str, Any], *, threads: int,
               env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """Run `entry` ("package.module:function", called as function(system, settings) -> JSON-able dict) in a
    fresh interpreter with `threads` OpenMP threads and return its result.

    A LmlabError raised in the worker comes back as the same error; a crash becomes a LmlabError quoting the
    last lines of the worker's output."""
    code = "from lmlab.core.bench_worker import worker_main; worker_main()"
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **WORKER_ENV, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        out, log_path = Path(tmp) / "result.json", Path(tmp) / "worker.log"
        with log_path.open("w") as log_file:
            proc = subprocess.run([sys.executable, "-c", code, entry, system, json.dumps(settings), str(out)],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=full_env, check=False)
        result = json.loads(out.read_text()) if out.exists() else None
        if result and "error" in result:
            raise LmlabError(result["error"], hint=result.get("hint"))
        if proc.returncode != 0 or result is None:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise LmlabError(f"The {system} benchmark process failed (exit code {proc.returncode}): {tail}",
                             hint=retry_hint or "rerun with LMLAB_DEBUG=1 for the worker's trace")
    return result


def run_measured(entry: str, system: str, settings: dict[str, Any], *, threads: int,
                 env: Mapping[str, str] | None = None, retry_hint: str | None = None) -> dict[str, Any]:
    """`run_worker`, plus the CPU share other processes took meanwhile (`other_processes_cpu_share`), with a
    warning on stderr when it is above `BUSY_SHARE`."""
    from lmlab.core.console import log

    before = cpu_seconds()
    result = run_worker(entry, system, settings, threads=threads, env=env, retry_hint=retry_hint)
    other = other_cpu_share(before, cpu_seconds(), threads)
    result["other_processes_cpu_share"] = other
    if other is not None and other > BUSY_SHARE:
        log(f"[yellow]warning: other processes used {other:.0%} of the CPU during the {system} run; they slow "
            "the systems unevenly, so rerun on a quiet machine before trusting the ratios[/yellow]")
    return result


def worker_main() -> None:
    """Entry point of a worker process: argv = ["module:function", system, settings JSON, result path]."""
    entry, system, settings, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    module, _, name = entry.partition(":")
    function: Callable[[str, dict[str, Any]], dict[str, Any]] = getattr(importlib.import_module(module), name)
    try:
        result = function(system, settings)
    except LmlabError as exc:
        out.write_text(json.dumps({"error": exc.message, "hint": exc.hint}))
        sys.exit(2)
    out.write_text(json.dumps(result))


def tensors_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """A fingerprint of named tensors (weights, batches), so a report can say two systems started from the same
    model and saw the same data."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
