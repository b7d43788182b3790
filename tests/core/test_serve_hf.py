"""`lmlab serve` on a Hugging Face causal LM (core.serving.hf_model behind core.serving.server) over real HTTP: a tiny
Llama with grouped-query attention and a non-default RoPE base, saved with save_pretrained and loaded the way the
command loads it, answers as transformers' own `generate` and log-softmax do, batched or not, KV-cached or not; the
CLI serves a folder and a run folder to the openai client; lm-evaluation-harness's local-completions scores with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lmlab.core.serving import server as api
from lmlab.core.serving.command import load_served_model
from lmlab.core.serving.engine import Engine
from lmlab.core.serving.hf_model import HFCausalLM, HFGenerator
from lmlab.core.training.text_corpus import train_tokenizer
from tests.conftest import CORPUS_DOCS

KEY = "sekrit"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 256
NAME = "tiny-llama-hf"
TEXTS = ["To be", "The slings and arrows of outrageous fortune,", "And by opposing end them. To die: to sleep;\nNo",
         "Whether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune, or to take arms"]


@dataclass
class HFFolder:
    path: Path
    model: Any  # the LlamaForCausalLM in memory: the reference every answer is checked against
    tokenizer: Any


@dataclass
class Served:
    url: str
    engine: Engine
    hf: HFFolder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> HFFolder:
    """A 2-layer Llama (4 query heads sharing 2 key/value heads, an untied head, RoPE base 100) with random weights,
    wide enough (initializer_range 0.2) that greedy choices are clear, and a byte-level BPE, as save_pretrained
    writes them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("hf-llama")
    tokenizer = train_tokenizer(CORPUS_DOCS, 300, path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         rope_theta=100.0, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return HFFolder(path, model, tokenizer)


def start(model: Any, tokenizer: Any) -> api.InThread:
    """The server `lmlab serve` runs, in a thread; a 50 ms batch window so that concurrent requests share steps."""
    engine = Engine(model, tokenizer, batch_window_ms=50).start()
    limits = api.Limits(max_tokens=32, max_n=2, max_body_bytes=64_000, context=model.config.block_size)
    return api.InThread(api.Server(engine, tokenizer, model_name=NAME, limits=limits, api_key=KEY))


@pytest.fixture(scope="module")
def served(hf_folder: HFFolder) -> Iterator[Served]:
    loaded = load_served_model(str(hf_folder.path))
    running = start(loaded.model, loaded.tokenizer)
    yield Served(running.url, running.server.engine, hf_folder)
    running.stop()


def post(url: str, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=60)


def complete(url: str, **body: Any) -> dict[str, Any]:
    response = post(url, "/v1/completions", model=NAME, **body)
    assert response.status_code == 200, response.text
    return response.json()


def ids_of(hf: HFFolder, text: str) -> list[int]:
    return hf.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def greedy(hf: HFFolder, prompt: str | list[int], max_new_tokens: int) -> tuple[str, list[int]]:
    """transformers' own greedy continuation of `prompt` (text or token ids): its text (EOS left out, as the server
    leaves it out) and its tokens (EOS included, as usage counts it)."""
    ids = torch.tensor([ids_of(hf, prompt) if isinstance(prompt, str) else prompt])
    out = hf.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, ids.size(1):].tolist()
    return hf.tokenizer.decode(new, skip_special_tokens=True), new


@torch.inference_mode()
def log_softmax(hf: HFFolder, ids: list[int]) -> torch.Tensor:
    """[T, V]: row i is the HF model's log-distribution of the token after ids[:i + 1]."""
    return hf.model(torch.tensor([ids])).logits[0].float().log_softmax(dim=-1)


def batch_sizes(url: str) -> dict[str, int]:
    """Steps run so far, by the number of sequences in them."""
    return httpx.get(f"{url}/metrics", params={"format": "json"}).json()["batch_sizes"]


def generated_scores(hf: HFFolder, prompt: str | list[int], tokens: list[int]) -> list[float]:
    """The HF model's log-probability of each generated token (an EOS, which the server does not return, left out):
    the server's must match them, which tells tokens apart that decode to the same text (lone bytes, as '\ufffd')."""
    prompt = ids_of(hf, prompt) if isinstance(prompt, str) else prompt
    tokens = tokens[:-1] if tokens[-1] == hf.tokenizer.eos_token_id else tokens
    rows = log_softmax(hf, prompt + tokens)
    return [float(rows[len(prompt) - 1 + j, t]) for j, t in enumerate(tokens)]


def same_scores(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(g - w) < 1e-4 for g, w in zip(got, want, strict=True))


