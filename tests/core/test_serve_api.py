"""The OpenAI-compatible server's wider API (core.serving.server) over real HTTP against a live in-process server on a
tiny block model: token-id prompts, /tokenize and /detokenize, stream usage, Prometheus /metrics, /v1/models and
the OpenAPI schema."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch

from lmlab.core.kernel.plugins import load_plugins
from lmlab.core.models.architectures import build_model
from lmlab.core.serving import server as api
from lmlab.core.serving.engine import Engine
from lmlab.core.serving.generation import sequence_logprobs
from lmlab.core.training.text_corpus import train_tokenizer
from tests.conftest import CORPUS_DOCS

KEY = "sekrit"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 512
TEXTS = ["To be, or not to be, that is the question:", "The slings and arrows of outrageous fortune,",
         "And by opposing end them. To die: to sleep;"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@dataclass
class Served:
    url: str
    model: Any
    tokenizer: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A block model with random weights and a BPE tokenizer (with a chat template), as test_serve.py builds one,
    served on a loopback port."""
    tokenizer = train_tokenizer(CORPUS_DOCS, 300, tmp_path_factory.mktemp("served"))
    tokenizer.chat_template = CHAT_TEMPLATE
    load_plugins()
    torch.manual_seed(0)
    model, _ = build_model("block", "mha", vocab_size=len(tokenizer), block_size=CONTEXT, n_layer=2, n_head=2,
                           n_embd=32)
    model.eval()
    engine = Engine(model, tokenizer).start()
    limits = api.Limits(max_tokens=40, max_n=3, max_body_bytes=64_000, context=CONTEXT)
    running = api.InThread(api.Server(engine, tokenizer, model_name="tiny", limits=limits, api_key=KEY))
    yield Served(running.url, model, tokenizer)
    running.stop()


def post(served: Served, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", json=body, headers=AUTH, timeout=60)


def complete(served: Served, **body: Any) -> dict[str, Any]:
    response = post(served, "/v1/completions", model="tiny", **body)
    assert response.status_code == 200, response.text
    return response.json()


def ids_of(served: Served, text: str) -> list[int]:
    return served.tokenizer(text, add_special_tokens=False)["input_ids"]


def sse(served: Served, path: str, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a streamed answer (asserting it ends with [DONE])."""
    with httpx.stream("POST", f"{served.url}{path}", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_token_id_prompts_answer_as_the_same_text(served: Served) -> None:
    ids = ids_of(served, TEXTS[0])
    settings = {"max_tokens": 8, "temperature": 0, "echo": True, "logprobs": 2}
    by_text, by_ids = complete(served, prompt=TEXTS[0], **settings), complete(served, prompt=ids, **settings)
    assert by_ids["choices"] == by_text["choices"] and by_ids["usage"] == by_text["usage"]
    assert by_ids["choices"][0]["text"].startswith(TEXTS[0]) and by_ids["usage"]["prompt_tokens"] == len(ids)
    assert any(lp is not None for lp in by_ids["choices"][0]["logprobs"]["token_logprobs"])


def test_a_list_of_token_id_lists_gives_one_choice_per_prompt(served: Served) -> None:
    prompts = [ids_of(served, text) for text in TEXTS]
    body = complete(served, prompt=prompts, max_tokens=6, temperature=0)
    alone = [complete(served, prompt=text, max_tokens=6, temperature=0)["choices"][0]["text"] for text in TEXTS]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["text"] for c in body["choices"]] == alone
    assert body["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)


def expected_logprobs(model: Any, ids: list[int]) -> list[float | None]:
    rows = sequence_logprobs(model, ids)
    return [None] + [None if rows[i - 1].isnan().any() else float(rows[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_with_max_tokens_0_scores_exactly_the_token_ids_sent(served: Served) -> None:
    """lm-evaluation-harness's local-completions request: token-id prompts, echo, max_tokens 0 (or 1), logprobs."""
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 300, (n,), generator=generator).tolist() for n in (19, 26)]
    tok = served.tokenizer
    assert all(ids_of(served, tok.decode(ids)) != ids for ids in prompts)  # not what the text re-tokenises to
    body = complete(served, prompt=prompts, echo=True, max_tokens=0, logprobs=1, temperature=0, seed=1234)
    assert body["usage"] == {"prompt_tokens": 45, "completion_tokens": 0, "total_tokens": 45}
    for ids, choice in zip(prompts, body["choices"], strict=True):
        got, want = choice["logprobs"]["token_logprobs"], expected_logprobs(served.model, ids)
        assert choice["text"] == tok.decode(ids) and choice["logprobs"]["tokens"] == [tok.decode([t]) for t in ids]
        assert [g is None for g in got] == [w is None for w in want] and any(w is not None for w in want)
        assert all(abs(g - w) < 1e-5 for g, w in zip(got, want, strict=True) if w is not None)
        tops = choice["logprobs"]["top_logprobs"]
        assert all(len(top) == 1 and max(top.values()) >= g for g, top in zip(got, tops, strict=True) if top)
    one = complete(served, prompt=prompts, echo=True, max_tokens=1, logprobs=1, temperature=0)
    for ids, choice in zip(prompts, one["choices"], strict=True):
        token_logprobs = choice["logprobs"]["token_logprobs"]
        assert len(token_logprobs) == len(ids) + 1  # the prompt, then the one token generated
        assert choice["text"].startswith(tok.decode(ids)) and choice["logprobs"]["tokens"][:-1] == [
            tok.decode([t]) for t in ids]
        ctxlen = 10  # what lm-eval sums: the continuation's tokens, the generated one left off
        assert math.isfinite(sum(token_logprobs[ctxlen:-1]))


