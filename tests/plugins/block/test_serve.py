"""`lmlab serve-block` through real HTTP on a loopback port, against a live server the tests start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from lmlab.core.kernel.plugins import load_plugins
from lmlab.core.models.architectures import build_model
from lmlab.core.training.text_corpus import train_tokenizer
from tests.conftest import CORPUS_DOCS, run_cli

KEY = "sekrit"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["To be, or not", "The slings", "And by opposing end them. To die: to sleep;", "No"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved block model with random weights and a BPE tokenizer, as `lmlab pretrain --arch block` leaves one."""
    folder = tmp_path_factory.mktemp("served") / "run" / "model"
    tokenizer = train_tokenizer(CORPUS_DOCS, 300, folder)
    load_plugins()
    torch.manual_seed(0)
    model, _ = build_model("block", "mha", vocab_size=len(tokenizer), block_size=512, n_layer=2, n_head=2, n_embd=32)
    model.save(folder)
    return folder.parent


def start(run_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve-block", str(run_dir), "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not come up")


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    proc, url = start(run_dir, "--api-key", KEY, "--max-new-tokens", "40", "--max-body-kb", "16", "--max-n", "3")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def complete(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": "run", **body}, headers=AUTH, timeout=60)


def greedy(url: str, prompt: str, max_tokens: int = 12) -> str:
    response = complete(url, prompt=prompt, max_tokens=max_tokens, temperature=0)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_greedy_completions_equal_lmlab_generate(server: str, run_dir: Path) -> None:
    done = run_cli("generate", str(run_dir), "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--temperature", "0",
                   "--json")
    assert done.returncode == 0, done.stderr
    assert greedy(server, PROMPTS[0]) == json.loads(done.stdout)["completion"]
    body = complete(server, prompt=PROMPTS[0], max_tokens=12, temperature=0).json()
    assert body["object"] == "text_completion" and body["model"] == "run"
    assert body["usage"]["completion_tokens"] <= 12 and body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]


def test_concurrent_requests_of_different_lengths_each_get_their_own_answer(server: str) -> None:
    alone = {(p, n): greedy(server, p, n) for p, n in zip(PROMPTS, (20, 7, 13, 30), strict=True)}
    answers: dict[tuple[str, int], str] = {}

    def ask(key: tuple[str, int]) -> None:
        answers[key] = greedy(server, *key)

    threads = [threading.Thread(target=ask, args=(key,)) for key in alone for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == alone
    batched = complete(server, prompt=PROMPTS, max_tokens=9, temperature=0).json()["choices"]
    assert [c["text"] for c in batched] == [greedy(server, p, 9) for p in PROMPTS]
    assert max(int(size) for size in httpx.get(f"{server}/metrics?format=json").json()["batch_sizes"]) > 1


def test_streaming_yields_the_same_text(server: str) -> None:
    with httpx.stream("POST", f"{server}/v1/completions", headers=AUTH, timeout=60,
                      json={"prompt": PROMPTS[2], "max_tokens": 25, "temperature": 0, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy(server, PROMPTS[2], 25)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_sampling_with_a_seed_is_reproducible_and_n_gives_n_choices(server: str) -> None:
    body = {"prompt": PROMPTS[1], "max_tokens": 15, "temperature": 1.0, "top_p": 0.9, "seed": 7, "n": 3}
    first, again = complete(server, **body).json(), complete(server, **body).json()
    texts = [c["text"] for c in first["choices"]]
    assert len(texts) == 3 and texts == [c["text"] for c in again["choices"]] and len(set(texts)) > 1


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"headers": {}}, 401, "API key"),
    ({"headers": {"Authorization": "Bearer wrong"}}, 401, "API key"),
    ({"content": b"{not json"}, 400, "not valid JSON"),
    ({"json": {"prompt": 3}}, 422, "prompt"),
    ({"json": {"prompt": "x", "max_tokens": "many"}}, 422, "max_tokens"),
    ({"json": {"prompt": "x", "max_tokens": 41}}, 400, "limit of 40"),
    ({"json": {"prompt": "x", "n": 4}}, 400, "limit of 3"),
    ({"json": {"prompt": "word " * 700, "max_tokens": 10}}, 400, "context"),
    ({"json": {"prompt": "x" * 20_000}}, 413, "body"),
    ({"json": {"prompt": "x", "logprobs": 9}}, 400, "logprobs must be 0 to 5"),
    ({"json": {"prompt": "x", "logprobs": 1, "stream": True}}, 400, "without stream"),
    ({"json": {"messages": [{"role": "user", "content": "hi"}]}, "path": "/v1/chat/completions"}, 400,
     "chat template"),
])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_answering(server: str, kwargs: dict, status: int,
                                                                       words: str) -> None:
    headers = kwargs.pop("headers", AUTH)
    path = kwargs.pop("path", "/v1/completions")
    response = httpx.post(f"{server}{path}", headers=headers, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"]
    assert greedy(server, "No", 3)


def test_echo_and_logprobs_are_the_models_own_log_probabilities(server: str, run_dir: Path) -> None:
    from transformers import AutoTokenizer

    from lmlab.core.serving.generation import load_generator

    text = PROMPTS[2]
    body = complete(server, prompt=text, max_tokens=0, echo=True, logprobs=2, temperature=0).json()
    choice = body["choices"][0]
    assert choice["text"] == text
    model, _ = load_generator(run_dir)
    ids = AutoTokenizer.from_pretrained(str(run_dir / "model"))(text, add_special_tokens=False)["input_ids"]
    pad = (-len(ids)) % model.block_len  # scored as a prompt is generated from: left-padded to a block boundary
    x = torch.tensor([[0] * pad + ids])
    with torch.no_grad():  # the training loss, per token: -log p(token | what precedes it)
        nll = model(x, torch.roll(x, -1, 1).masked_fill(torch.arange(x.size(1)) == x.size(1) - 1, -1),
                    reduction="none")[1][0]
    expected = [None] + [None if pad + i - 1 < model.block_len - 1 else -float(nll[pad + i - 1])
                         for i in range(1, len(ids))]
    got = choice["logprobs"]["token_logprobs"]
    assert [g is None for g in got] == [e is None for e in expected]
    assert all(abs(g - e) < 1e-4 for g, e in zip(got, expected, strict=True) if g is not None)
    assert "".join(choice["logprobs"]["tokens"]) == text and choice["logprobs"]["text_offset"][0] == 0
    assert all(1 <= len(top) <= 2 for top in choice["logprobs"]["top_logprobs"] if top is not None)  # keyed by text
    generated = complete(server, prompt=text, max_tokens=5, logprobs=0, temperature=0).json()["choices"][0]
    assert len(generated["logprobs"]["token_logprobs"]) == 5 and generated["logprobs"]["text_offset"][0] == 0


def test_lmlab_eval_runs_against_the_server(server: str, tmp_path: Path) -> None:
    done = run_cli("eval", "holism", "--backend", "openai", "--base-url", f"{server}/v1", "--model", "run",
                   "--api-key", KEY, "--limit", "4", "--max-new-tokens", "32", "-o", str(tmp_path / "eval"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["backend"] == "openai" and summary["new_answers"] >= 4 and summary["by"]


def test_models_health_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/v1/models", headers=AUTH).json()["data"][0]["id"] == "run"
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    metrics = httpx.get(f"{server}/metrics?format=json").json()
    assert metrics["requests"] >= 1 and metrics["generated_tokens"] >= 1 and metrics["queue_length"] == 0


def test_a_client_dropping_mid_stream_does_not_stall_the_others(server: str) -> None:
    with httpx.stream("POST", f"{server}/v1/completions", headers=AUTH, timeout=60,
                      json={"prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0, "stream": True}) as response:
        next(response.iter_lines())  # read one chunk, then hang up
    assert greedy(server, PROMPTS[3], 5)
    deadline = time.time() + 10
    while httpx.get(f"{server}/metrics?format=json").json()["in_flight"] and time.time() < deadline:
        time.sleep(0.05)
    metrics = httpx.get(f"{server}/metrics?format=json").json()
    assert metrics["in_flight"] == 0 and metrics["cancelled"] >= 1  # its slot was freed, not decoded to the end


def test_a_full_queue_is_429_and_sigterm_finishes_requests_in_flight_and_exits_0(run_dir: Path) -> None:
    proc, url = start(run_dir, "--batch-window-ms", "1000", "--max-queue", "4")  # four wait together, then run
    answers: list[int] = []

    def ask() -> None:
        response = httpx.post(f"{url}/v1/completions", timeout=60,
                              json={"prompt": PROMPTS[2], "max_tokens": 40, "temperature": 0})
        answers.append(response.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 30
    while httpx.get(f"{url}/metrics?format=json").json()["in_flight"] < 4 and time.time() < deadline:
        time.sleep(0.01)
    full = httpx.post(f"{url}/v1/completions", json={"prompt": "No", "max_tokens": 2}, timeout=60)
    assert full.status_code == 429 and "queue is full" in full.json()["error"]["message"]
    os.kill(proc.pid, signal.SIGTERM)  # all four are in flight (queued or running)
    for thread in threads:
        thread.join()
    assert proc.wait(timeout=60) == 0
    assert answers == [200] * 4
    assert "stopped" in proc.stderr.read()
