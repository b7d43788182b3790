"""Shared fixtures: everything offline, tiny models, small fixture files written per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's figures (agreement with TRL, lm-eval, resume equality) are CPU figures: on a GPU machine every test
# and every `lmlab` it starts stays on the CPU, unless a test names a device itself (LMLAB_TEST_GPU=1 lifts it).
if os.environ.get("LMLAB_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["LMLAB_DEVICE"] = "cpu"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `lmlab ARGS` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "lmlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `lmlab ARGS` in-process, assert it was refused with exit 2 and no traceback, and return its stderr with
    Rich's line wrapping undone."""
    from lmlab.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler], fake: object) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with `handler` (which reads `self.server.fake`); yields
    its OpenAI-style base URL, http://127.0.0.1:PORT/v1."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.fake = fake
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


#: A small text corpus (Shakespeare plus non-ASCII bytes) for tokenizer and corpus tests.
CORPUS_DOCS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n",
    "And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n",
    "Naïve café, 日本語, emoji 🙂 and tabs\tkeep their bytes.\n",
] * 5

PREFERENCES = [
    {"prompt": "What is the capital of France?", "chosen": "Paris is the capital of France.",
     "rejected": "The capital of France is Berlin."},
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 7."},
    {"prompt": "Say something kind.", "chosen": "You are doing great, keep going!", "rejected": "No."},
    {"prompt": "Name a primary colour.", "chosen": "Red is a primary colour.", "rejected": "Purple, obviously."},
    {"prompt": "How many legs does a spider have?", "chosen": "A spider has eight legs.",
     "rejected": "Spiders have six legs."},
    {"prompt": "Translate 'thank you' into French.", "chosen": "Merci.", "rejected": "Gracias."},
]


@pytest.fixture
def preferences(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small repetitive text corpus for pre-training runs."""
    path = tmp_path / "corpus.txt"
    lines = [f"The {w} of the {v} is {n} and the night is long." for w in ("king", "queen", "fool", "knight")
             for v in ("castle", "forest", "river", "field", "town") for n in ("bright", "dark", "quiet")]
    path.write_text("\n".join(lines * 8))
    return path


def kill_after_checkpoint(args: tuple[str, ...], run_dir: Path, step: int, cwd: Path | None = None) -> None:
    """Start `lmlab ARGS -o run_dir` (in `cwd`, against which a relative run_dir is then taken), SIGKILL it as
    soon as checkpoint `step` is complete, and check that the kill came before the run finished (otherwise a
    resume test would prove nothing)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *args, "-o", str(run_dir)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = (cwd or Path()) / run_dir
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / f"step-{step:06d}" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the kill came after the run finished"


def straight_and_resumed(args: tuple[str, ...], tmp_path: Path, kill_at: int, weights: str
                         ) -> tuple[dict, dict, Path, subprocess.CompletedProcess]:
    """Run `lmlab ARGS` to the end in tmp_path/a; run it again in tmp_path/b, SIGKILL it once checkpoint `kill_at`
    is written, and `--resume` it. Returns both runs' final weights (the safetensors file `weights` inside each
    run directory), the resumed run's directory and its process."""
    from safetensors.torch import load_file

    straight = run_cli(*args, "-o", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "b"
    kill_after_checkpoint(args, killed, kill_at)
    resumed = run_cli(args[0], "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    return load_file(tmp_path / "a" / weights), load_file(killed / weights), killed, resumed


def fit_one_batch(model, idx, steps: int = 30) -> list[float]:
    """Train a GPT (`model(inputs, targets)` → (logits, loss)) on one batch of token ids with AdamW; the losses."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
