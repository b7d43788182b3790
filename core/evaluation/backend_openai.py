"""The `openai` backend: any OpenAI-compatible HTTP server (vLLM, llama.cpp server, ...), through plain `httpx`
rather than the openai SDK (one dependency fewer; scoring needs `echo` + `logprobs` on `/completions`, which the
SDKs treat as legacy). Connection errors, timeouts, 429 and 5xx are retried with exponential backoff."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from lmlab.core.evaluation.backends import BackendOptions, ChoiceRequest, GenerateRequest, cut_at_stop
from lmlab.core.kernel.errors import LmlabError

BACKOFF_S = 0.5  # first retry waits about this long, doubled for each further retry
MAX_RETRY_AFTER_S = 30.0
APIS = ("auto", "completions", "chat")
NO_LOGPROBS = (400, 404, 422, 501)
BASE_URL_HINT = "e.g. --base-url http://127.0.0.1:8000/v1"
NO_LOGPROBS_HINT = "use --mode generate, or a server that supports echo with logprobs (e.g. vLLM)"

T = TypeVar("T")
R = TypeVar("R")


class HTTPStatusError(LmlabError):
    """The server answered a status that is not retried (a 4xx other than 429, or 501)."""

    def __init__(self, url: str, status: int, detail: str) -> None:
        super().__init__(f"The server at {url} answered HTTP {status}: {detail}",
                         hint="check --model and --base-url against the server")
        self.url, self.status, self.detail = url, status, detail


def checked_base_url(url: str) -> str:
    """`url` without a trailing slash, or LmlabError unless it is an http(s) URL with a host (not worth retrying)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise LmlabError(f"--base-url '{url}' is not a valid URL ({exc}).", hint=BASE_URL_HINT) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LmlabError(f"--base-url '{url}' is not an http:// or https:// URL with a host.", hint=BASE_URL_HINT)
    return url.rstrip("/")