def ask_together(url: str, asks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each body sent on its own thread, all released at once."""
    barrier = threading.Barrier(len(asks))

    def one(body: dict[str, Any]) -> dict[str, Any]:
        barrier.wait()
        return complete(url, **body)

    with ThreadPoolExecutor(len(asks)) as pool:
        return list(pool.map(one, asks))


def check_concurrent_greedy(url: str, hf: HFFolder) -> None:
    """Prompts of 2 to 63 tokens asking for 5 to 20 tokens, at once: they share steps (left-padded, merged, rows
    leaving as they finish), and each answer is still `generate`'s."""
    lengths = [5, 20, 9, 14]
    before = batch_sizes(url)
    answers = ask_together(url, [{"prompt": text, "max_tokens": n, "temperature": 0, "logprobs": 0}
                                 for text, n in zip(TEXTS, lengths, strict=True)])
    assert any(int(size) >= 2 and steps > before.get(size, 0) for size, steps in batch_sizes(url).items())
    assert len({len(ids_of(hf, text)) for text in TEXTS}) == len(TEXTS)
    for text, n, answer in zip(TEXTS, lengths, answers, strict=True):
        want, tokens = greedy(hf, text, n)
        choice = answer["choices"][0]
        assert choice["text"] == want and answer["usage"]["completion_tokens"] == len(tokens)
        assert same_scores(choice["logprobs"]["token_logprobs"], generated_scores(hf, text, tokens))
        assert choice["finish_reason"] == ("length" if len(tokens) == n else "stop")
    assert any(len(a["choices"][0]["text"]) > 8 for a in answers)


def test_the_folder_is_served_kv_cached(served: Served) -> None:
    assert type(served.engine.model) is HFGenerator
    config = served.engine.model.config
    assert (config.arch, config.block_size, config.vocab_size) == ("llama", CONTEXT, len(served.hf.tokenizer))
    hf_config = served.engine.model.hf.config
    assert (hf_config.num_key_value_heads, hf_config.rope_parameters["rope_theta"]) == (2, 100.0)
    models = httpx.get(f"{served.url}/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == NAME and models["data"][0]["max_model_len"] == CONTEXT


def test_concurrent_greedy_completions_are_generates_tokens(served: Served) -> None:
    check_concurrent_greedy(served.url, served.hf)


def test_token_id_prompts_are_scored_by_the_models_log_softmax_and_continued_as_sent(served: Served) -> None:
    """What lm-eval asks for: token-id prompts (not what their text re-tokenises to), echo, max_tokens 0; then the
    same ids continued greedily as `generate` continues them."""
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, len(served.hf.tokenizer), (n,), generator=generator).tolist() for n in (17, 30)]
    tok = served.hf.tokenizer
    assert all(ids_of(served.hf, tok.decode(ids)) != ids for ids in prompts)
    body = complete(served.url, prompt=prompts, echo=True, max_tokens=0, logprobs=2, temperature=0)
    assert body["usage"] == {"prompt_tokens": 47, "completion_tokens": 0, "total_tokens": 47}
    for ids, choice in zip(prompts, body["choices"], strict=True):
        rows = log_softmax(served.hf, ids)
        got = choice["logprobs"]
        assert choice["text"] == tok.decode(ids) and got["tokens"] == [tok.decode([t]) for t in ids]
        assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
        want = [float(rows[i - 1, ids[i]]) for i in range(1, len(ids))]
        assert max(abs(g - w) for g, w in zip(got["token_logprobs"][1:], want, strict=True)) < 1e-4
        for i, top in enumerate(got["top_logprobs"][1:]):  # keyed by text, as OpenAI's (byte tokens may share one)
            best = rows[i].topk(2)
            want_top = {tok.decode([t]): v for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)}
            assert top == pytest.approx(want_top, abs=1e-4)
    generated = complete(served.url, prompt=prompts, max_tokens=8, logprobs=0, temperature=0)["choices"]
    for ids, choice in zip(prompts, generated, strict=True):  # continued from these ids, not their text's
        want, tokens = greedy(served.hf, ids, 8)
        assert choice["text"] == want
        assert same_scores(choice["logprobs"]["token_logprobs"], generated_scores(served.hf, ids, tokens))


def test_token_id_prompts_answer_as_the_same_text(served: Served) -> None:
    settings = {"max_tokens": 10, "temperature": 0, "echo": True, "logprobs": 1}
    for text in TEXTS[1:3]:
        by_text = complete(served.url, prompt=text, **settings)
        by_ids = complete(served.url, prompt=ids_of(served.hf, text), **settings)
        assert by_ids["choices"] == by_text["choices"] and by_ids["usage"] == by_text["usage"]
        assert by_ids["choices"][0]["text"] == text + greedy(served.hf, text, 10)[0]
        assert by_ids["usage"]["prompt_tokens"] == len(ids_of(served.hf, text))


def test_tokenize_then_detokenize_gives_the_text_back(served: Served) -> None:
    text = "Naïve café, 日本語, emoji 🙂 and tabs\tkeep their bytes."
    tokens = post(served.url, "/tokenize", model=NAME, prompt=text).json()
    assert tokens == {"tokens": served.hf.tokenizer(text)["input_ids"], "count": len(tokens["tokens"]),
                      "max_model_len": CONTEXT}
    assert tokens["count"] > 1
    assert post(served.url, "/detokenize", model=NAME, tokens=tokens["tokens"]).json() == {"prompt": text}


