"""lmlab.core.evaluation.backend_openai against a real local HTTP server that fakes an OpenAI-compatible API.

The fake tokenises a prompt into `\\S+|\\s+` pieces and gives each piece the log-probability -0.1 * its length
(the first piece gets None, as real servers do), so every expected score can be worked out by hand.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from lmlab.core.evaluation import backend_openai
from lmlab.core.evaluation.backend_openai import OpenAIBackend
from lmlab.core.evaluation.backends import BackendOptions, ChoiceRequest, GenerateRequest
from lmlab.core.kernel.errors import LmlabError
from tests.conftest import loopback_server

TOKEN = re.compile(r"\S+|\s+")
GENERATED = " B because the sky is blue STOP more text"
CHAT_ANSWER = "Answer: C"


class FakeServer:
    """What the fake answers, and every request it saw."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict] = []  # {"path", "auth", "body"}
        self.failures: list[tuple[int, dict[str, str]]] = []  # the next requests answer these (status, headers)
        self.status: dict[str, int] = {}  # path -> status it always answers
        self.raw: dict[str, bytes] = {}  # path -> a 200 body sent as is
        self.no_logprobs = False  # ignore echo/logprobs, like a server that does not support them
        self.delay = 0.0
        self.shuffle = False  # answer shorter prompts later, so answers arrive out of order
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with fake.lock:
            fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            failure = fake.failures.pop(0) if fake.failures else None
            fake.in_flight += 1
            fake.peak = max(fake.peak, fake.in_flight)
        try:
            if fake.delay:
                fake.release.wait(fake.delay)
            if fake.shuffle:
                time.sleep(0.05 * (4 - len(body.get("prompt", "")) % 4))
        finally:
            # before answering: once the answer is out, the client may send its next request before this thread
            # runs again, and counting both would report more requests in flight than the client ever had
            with fake.lock:
                fake.in_flight -= 1
        try:
            self.answer(fake, body, failure)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def answer(self, fake: FakeServer, body: dict, failure: tuple[int, dict[str, str]] | None) -> None:
        if failure:
            return self.send(failure[0], {"error": {"message": "busy, try later"}}, failure[1])
        if self.path in fake.status:
            return self.send(fake.status[self.path], {"error": {"message": f"no, {fake.status[self.path]}"}})
        if self.path in fake.raw:
            return self.send(200, fake.raw[self.path])
        if self.path == "/v1/completions":
            return self.send(200, completion(body, fake.no_logprobs))
        if self.path == "/v1/chat/completions":
            return self.send(200, {"choices": [{"message": {"role": "assistant", "content": CHAT_ANSWER}}]})
        return self.send(404, {"error": {"message": "not found"}})

    def send(self, status: int, payload: dict | bytes, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def completion(body: dict, no_logprobs: bool) -> dict:
    prompt = body["prompt"]
    if body.get("echo") and not no_logprobs:
        pieces = list(TOKEN.finditer(prompt))
        return {"choices": [{"text": prompt, "logprobs": {
            "tokens": [m.group() for m in pieces],
            "token_logprobs": [None] + [-0.1 * len(m.group()) for m in pieces[1:]],
            "text_offset": [m.start() for m in pieces]}}]}
    return {"choices": [{"text": prompt if body.get("echo") else GENERATED, "logprobs": None}]}


@pytest.fixture
def server():
    fake = FakeServer()
    with loopback_server(Handler, fake) as url:
        fake.url = url
        yield fake
        fake.release.set()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Fast retries, and no API key from the environment of whoever runs the tests."""
    monkeypatch.setattr(backend_openai, "BACKOFF_S", 0.01)
    monkeypatch.delenv("LMLAB_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def backend(fake: FakeServer, **kwargs) -> OpenAIBackend:
    return OpenAIBackend(BackendOptions(model="fake-model", base_url=fake.url, **kwargs))


# ---- loglik ---------------------------------------------------------------------------------------------


def test_loglik_sums_exactly_the_continuation_tokens_in_order(server):
    server.shuffle = True
    requests = [
        ChoiceRequest("The cat sat on the", (" mat", " big red mat")),  # " ","mat" | " ","big"," ","red"," ","mat"
        ChoiceRequest("Hi ", ("there", "you")),  # one token each: "there", "you"
        ChoiceRequest("Question: 2+2? Answer:", (" 4", " 22", "  five")),  # " ","4" | " ","22" | "  ","five"
    ]
    scores = backend(server, concurrency=4).loglik(requests)
    assert scores == [
        [pytest.approx(-0.4), pytest.approx(-1.2)],
        [pytest.approx(-0.5), pytest.approx(-0.3)],
        [pytest.approx(-0.2), pytest.approx(-0.3), pytest.approx(-0.6)],
    ]
    assert 2 <= server.peak <= 4  # requests really ran side by side, never more than asked
    body = server.requests[0]["body"]
    assert {k: body[k] for k in ("model", "max_tokens", "echo", "logprobs", "temperature")} == {
        "model": "fake-model", "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    assert sorted(r["body"]["prompt"] for r in server.requests) == sorted(
        r.context + c for r in requests for c in r.continuations)


@pytest.mark.parametrize("how", ["status 400", "answer without logprobs"])
def test_loglik_on_a_server_without_prompt_logprobs_suggests_generate_mode(server, how):
    if how == "status 400":
        server.status["/v1/completions"] = 400
    else:
        server.no_logprobs = True
    with pytest.raises(LmlabError, match="does not return prompt log-probabilities") as err:
        backend(server, concurrency=1).loglik([ChoiceRequest("Hi ", ("there",))])
    assert "--mode generate" in err.value.hint
    assert len(server.requests) == 1  # a 4xx is never retried


def test_loglik_with_empty_context_is_a_clear_error(server):
    with pytest.raises(LmlabError, match="no log-probability for the first token"):
        backend(server).loglik([ChoiceRequest("", ("there",))])


# ---- generate ---------------------------------------------------------------------------------------------


def test_generate_via_completions_cuts_at_the_stop_string(server):
    texts = backend(server, api="completions").generate(
        [GenerateRequest("Q: sky?", max_tokens=16, stop=("STOP", "\n\n")), GenerateRequest("Q: again?")])
    assert texts == [[" B because the sky is blue "], [GENERATED]]
    assert server.paths() == ["/v1/completions"] * 2
    first, second = sorted((r["body"] for r in server.requests), key=lambda b: b["prompt"] != "Q: sky?")
    assert first == {"model": "fake-model", "prompt": "Q: sky?", "max_tokens": 16, "temperature": 0,
                     "stop": ["STOP", "\n\n"]}
    assert "stop" not in second


def test_generate_via_chat(server):
    assert backend(server, api="chat").generate([GenerateRequest("Which?", stop=("\n",))]) == [[CHAT_ANSWER]]
    assert server.paths() == ["/v1/chat/completions"]
    assert server.requests[0]["body"]["messages"] == [{"role": "user", "content": "Which?"}]


def test_auto_falls_back_to_chat_after_a_404_and_stays_there(server):
    server.status["/v1/completions"] = 404
    texts = backend(server, concurrency=1).generate([GenerateRequest(f"q{i}") for i in range(3)])
    assert texts == [[CHAT_ANSWER]] * 3
    assert server.paths() == ["/v1/completions"] + ["/v1/chat/completions"] * 3


def test_auto_uses_completions_when_the_server_has_it(server):
    assert backend(server).generate([GenerateRequest("q", stop=("STOP",))]) == [[" B because the sky is blue "]]
    assert server.paths() == ["/v1/completions"]


# ---- keys ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, env, sent", [
    ("opt-key", {"LMLAB_API_KEY": "env-key"}, "Bearer opt-key"),
    (None, {"LMLAB_API_KEY": "env-key", "OPENAI_API_KEY": "openai-key"}, "Bearer env-key"),
    (None, {"OPENAI_API_KEY": "openai-key"}, "Bearer openai-key"),
    (None, {}, None),
])
def test_bearer_key_from_option_then_environment(server, monkeypatch, option, env, sent):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backend(server, api_key=option, api="chat").generate([GenerateRequest("q")])
    assert server.requests[0]["auth"] == sent


def test_401_names_the_api_key_and_is_not_retried(server):
    server.status["/v1/chat/completions"] = 401
    with pytest.raises(LmlabError, match="API key") as err:
        backend(server, api="chat", api_key="wrong").generate([GenerateRequest("q")])
    assert "--api-key" in err.value.hint and "LMLAB_API_KEY" in err.value.hint
    assert len(server.requests) == 1


# ---- retries, timeouts, unreachable servers ----------------------------------------------------------------


def test_two_503s_then_success(server):
    server.failures = [(503, {}), (503, {})]
    assert backend(server, api="chat").generate([GenerateRequest("q")]) == [[CHAT_ANSWER]]
    assert len(server.requests) == 3


def test_retry_after_is_honoured_instead_of_the_backoff(server, monkeypatch):
    monkeypatch.setattr(backend_openai, "BACKOFF_S", 30.0)  # would be far too slow if used
    server.failures = [(429, {"Retry-After": "0"})]
    start = time.monotonic()
    assert backend(server, api="chat").generate([GenerateRequest("q")]) == [[CHAT_ANSWER]]
    assert time.monotonic() - start < 5 and len(server.requests) == 2

    server.failures = [(429, {"Retry-After": "0.3"})]
    start = time.monotonic()
    backend(server, api="chat").generate([GenerateRequest("q")])
    assert time.monotonic() - start >= 0.3


def test_retries_exhausted_names_the_url(server):
    server.failures = [(503, {})] * 10
    with pytest.raises(LmlabError, match=re.escape(server.url + "/chat/completions")) as err:
        backend(server, api="chat", max_retries=2).generate([GenerateRequest("q")])
    assert "503" in str(err.value)
    assert len(server.requests) == 3


def test_a_slow_server_times_out_with_a_timeout_hint(server):
    server.delay = 5.0
    start = time.monotonic()
    with pytest.raises(LmlabError, match="did not answer within 0.2 s") as err:
        backend(server, api="chat", timeout=0.2, max_retries=1).generate([GenerateRequest("q")])
    assert "--timeout" in err.value.hint
    assert len(server.requests) == 2 and time.monotonic() - start < 3


def test_nothing_listening_is_a_clear_error():
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/"
    with pytest.raises(LmlabError, match=re.escape(f"http://127.0.0.1:{port}/v1/completions")) as err:
        OpenAIBackend(BackendOptions(model="m", base_url=url, max_retries=1)).generate([GenerateRequest("q")])
    assert "--base-url" in err.value.hint


def test_malformed_json_is_a_clear_error(server):
    server.raw["/v1/chat/completions"] = b"<html>surprise</html>"
    with pytest.raises(LmlabError, match="not valid JSON"):
        backend(server, api="chat").generate([GenerateRequest("q")])


def test_identity_names_server_and_model(server):
    assert OpenAIBackend(BackendOptions(model="m", base_url=server.url + "/")).identity == f"openai:{server.url}:m"


def test_sampling_fields_reach_the_server_and_every_choice_comes_back(server):
    server.raw["/v1/completions"] = json.dumps({"choices": [
        {"index": 1, "text": "second STOP x"}, {"index": 0, "text": "first"}]}).encode()
    texts = backend(server, api="completions").generate(
        [GenerateRequest("q", max_tokens=8, stop=("STOP",), temperature=0.7, top_p=0.9, n=2, seed=11)])
    assert texts == [["first", "second "]]
    assert server.requests[0]["body"] == {"model": "fake-model", "prompt": "q", "max_tokens": 8, "temperature": 0.7,
                                          "top_p": 0.9, "n": 2, "seed": 11, "stop": ["STOP"]}


def test_fewer_choices_than_asked_is_a_clear_error(server):
    with pytest.raises(LmlabError, match="expected 3 choices, got 1"):
        backend(server, api="completions").generate([GenerateRequest("q", temperature=1.0, n=3)])