class OpenAIBackend:
    """Backend for an OpenAI-compatible server at `options.base_url` serving `options.model`."""

    def __init__(self, options: BackendOptions) -> None:
        if options.api not in APIS:
            raise LmlabError(f"Unknown API '{options.api}'.", hint=f"choose one of: {', '.join(APIS)}")
        self.options = options
        self.base_url = checked_base_url(options.base_url)
        self.identity = f"openai:{self.base_url}:{options.model}"
        self._api = options.api
        key = options.api_key or os.environ.get("LMLAB_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(options.timeout))

    def close(self) -> None:
        self._client.close()

    # ---- Backend protocol -------------------------------------------------------------------------------

    def loglik(self, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        jobs = [(r.context, c) for r in requests for c in r.continuations]
        scores = iter(self._map(lambda job: self._score(*job), jobs))
        return [[next(scores) for _ in r.continuations] for r in requests]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return self._map(self._generate_one, list(requests))

    # ---- one request each -------------------------------------------------------------------------------

    def _score(self, context: str, continuation: str) -> float:
        url = self.base_url + "/completions"
        body = {"model": self.options.model, "prompt": context + continuation, "max_tokens": 0, "echo": True,
                "logprobs": 1, "temperature": 0}
        try:
            choice = _field(self._post("/completions", body), url, "choices", 0)
        except HTTPStatusError as exc:
            if exc.status not in NO_LOGPROBS:
                raise
            raise LmlabError(f"The server at {url} does not return prompt log-probabilities "
                             f"(HTTP {exc.status}: {exc.detail}).", hint=NO_LOGPROBS_HINT) from exc
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        if not isinstance(logprobs, dict) or not logprobs.get("token_logprobs") or not logprobs.get("text_offset"):
            raise LmlabError(f"The server at {url} does not return prompt log-probabilities "
                             "(its answer has no logprobs).", hint=NO_LOGPROBS_HINT)
        offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
        if len(offsets) != len(values):
            raise _malformed(url, "text_offset and token_logprobs differ in length")
        start, end = len(context), len(context) + len(continuation)
        # the continuation's tokens only: not the context's, nor anything the server generated after the prompt
        picked = [value for offset, value in zip(offsets, values, strict=True) if start <= offset < end]
        if None in picked:
            raise LmlabError(f"The server at {url} returned no log-probability for the first token of the "
                             f"continuation {continuation!r}.", hint="give every choice a non-empty context")
        return sum(float(value) for value in picked)

    def _generate_one(self, request: GenerateRequest) -> list[str]:
        if self._api != "chat":
            try:
                return self._texts(request, chat=False)
            except HTTPStatusError as exc:
                if exc.status != 404:
                    raise
                if self.options.api == "completions":
                    raise LmlabError(f"The server at {exc.url} has no completions endpoint (HTTP 404: "
                                     f"{exc.detail}).", hint="use --api chat") from exc
                self._api = "chat"  # "auto": remembered for the rest of the run
        return self._texts(request, chat=True)

    def _texts(self, request: GenerateRequest, chat: bool) -> list[str]:
        """The request's texts from /chat/completions (the prompt as one user turn) or /completions."""
        path = "/chat/completions" if chat else "/completions"
        url = self.base_url + path
        prompt = {"messages": [{"role": "user", "content": request.prompt}]} if chat else {"prompt": request.prompt}
        data = self._post(path, {"model": self.options.model, **prompt, **self._sampling(request)})
        texts = []
        for choice in _choices(data, url, request.n):
            if chat:
                message = _field(choice, url, "message")
                text = (message.get("content") or "") if isinstance(message, dict) else None
            else:
                text = _field(choice, url, "text")
            texts.append(cut_at_stop(_text(text, url), request.stop))
        return texts

    @staticmethod
    def _sampling(request: GenerateRequest) -> dict[str, Any]:
        """The request's sampling in OpenAI's fields; `seed` is honoured by servers that support it (vLLM,
        OpenAI) and ignored by the rest, so only there are seeded samples reproducible."""
        body: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
        if request.temperature > 0 and request.top_p < 1:
            body["top_p"] = request.top_p
        if request.n > 1:
            body["n"] = request.n
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    # ---- HTTP ---------------------------------------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """`fn` over `items`, `options.concurrency` at a time, in order; the first error stops the rest.

        Daemon threads rather than a ThreadPoolExecutor, whose workers the interpreter joins at exit: with one,
        Ctrl-C would wait for the requests in flight (up to --timeout per attempt) before the run could exit."""
        results: dict[int, R] = {}
        stop: list[BaseException] = []
        todo = iter(enumerate(items))
        lock = threading.Lock()

        def work() -> None:
            while not stop:
                with lock:
                    job = next(todo, None)
                if job is None:
                    return
                try:
                    results[job[0]] = fn(job[1])
                except BaseException as exc:  # handed to the caller's thread below
                    stop.append(exc)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, self.options.concurrency))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException as exc:  # Ctrl-C: no new requests start; the ones in flight die with the process
            stop.append(exc)
            raise
        if stop:
            raise stop[0]
        return [results[i] for i in range(len(items))]

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            delay = BACKOFF_S * 2**attempt * random.uniform(1.0, 1.2)
            try:
                response = self._client.post(url, json=body)
            except httpx.TransportError as exc:  # a timeout is one too
                if last and isinstance(exc, httpx.TimeoutException):
                    raise LmlabError(f"The server at {url} did not answer within {self.options.timeout:g} s "
                                     f"({attempts} attempts).", hint="raise --timeout") from exc
                if last:
                    raise LmlabError(f"Cannot reach the server at {url} ({attempts} attempts; {exc}).",
                                     hint="start the server or pass --base-url") from exc
                time.sleep(delay)
                continue
            status = response.status_code
            if status in (401, 403):
                what = "rejected the API key" if self._has_key else "requires an API key"
                raise LmlabError(f"The server at {url} {what} (HTTP {status}).",
                                 hint="pass --api-key or set LMLAB_API_KEY")
            if status == 429 or (status >= 500 and status != 501):
                if last:
                    raise LmlabError(f"The server at {url} still answered HTTP {status} after {attempts} attempts "
                                     f"({_detail(response)}).", hint="check the server's log, or try again later")
                time.sleep(_retry_after(response, delay))
                continue
            if status >= 400 or status < 200:
                raise HTTPStatusError(url, status, _detail(response))
            try:
                data = response.json()
            except ValueError as exc:
                raise _malformed(url, "the answer is not valid JSON") from exc
            if not isinstance(data, dict):
                raise _malformed(url, "the answer is not a JSON object")
            return data
        raise AssertionError("unreachable")  # the loop always returns or raises


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return default


def _detail(response: httpx.Response) -> str:
    """The server's own error message, short."""
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text or response.reason_phrase).strip()[:200]


def _malformed(url: str, why: str) -> LmlabError:
    return LmlabError(f"The server at {url} sent a malformed response: {why}.",
                      hint="check that --base-url points to an OpenAI-compatible API (it usually ends in /v1)")


def _field(data: Any, url: str, *path: str | int) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise _malformed(url, f"no {'.'.join(map(str, path))}") from exc
    return data


def _choices(data: dict[str, Any], url: str, n: int) -> list[Any]:
    """The answer's `n` choices, in their `index` order."""
    choices = _field(data, url, "choices")
    if not isinstance(choices, list) or len(choices) < n:
        raise _malformed(url, f"expected {n} choice{'s' if n > 1 else ''}, got "
                              f"{len(choices) if isinstance(choices, list) else type(choices).__name__}")
    return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)[:n]


def _text(value: Any, url: str) -> str:
    if not isinstance(value, str):
        raise _malformed(url, f"the generated text is {type(value).__name__}, not a string")
    return value
