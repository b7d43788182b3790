"""An OpenAI-compatible HTTP server (FastAPI) over the serving engine: what `lmlab serve-block` runs, for any
registered architecture. /v1/completions, /v1/chat/completions (with a chat template), /v1/models, /health and
/metrics; every request bounded, every failure an OpenAI-style JSON error. `echo` with `logprobs` scores a prompt
(what `lmlab eval --backend openai` and lm-evaluation-harness's `local-completions` use) in one forward pass.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmlab.core.serving.engine import Engine, QueueFull, Stopped, Ticket, metrics
from lmlab.core.serving.generation import Completion, Sampling, sequence_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Limits:
    max_tokens: int = 256  # per request
    max_n: int = 8
    max_body_bytes: int = 1_000_000
    context: int = 256  # prompt tokens + max_tokens must fit the model's context


MAX_TOP_LOGPROBS = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        """The OpenAI-style JSON error."""
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.status}}, self.status)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    echo: bool = False
    logprobs: int | bool | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


def _finish_reason(done: Completion) -> str:
    return "length" if done.finish_reason == "length" else "stop"


class Server:
    """The app and what its routes share: the engine, the tokenizer, the limits, the access log."""

    def __init__(self, engine: Engine, tokenizer: PreTrainedTokenizerBase, *, model_name: str, limits: Limits,
                 api_key: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.engine, self.tokenizer, self.model_name, self.limits = engine, tokenizer, model_name, limits
        self.api_key, self.log = api_key, log
        self.http_counts: dict[str, int] = {}
        self.score_lock = threading.Lock()
        self.stopping = False
        self.app = self._build()

    # ---- the request path ---------------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(title="lmlab serve-block", docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def guard(request: Request, call_next: Callable) -> Any:
            start = time.perf_counter()
            response = await self._guarded(request, call_next)
            status = str(response.status_code)
            self.http_counts[status] = self.http_counts.get(status, 0) + 1
            if self.log is not None:
                client = request.client.host if request.client else "-"
                self.log(f"{client} {request.method} {request.url.path} {status} "
                         f"{(time.perf_counter() - start) * 1000:.0f} ms")
            return response

        @app.exception_handler(ApiError)
        async def api_error(request: Request, exc: ApiError) -> JSONResponse:
            return exc.response()

        app.post("/v1/completions")(self.completions)
        app.post("/v1/chat/completions")(self.chat_completions)
        app.get("/v1/models")(self.models)
        app.get("/health")(self.health)
        app.get("/metrics")(self.metrics)
        return app

    async def _guarded(self, request: Request, call_next: Callable) -> Any:
        try:
            if request.url.path.startswith("/v1/") and self.api_key is not None:
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                    raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                   "authentication_error")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limits.max_body_bytes):
                raise ApiError(413, f"Request body over {self.limits.max_body_bytes} bytes.")
            return await call_next(request)
        except ApiError as exc:
            return exc.response()

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        if len(raw) > self.limits.max_body_bytes:
            raise ApiError(413, f"Request body over {self.limits.max_body_bytes} bytes.")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON ({exc}).") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ApiError(422, f"Field '{where}': {first['msg']}.", param=where) from None

    def _sampling(self, body: _Common, prompts: list[list[int]]) -> list[Sampling]:
        if body.logprobs is not None and (body.stream or isinstance(body, ChatRequest)):
            raise ApiError(400, "logprobs are supported on /v1/completions without stream only.", param="logprobs")
        if body.logprobs is not None and not 0 <= int(body.logprobs) <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"logprobs must be 0 to {MAX_TOP_LOGPROBS}.", param="logprobs")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {self.limits.max_tokens}.",
                           param="max_tokens")
        if body.n > self.limits.max_n:
            raise ApiError(400, f"n {body.n} is over this server's limit of {self.limits.max_n}.", param="n")
        for ids in prompts:
            if len(ids) + max_tokens > self.limits.context:
                raise ApiError(400, f"The prompt's {len(ids)} tokens plus max_tokens {max_tokens} exceed the "
                               f"model's context of {self.limits.context} tokens.", param="prompt")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        top_k = None if body.top_k in (None, -1, 0) else body.top_k
        return [Sampling(max_tokens, body.temperature, body.top_p, top_k,
                         None if body.seed is None else body.seed + j, stop) for _ in prompts for j in range(body.n)]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] or [self.tokenizer.eos_token_id]

    def _submit(self, prompts: list[list[int]], sampling: list[Sampling],
                stream: bool) -> tuple[list[Ticket], list[asyncio.Queue]]:
        if self.stopping:
            raise ApiError(503, "The server is shutting down.", "server_error")
        loop = asyncio.get_running_loop()
        queues = [asyncio.Queue() for _ in sampling]
        sinks = [lambda event, q=q: loop.call_soon_threadsafe(q.put_nowait, event) for q in queues]
        repeated = [ids for ids in prompts for _ in range(len(sampling) // len(prompts))]
        try:
            return self.engine.submit(repeated, sampling, sinks, stream=stream), queues
        except QueueFull:
            raise ApiError(429, f"The server's queue is full ({self.engine.max_queue} sequences); retry later.",
                           "rate_limit_error") from None
        except Stopped:
            raise ApiError(503, "The server is shutting down.", "server_error") from None

    async def _run(self, request: Request, prompts: list[list[int]], body: _Common, chat: bool) -> Any:
        sampling = self._sampling(body, prompts)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if sampling[0].max_tokens == 0:  # only the prompt (echo, scoring): nothing to generate
            tickets, done = [], [Completion([], "length", "") for _ in sampling]
        else:
            tickets, queues = self._submit(prompts, sampling, body.stream)
            if body.stream:
                return StreamingResponse(self._stream(ident, tickets, queues, chat), media_type="text/event-stream")
            try:
                done = [await _finish(q) for q in queues]
            finally:
                for ticket in tickets:
                    ticket.cancel()  # no-op for finished ones; frees the others if this handler is cancelled
        repeated = [ids for ids in prompts for _ in range(body.n)]
        choices = []
        for i, (ids, d) in enumerate(zip(repeated, done, strict=True)):
            text = (self.tokenizer.decode(ids) if body.echo else "") + d.text
            choice = self._choice(i, text, _finish_reason(d), chat)
            if body.logprobs is not None:
                choice["logprobs"] = await asyncio.to_thread(self._logprobs, ids, d, body.echo, int(body.logprobs))
            choices.append(choice)
        prompt_tokens = sum(len(ids) for ids in prompts)
        completion_tokens = sum(len(d.tokens) for d in done)
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _logprobs(self, prompt: list[int], done: Completion, echo: bool, top: int) -> dict[str, Any]:
        """OpenAI's legacy logprobs object for the completion's tokens (and the prompt's, with echo): each token's
        text, log-probability (None where the model predicts none: the first token), the `top` likeliest tokens,
        and its character offset in the returned text."""
        generated = [t for t in done.tokens if t != self.engine.eos_id or done.finish_reason != "eos"]
        ids = prompt + generated
        with self.score_lock:  # one scoring forward at a time, beside the engine thread's batch
            rows = sequence_logprobs(self.engine.model, ids) if len(ids) > 1 else None
        first = 0 if echo else len(prompt)
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if top else None,
                               "text_offset": []}
        base = 0 if echo else len(self.tokenizer.decode(prompt))
        # one transfer to the host per request, not one per token: row i - 1 scores token i
        chosen, known, best_values, best_ids = [], [], [], []
        if rows is not None:
            targets = torch.tensor(ids[1:], device=rows.device)[:, None]
            chosen = rows.gather(1, targets)[:, 0].tolist()
            known = (~rows.isnan().any(dim=-1)).tolist()
            if top:
                best = rows.topk(top)
                best_values, best_ids = best.values.tolist(), best.indices.tolist()
        for i in range(first, len(ids)):
            scored = rows is not None and i > 0 and known[i - 1]
            out["tokens"].append(self.tokenizer.decode([ids[i]]))
            out["token_logprobs"].append(chosen[i - 1] if scored else None)
            out["text_offset"].append(len(self.tokenizer.decode(ids[:i])) - base)
            if top:
                out["top_logprobs"].append({
                    self.tokenizer.decode([t]): v for v, t in zip(best_values[i - 1], best_ids[i - 1], strict=True)
                } if scored else None)
        return out

    @staticmethod
    def _choice(index: int, text: str, finish: str | None, chat: bool, delta: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        key = "delta" if delta else "message"
        return {"index": index, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    async def _stream(self, ident: str, tickets: list[Ticket], queues: list[asyncio.Queue],
                      chat: bool) -> AsyncIterator[str]:
        """One SSE chunk per new piece of text, per choice, then each choice's finish, then [DONE]. A piece that
        could be the start of a stop string (or an incomplete character) waits until it cannot."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(index: int, text: str, finish: str | None) -> str:
            payload = {"id": ident, "object": kind, "created": created, "model": self.model_name,
                       "choices": [self._choice(index, text, finish, chat, delta=True)]}
            return f"data: {json.dumps(payload)}\n\n"

        try:
            pending = {asyncio.ensure_future(q.get()): i for i, q in enumerate(queues)}
            tokens: list[list[int]] = [[] for _ in queues]
            sent = [0] * len(queues)
            while pending:
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    event, value = future.result()
                    if event == "error":
                        yield f"data: {json.dumps({'error': {'message': value, 'type': 'server_error'}})}\n\n"
                        continue
                    if event == "done":
                        yield chunk(i, value.text[sent[i]:], _finish_reason(value))
                        continue
                    if value != self.engine.eos_id:
                        tokens[i].append(value)
                    text = self._safe_prefix(self.tokenizer.decode(tokens[i]), tickets[i].sampling.stop)
                    if len(text) > sent[i]:
                        yield chunk(i, text[sent[i]:], None)
                        sent[i] = len(text)
                    pending[asyncio.ensure_future(queues[i].get())] = i
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): free any slot still held
            for ticket in tickets:
                ticket.cancel()

    @staticmethod
    def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
        text = text.rstrip("\ufffd")  # an incomplete character, and what could start a stop string, wait
        return text[:len(text) - max((len(s) - 1 for s in stops), default=0)]

    # ---- routes -------------------------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Any:
        body = await self._body(request, CompletionRequest)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt is an empty list.", param="prompt")
        return await self._run(request, [self._encode(p) for p in prompts], body, chat=False)

    async def chat_completions(self, request: Request) -> Any:
        body = await self._body(request, ChatRequest)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, f"Model '{self.model_name}' has no chat template: use /v1/completions.")
        messages = [m.model_dump() for m in body.messages]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else list(ids)
        return await self._run(request, [ids], body, chat=True)

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "lmlab"}]}

    async def health(self) -> Any:
        if self.stopping:
            return ApiError(503, "The server is shutting down.", "server_error").response()
        return {"status": "ok"}

    async def metrics(self) -> dict[str, Any]:
        return {**metrics(self.engine), "http_responses": dict(sorted(self.http_counts.items()))}


async def _finish(queue: asyncio.Queue) -> Completion:
    while True:
        event, value = await queue.get()
        if event == "done":
            return value
        if event == "error":
            raise ApiError(500, value, "server_error")


def run_server(server: Server, host: str, port: int, *, drain_seconds: float = 30.0,
               on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting, let the requests in flight finish (up to drain_seconds),
    stop the engine and return (the process exits 0, unlike uvicorn's own handling, which re-raises the signal)."""
    import contextlib
    import signal

    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            def on_signal(signum: int, frame: Any) -> None:
                server.stopping = True
                self.should_exit = True
            previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if on_ready is not None and not self.should_exit:
                on_ready()

    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=drain_seconds, lifespan="off")
    try:
        _Server(config).run()
    finally:
        server.stopping = True
        server.engine.stop(timeout=drain_seconds)


class InThread:
    """A Server on a background thread (the demo, a script): `url`, and `stop()`, which drains, then stops."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.server, self.url = server, f"http://{host}:{port}"
        config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, name="lmlab-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.stopping = True
        self._uvicorn.should_exit = True
        self._thread.join()
        self.server.engine.stop()