def test_a_model_whose_cache_cannot_be_used_is_recomputed_with_a_notice(hf_folder: HFFolder,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HFGenerator, "probe", lambda self: "DynamicCache: no layers")
    notes: list[str] = []
    loaded = load_served_model(str(hf_folder.path), notify=notes.append)
    assert type(loaded.model) is HFCausalLM and not hasattr(loaded.model, "prefill")
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("note: llama: no KV-cached batching") and "(DynamicCache: no layers)" in notes[0]
    running = start(loaded.model, loaded.tokenizer)
    try:
        check_concurrent_greedy(running.url, hf_folder)
    finally:
        running.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("lmlab serve did not become healthy")


def test_the_cli_serves_a_run_folder_to_the_openai_client(hf_folder: HFFolder, tmp_path: Path) -> None:
    """A train-orpo run's layout: the run's options in config.json (no weights beside them), the model in model/."""
    openai = pytest.importorskip("openai")
    run = tmp_path / "orpo-run"
    shutil.copytree(hf_folder.path, run / "model")
    (run / "config.json").write_text(json.dumps({"command": "lmlab train-orpo", "beta": 0.1, "lr": 8e-6}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", str(run), "--port", str(port),
                                "--api-key", KEY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "400"})
    try:
        wait_healthy(url, process)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["orpo-run"]
        answer = client.completions.create(model="orpo-run", prompt=TEXTS[1], max_tokens=12, temperature=0,
                                           logprobs=0)
        want, tokens = greedy(hf_folder, TEXTS[1], 12)
        assert answer.choices[0].text == want and answer.usage.completion_tokens == len(tokens)
        assert same_scores(answer.choices[0].logprobs.token_logprobs, generated_scores(hf_folder, TEXTS[1], tokens))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).completions.create(
                model="orpo-run", prompt="To be", max_tokens=2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    said = " ".join(stderr.split())
    assert "lmlab serve: orpo-run (llama," in said and "context 256, KV-cached" in said and "stopped" in said


MC_DOCS = [{"question": "To be, or not to be, that is the", "choices": ["question", "answer", "sea"]},
           {"question": "The slings and arrows of outrageous", "choices": ["fortune", "troubles"]},
           {"question": "And by opposing end them. To die: to", "choices": ["sleep", "dream", "end them"]}]
MC_TASK = """task: lmlab_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def continuation_score(hf: HFFolder, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The HF model's summed log-probability of `continuation` after `context`, and whether it is greedy."""
    rows = log_softmax(hf, context + continuation)[len(context) - 1:-1]
    target = torch.tensor(continuation)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(dim=-1) == target).all())


def test_lm_eval_local_completions_scores_as_the_hf_model(served: Served, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-evaluation-harness's local-completions with its defaults (token-id prompts, echo, max_tokens 1, logprobs
    1, the continuation's scores summed) on a local multiple-choice task: every choice's log-likelihood is the HF
    model's, and the accuracy is the one those give (the gold answers picked so that it is 2/3)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install "
                                  "'lmlab[lm-eval]'")
    pytest.importorskip("tenacity", reason="local-completions needs lm-eval's api extra: pip install 'lm-eval[api]'")
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what local-completions sends as its bearer token
    lm = get_model("local-completions")(base_url=f"{served.url}/v1/completions", model=NAME,
                                        tokenizer=str(served.hf.path))
    assert lm.tokenized_requests
    pairs = [[lm._encode_pair(doc["question"], " " + choice) for choice in doc["choices"]] for doc in MC_DOCS]
    want = [[continuation_score(served.hf, *pair) for pair in doc] for doc in pairs]
    best = [max(range(len(scores)), key=lambda i: scores[i][0]) for scores in want]
    answers = [best[0], (best[1] + 1) % 2, best[2]]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({**doc, "answer": a}) + "\n" for doc, a in zip(MC_DOCS, answers, strict=True)))
    (tmp_path / "tiny_mc.yaml").write_text(MC_TASK.format(data=data))
    before = httpx.get(f"{served.url}/metrics", params={"format": "json"}).json()["prompt_tokens"]
    results = lm_eval.simple_evaluate(model=lm, tasks=["lmlab_tiny_mc"], bootstrap_iters=0,
                                      task_manager=TaskManager(include_path=str(tmp_path)))
    sent = httpx.get(f"{served.url}/metrics", params={"format": "json"}).json()["prompt_tokens"] - before
    assert sent == sum(len(c) + len(x) for doc in pairs for c, x in doc)  # the token ids, as lm-eval made them
    samples = sorted(results["samples"]["lmlab_tiny_mc"], key=lambda s: s["doc_id"])
    for sample, scores in zip(samples, want, strict=True):
        got = sample["filtered_resps"]
        assert [g[1] for g in got] == [w[1] for w in scores]
        assert max(abs(g[0] - w[0]) for g, w in zip(got, scores, strict=True)) < 1e-4
    assert results["results"]["lmlab_tiny_mc"]["acc,none"] == pytest.approx(2 / 3)