def test_a_prompts_echo_scores_do_not_depend_on_max_tokens(served: Served) -> None:
    """The block model aligns its blocks by the prompt alone, so lm-eval (max_tokens 1) and a client asking with 0
    get the same scores for the same question, whatever is generated after it."""
    prompt = torch.randint(1, 300, (13,), generator=torch.Generator().manual_seed(5)).tolist()  # between blocks
    scores = [complete(served, prompt=prompt, echo=True, max_tokens=n, logprobs=0,
                       temperature=0)["choices"][0]["logprobs"]["token_logprobs"][:len(prompt)] for n in range(9)]
    want = expected_logprobs(served.model, prompt)
    assert any(w is not None for w in want)
    for got in scores:
        assert [g is None for g in got] == [w is None for w in want]
        assert all(abs(g - w) < 1e-5 for g, w in zip(got, want, strict=True) if w is not None)


def test_tokenize_then_detokenize_gives_the_text_back(served: Served) -> None:
    text = "Naïve café, 日本語, emoji 🙂 and tabs\tkeep their bytes."
    tokens = post(served, "/tokenize", model="tiny", prompt=text).json()
    assert tokens == {"tokens": served.tokenizer(text)["input_ids"], "count": len(tokens["tokens"]),
                      "max_model_len": CONTEXT}
    assert post(served, "/detokenize", model="tiny", tokens=tokens["tokens"]).json() == {"prompt": text}
    messages = [{"role": "user", "content": "To be?"}]
    chat = post(served, "/tokenize", messages=messages).json()
    assert served.tokenizer.decode(chat["tokens"]) == "user: To be?\nassistant:"
    assert chat["count"] == len(chat["tokens"]) and chat["max_model_len"] == CONTEXT
    for path, body in (("/tokenize", {"prompt": text}), ("/detokenize", {"tokens": [1]})):
        assert httpx.post(f"{served.url}{path}", json=body).status_code == 401


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v1/completions", {"prompt": [5, 300]}, 400, "prompt holds token id 300"),
    ("/v1/completions", {"prompt": [[5, 6], [7, -1]]}, 400, "prompt[1] holds token id -1"),
    ("/v1/completions", {"prompt": [[5, 6], []]}, 400, "prompt[1] is an empty list"),
    ("/v1/completions", {"prompt": [1.5, 2]}, 422, "Field 'prompt'"),
    ("/v1/completions", {"prompt": [[1], "x"]}, 422, "list of lists of token ids"),
    ("/detokenize", {"tokens": [3, 300]}, 400, "tokens holds token id 300"),
    ("/tokenize", {"prompt": 3}, 422, "Field 'prompt'"),
])
def test_a_bad_token_id_is_an_error_naming_its_field(served: Served, path: str, body: dict, status: int,
                                                     words: str) -> None:
    response = post(served, path, **body)
    assert response.status_code == status, response.text
    error = api.ErrorResponse.model_validate(response.json()).error
    assert words in error.message and error.param == ("tokens" if path == "/detokenize" else "prompt")
    assert complete(served, prompt=[5, 6], max_tokens=2)["choices"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_with_include_usage_ends_with_the_usage_of_the_same_request_unstreamed(served: Served,
                                                                                       path: str) -> None:
    ask = {"prompt": TEXTS[1]} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    settings = {**ask, "max_tokens": 12, "temperature": 0, "n": 2}
    plain = post(served, path, **settings).json()
    chunks = sse(served, path, **settings, stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    text = [c["choices"][0].get("text", c["choices"][0].get("delta", {}).get("content")) for c in chunks[:-1]]
    indices = [c["choices"][0]["index"] for c in chunks[:-1]]
    for i, choice in enumerate(plain["choices"]):
        whole = choice.get("text", choice.get("message", {}).get("content"))
        assert "".join(t for t, j in zip(text, indices, strict=True) if j == i) == whole
    assert all("usage" not in c for c in sse(served, path, **settings))


def families(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    """The metrics of a Prometheus text exposition, each name → (type, {sample with labels: value}), every line
    checked strictly: HELP then TYPE once per metric, its samples after them, names and values well formed."""
    name = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    sample = re.compile(rf'({name})(\{{{name}="[^"\\\n]*"(,{name}="[^"\\\n]*")*\}})? (\S+)')
    out: dict[str, tuple[str, dict[str, float]]] = {}
    lines = text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])
    current, helped = None, None
    for line in lines[:-1]:
        if line.startswith("# HELP "):
            helped = line.split(" ")[2]
            assert re.fullmatch(name, helped) and helped not in out and len(line.split(" ", 3)) == 4
        elif line.startswith("# TYPE "):
            _, _, current, kind = line.split(" ")
            assert current == helped and kind in ("counter", "gauge", "histogram")
            assert not kind == "counter" or current.endswith("_total")
            out[current] = (kind, {})
        else:
            match = sample.fullmatch(line)
            assert match and current is not None, line
            kind = out[current][0]
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            assert match[1] in {current + suffix for suffix in suffixes}, line
            out[current][1][line.rsplit(" ", 1)[0]] = float(match[4])
    return out


def test_metrics_are_prometheus_text_and_count_a_request(served: Served) -> None:
    response = httpx.get(f"{served.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    before = families(response.text)
    assert all(n.startswith("lmlab_") for n in before)
    assert before["lmlab_queue_length"][0] == "gauge" and before["lmlab_running_sequences"][0] == "gauge"
    ids = ids_of(served, TEXTS[2])
    complete(served, prompt=ids, max_tokens=5, temperature=0)
    after = families(httpx.get(f"{served.url}/metrics").text)

    def grew(metric: str, sample: str | None = None) -> float:
        return after[metric][1].get(sample or metric, 0) - before[metric][1].get(sample or metric, 0)

    assert grew("lmlab_requests_total") == 1 and grew("lmlab_prompt_tokens_total") == len(ids)
    assert grew("lmlab_completed_total") == 1 and grew("lmlab_generated_tokens_total") >= 1
    assert grew("lmlab_http_responses_total", 'lmlab_http_responses_total{code="200"}') >= 2
    histogram = after["lmlab_batch_size"][1]
    assert histogram['lmlab_batch_size_bucket{le="+Inf"}'] == histogram["lmlab_batch_size_count"] >= 5
    as_json = httpx.get(f"{served.url}/metrics", params={"format": "json"}).json()
    assert as_json["requests"] == after["lmlab_requests_total"][1]["lmlab_requests_total"]
    assert as_json["queue_length"] == 0 and as_json["running"] == 0


def test_metrics_parse_with_prometheus_clients_own_parser(served: Served) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is not installed: "
                                 "test_metrics_are_prometheus_text_and_count_a_request checks the lines strictly")
    complete(served, prompt="To be", max_tokens=2)
    text = httpx.get(f"{served.url}/metrics").text
    parsed = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert len(parsed) == len(families(text)) and parsed["lmlab_batch_size"].type == "histogram"
    requests = parsed["lmlab_requests"]
    assert requests.type == "counter" and requests.samples[0].name == "lmlab_requests_total"
    assert requests.samples[0].value >= 1


def test_models_lists_the_context(served: Served) -> None:
    models = httpx.get(f"{served.url}/v1/models", headers=AUTH).json()
    assert api.ModelList.model_validate(models).data[0].max_model_len == CONTEXT
    assert models["data"][0]["id"] == "tiny"


def test_openapi_describes_the_request_and_response_bodies(served: Served) -> None:
    schema = httpx.get(f"{served.url}/openapi.json").json()
    components = schema["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> list[str]:
        refs = [node["$ref"]] if "$ref" in node else [n["$ref"] for n in node["anyOf"]]
        names = [ref.removeprefix("#/components/schemas/") for ref in refs]
        assert all(components[n]["properties"] for n in names)
        return names

    documented = {"/v1/completions": (["CompletionRequest"], "CompletionResponse"),
                  "/v1/chat/completions": (["ChatRequest"], "ChatCompletionResponse"),
                  "/tokenize": (["TokenizeCompletionRequest", "TokenizeChatRequest"], "TokenizeResponse"),
                  "/detokenize": (["DetokenizeRequest"], "DetokenizeResponse")}
    for path, (bodies, answer) in documented.items():
        operation = schema["paths"][path]["post"]
        assert resolve(operation["requestBody"]["content"]["application/json"]["schema"]) == bodies
        assert resolve(operation["responses"]["200"]["content"]["application/json"]["schema"]) == [answer]
        assert resolve(operation["responses"]["422"]["content"]["application/json"]["schema"]) == ["ErrorResponse"]
    shapes = components["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert [s["type"] for s in shapes] == ["string", "array", "array", "array"]
    assert {"CompletionChunk", "ChatCompletionChunk", "ModelList", "ErrorBody", "StreamOptions"} <= set(components)
    # what the server sends matches what it documents
    api.CompletionResponse.model_validate(complete(served, prompt=TEXTS[0], max_tokens=3, echo=True, logprobs=1))
    chat = post(served, "/v1/chat/completions", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    api.ChatCompletionResponse.model_validate(chat.json())
    api.TokenizeResponse.model_validate(post(served, "/tokenize", prompt="To be").json())
    for chunk in sse(served, "/v1/completions", prompt="To be", max_tokens=3, stream_options={"include_usage": True}):
        api.CompletionChunk.model_validate(chunk)
