"""An OpenAI-compatible HTTP server (FastAPI) over the serving engine: what `lmlab serve-block` runs, for any
registered architecture. /v1/completions (a prompt as text or as token ids), /v1/chat/completions (with a chat
template), /v1/models, /tokenize and /detokenize (as vLLM names them), /health and /metrics (Prometheus text, or
JSON with ?format=json); every request bounded, every failure an OpenAI-style JSON error. `echo` with `logprobs`
scores a prompt (what `lmlab eval --backend openai` and lm-evaluation-harness's `local-completions` use) in one
forward pass. The routes read and validate their own bodies (to keep their error statuses whatever the client's
content type); /openapi.json still describes every request and response body.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

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
PROTECTED = ("/tokenize", "/detokenize")  # beside /v1/*: what needs the API key
PROMETHEUS = "text/plain; version=0.0.4"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        """The OpenAI-style JSON error."""
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.status}}, self.status)


def _invalid(errors: Sequence[Any]) -> ApiError:
    """The 422 for a body (or query) that does not match its schema: its first error, by field."""
    first = errors[0]
    loc = tuple(first["loc"])
    where = ".".join(str(part) for part in (loc[1:] if loc[:1] == ("query",) else loc))
    return ApiError(422, f"Field '{where}': {first['msg']}.", param=where)


# ---- request bodies ---------------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="End the stream with a chunk of no choices and the usage.")


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
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | bool | None = None


PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


class CompletionRequest(_Common):
    prompt: str | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description=f"{PROMPT_SHAPES[0].upper()}{PROMPT_SHAPES[1:]}; token ids are used as they are.")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_of_the_shapes(cls, value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:  # one error for the field, not one per shape it failed
            raise PydanticCustomError("prompt_type", f"should be {PROMPT_SHAPES}") from None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class TokenizeCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[StrictInt]


# ---- response bodies (documentation: the routes build them as dicts) --------------------------------------------

class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="None where the model predicts nothing (the first token).")
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion; the last, with stream_options.include_usage, has no choices
    and the usage."""
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: AssistantMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (the last as CompletionChunk's)."""
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="The model's context: prompt tokens plus max_tokens fit in it.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok"]


REQUEST_BODIES = (CompletionRequest, ChatRequest, TokenizeCompletionRequest, TokenizeChatRequest, DetokenizeRequest)
STREAM_CHUNKS = (CompletionChunk, ChatCompletionChunk)
ERRORS = {400: "A bad value, a limit passed or a body that is not JSON", 401: "Missing or wrong API key",
          413: "The body is too large", 422: "The body does not match its schema", 429: "The queue is full",
          500: "Generation failed", 503: "The server is shutting down"}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _documented(body: tuple[type[BaseModel], ...], ok: type[BaseModel], errors: Sequence[int],
                chunk: type[BaseModel] | None = None) -> dict[str, Any]:
    """The route's OpenAPI: its request body (one model or any of several), its answer and its errors."""
    schema = _ref(body[0]) if len(body) == 1 else {"anyOf": [_ref(m) for m in body]}
    answer: dict[str, Any] = {"model": ok, "description": "The answer."}
    if chunk is not None:
        answer["content"] = {"text/event-stream": {"schema": {
            "type": "string", "description": f"With stream: server-sent events, each `data: ` a {chunk.__name__}, "
                                            "then `data: [DONE]`."}}}
    return {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
            "responses": {200: answer, **{code: {"model": ErrorResponse, "description": ERRORS[code]}
                                          for code in errors}}}


def _finish_reason(done: Completion) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _vocabulary_size(model: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    """The ids both the tokenizer and the model's embedding know."""
    sizes = [len(tokenizer)]
    embedded = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(embedded, int):
        sizes.append(embedded)
    return min(sizes)


class Server:
    """The app and what its routes share: the engine, the tokenizer, the limits, the access log."""

    def __init__(self, engine: Engine, tokenizer: PreTrainedTokenizerBase, *, model_name: str, limits: Limits,
                 api_key: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.engine, self.tokenizer, self.model_name, self.limits = engine, tokenizer, model_name, limits
        self.api_key, self.log = api_key, log
        self.vocab_size = _vocabulary_size(engine.model, tokenizer)
        self.created = int(time.time())
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

        @app.exception_handler(RequestValidationError)
        async def invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
            return _invalid(exc.errors()).response()

        generating = (400, 401, 413, 422, 429, 500, 503)
        app.post("/v1/completions", **_documented((CompletionRequest,), CompletionResponse, generating,
                                                  CompletionChunk))(self.completions)
        app.post("/v1/chat/completions", **_documented((ChatRequest,), ChatCompletionResponse, generating,
                                                       ChatCompletionChunk))(self.chat_completions)
        app.post("/tokenize", **_documented((TokenizeCompletionRequest, TokenizeChatRequest), TokenizeResponse,
                                            (400, 401, 413, 422)))(self.tokenize)
        app.post("/detokenize", **_documented((DetokenizeRequest,), DetokenizeResponse,
                                              (400, 401, 413, 422)))(self.detokenize)
        app.get("/v1/models", responses={200: {"model": ModelList}, 401: {"model": ErrorResponse}})(self.models)
        app.get("/health", responses={200: {"model": Health}, 503: {"model": ErrorResponse}})(self.health)
        app.get("/metrics", responses={200: {"description": "Prometheus text exposition (0.0.4), or JSON with "
                                                            "?format=json.",
                                             "content": {"text/plain": {"schema": {"type": "string"}}}},
                                       422: {"model": ErrorResponse}})(self.metrics)
        app.openapi = self._openapi
        return app

    def _openapi(self) -> dict[str, Any]:
        """FastAPI's schema plus the request bodies the routes validate themselves and the stream chunks."""
        app = self.app
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in REQUEST_BODIES]
                                         + [(m, "serialization") for m in STREAM_CHUNKS],
                                         ref_template="#/components/schemas/{model}")
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs["$defs"].items():
                known.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    async def _guarded(self, request: Request, call_next: Callable) -> Any:
        try:
            path = request.url.path
            if (path.startswith("/v1/") or path in PROTECTED) and self.api_key is not None:
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

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > self.limits.max_body_bytes:
            raise ApiError(413, f"Request body over {self.limits.max_body_bytes} bytes.")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON ({exc}).") from None

    @staticmethod
    def _validate(data: Any, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc.errors()) from None

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        return self._validate(await self._json(request), model)

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

    def _known(self, ids: list[int], where: str, param: str) -> list[int]:
        """`ids` when the model knows each of them, else the 400 naming the field."""
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"{where} holds token id {bad}, outside the model's vocabulary (ids 0 to "
                           f"{self.vocab_size - 1}).", param=param)
        return ids

    def _prompt_ids(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """Every prompt's token ids: text tokenised, token ids used as they are (so echo and logprobs score
        exactly them)."""
        if isinstance(prompt, str):
            return [self._encode(prompt)]
        if not prompt:
            raise ApiError(400, "prompt is an empty list.", param="prompt")
        if isinstance(prompt[0], str):
            return [self._encode(p) for p in prompt]
        if isinstance(prompt[0], int):
            return [self._known(prompt, "prompt", "prompt")]
        for i, ids in enumerate(prompt):
            if not ids:
                raise ApiError(400, f"prompt[{i}] is an empty list of token ids.", param="prompt")
        return [self._known(ids, f"prompt[{i}]", "prompt") for i, ids in enumerate(prompt)]

    def _chat_ids(self, messages: list[ChatMessage], add_generation_prompt: bool, instead: str) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, f"Model '{self.model_name}' has no chat template: {instead}.")
        ids = self.tokenizer.apply_chat_template([m.model_dump() for m in messages],
                                                 add_generation_prompt=add_generation_prompt, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)  # a BatchEncoding in transformers 5

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

    async def _run(self, prompts: list[list[int]], body: _Common, chat: bool) -> Any:
        sampling = self._sampling(body, prompts)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        repeated = [ids for ids in prompts for _ in range(body.n)]
        prompt_tokens = sum(len(ids) for ids in prompts)
        if sampling[0].max_tokens == 0:  # only the prompt (echo, scoring): nothing to generate
            tickets, queues = [], [asyncio.Queue() for _ in sampling]
            for q in queues:
                q.put_nowait(("done", Completion([], "length", "")))
        else:
            tickets, queues = self._submit(prompts, sampling, body.stream)
        if body.stream:
            echoes = [self.tokenizer.decode(ids) for ids in repeated] if body.echo else None
            usage = prompt_tokens if body.stream_options is not None and body.stream_options.include_usage else None
            return StreamingResponse(self._stream(ident, tickets, queues, chat, echoes, usage),
                                     media_type="text/event-stream")
        try:
            done = [await _finish(q) for q in queues]
        finally:
            for ticket in tickets:
                ticket.cancel()  # no-op for finished ones; frees the others if this handler is cancelled
        choices = []
        for i, (ids, d) in enumerate(zip(repeated, done, strict=True)):
            text = (self.tokenizer.decode(ids) if body.echo else "") + d.text
            choice = self._choice(i, text, _finish_reason(d), chat)
            if body.logprobs is not None:
                choice["logprobs"] = await asyncio.to_thread(self._logprobs, ids, d, body.echo, int(body.logprobs))
            choices.append(choice)
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": _usage(prompt_tokens, sum(len(d.tokens) for d in done))}

    def _logprobs(self, prompt: list[int], done: Completion, echo: bool, top: int) -> dict[str, Any]:
        """OpenAI's legacy logprobs object for the completion's tokens (and the prompt's, with echo): each token's
        text, log-probability (None where the model predicts none: the first token), the `top` likeliest tokens,
        and its character offset in the returned text."""
        generated = [t for t in done.tokens if t != self.engine.eos_id or done.finish_reason != "eos"]
        ids = prompt + generated
        with self.score_lock:  # one scoring forward at a time, beside the engine thread's batch
            rows = sequence_logprobs(self.engine.model, ids, prompt_len=len(prompt)) if len(ids) > 1 else None
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

    async def _stream(self, ident: str, tickets: list[Ticket], queues: list[asyncio.Queue], chat: bool,
                      echoes: list[str] | None, prompt_tokens: int | None) -> AsyncIterator[str]:
        """One SSE chunk per new piece of text, per choice (after its prompt, with echo), then each choice's finish,
        then (with `prompt_tokens`, for stream_options.include_usage) a chunk of no choices and the usage, then
        [DONE]. A piece that could be the start of a stop string (or an incomplete character) waits until it
        cannot."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        usage_null = {} if prompt_tokens is None else {"usage": None}  # as OpenAI's chunks before the last

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {"id": ident, "object": kind, "created": created, "model": self.model_name,
                       "choices": choices, **extra}
            return f"data: {json.dumps(payload)}\n\n"

        def chunk(index: int, text: str, finish: str | None) -> str:
            return event([self._choice(index, text, finish, chat, delta=True)], **usage_null)

        try:
            for i, text in enumerate(echoes or ()):
                yield chunk(i, text, None)
            pending = {asyncio.ensure_future(q.get()): i for i, q in enumerate(queues)}
            tokens: list[list[int]] = [[] for _ in queues]
            generated = [0] * len(queues)
            sent = [0] * len(queues)
            while pending:
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    kind_of, value = future.result()
                    if kind_of == "error":
                        yield f"data: {json.dumps({'error': {'message': value, 'type': 'server_error'}})}\n\n"
                        continue
                    if kind_of == "done":
                        generated[i] = len(value.tokens)
                        yield chunk(i, value.text[sent[i]:], _finish_reason(value))
                        continue
                    generated[i] += 1
                    if value != self.engine.eos_id:
                        tokens[i].append(value)
                    text = self._safe_prefix(self.tokenizer.decode(tokens[i]), tickets[i].sampling.stop)
                    if len(text) > sent[i]:
                        yield chunk(i, text[sent[i]:], None)
                        sent[i] = len(text)
                    pending[asyncio.ensure_future(queues[i].get())] = i
            if prompt_tokens is not None:
                yield event([], usage=_usage(prompt_tokens, sum(generated)))
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
        return await self._run(self._prompt_ids(body.prompt), body, chat=False)

    async def chat_completions(self, request: Request) -> Any:
        body = await self._body(request, ChatRequest)
        return await self._run([self._chat_ids(body.messages, True, "use /v1/completions")], body, chat=True)

    async def tokenize(self, request: Request) -> Any:
        """A prompt's token ids (as /v1/completions takes them), or a chat's under the chat template."""
        data = await self._json(request)
        if isinstance(data, dict) and "messages" in data:
            chat = self._validate(data, TokenizeChatRequest)
            ids = self._chat_ids(chat.messages, chat.add_generation_prompt, "send a prompt")
        else:
            text = self._validate(data, TokenizeCompletionRequest)
            ids = list(self.tokenizer(text.prompt, add_special_tokens=text.add_special_tokens)["input_ids"])
        return {"tokens": ids, "count": len(ids), "max_model_len": self.limits.context}

    async def detokenize(self, request: Request) -> Any:
        body = await self._body(request, DetokenizeRequest)
        return {"prompt": self.tokenizer.decode(self._known(body.tokens, "tokens", "tokens"))}

    async def models(self) -> Any:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "lmlab", "max_model_len": self.limits.context}]}

    async def health(self) -> Any:
        if self.stopping:
            return ApiError(503, "The server is shutting down.", "server_error").response()
        return {"status": "ok"}

    async def metrics(self, format: Annotated[Literal["prometheus", "json"], Query(  # noqa: A002 (the query's name)
            description="prometheus: the text exposition format; json: the same figures as one object")]
            = "prometheus") -> Any:
        if format == "json":
            return {**metrics(self.engine), "running": self._running(),
                    "http_responses": dict(sorted(self.http_counts.items()))}
        return PlainTextResponse(self._prometheus(), media_type=PROMETHEUS)

    def _running(self) -> int:
        return max(0, self.engine.in_flight - self.engine.queue_length)

    def _prometheus(self) -> str:
        """The engine's counters and gauges, the batch-size histogram and the HTTP responses, in the Prometheus
        text exposition format (0.0.4): a HELP and a TYPE line per metric, then its samples. Written here rather
        than through prometheus_client: the figures are read from the engine at scrape time (no registry to keep in
        step with it), the format is a few lines, and the serve extra needs no further package; the tests parse the
        output with prometheus_client's own parser."""
        engine, stats = self.engine, self.engine.stats
        lines: list[str] = []

        def metric(name: str, kind: str, text: str, samples: Sequence[tuple[str, int]]) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))
            lines.extend(f"{sample} {value}" for sample, value in samples)

        for name, text, value in (
            ("requests", "Sequences queued for generation (each prompt, times n).", stats.requests),
            ("completed", "Sequences generated to their end.", stats.completed),
            ("cancelled", "Sequences dropped before their end (the client went away).", stats.cancelled),
            ("prompt_tokens", "Prompt tokens of the sequences queued for generation.", stats.prompt_tokens),
            ("generated_tokens", "Tokens generated.", stats.generated_tokens),
            ("decode_steps", "Steps of the running batch.", stats.steps),
        ):
            metric(f"lmlab_{name}_total", "counter", text, [(f"lmlab_{name}_total", value)])
        for name, text, value in (
            ("queue_length", "Sequences waiting to join the running batch.", engine.queue_length),
            ("running_sequences", "Sequences in the running batch.", self._running()),
            ("in_flight", "Sequences queued or running.", engine.in_flight),
            ("queue_capacity", "Sequences that may wait at most; more get HTTP 429.", engine.max_queue),
            ("max_model_len", "The model's context in tokens.", self.limits.context),
        ):
            metric(f"lmlab_{name}", "gauge", text, [(f"lmlab_{name}", value)])
        sizes = dict(stats.batch_sizes)  # one copy: the engine thread adds to it
        bounds = [1 << k for k in range(engine.max_batch_size.bit_length()) if 1 << k < engine.max_batch_size]
        buckets = [(f'lmlab_batch_size_bucket{{le="{bound}"}}', sum(v for k, v in sizes.items() if k <= bound))
                   for bound in (*bounds, engine.max_batch_size)]
        metric("lmlab_batch_size", "histogram", "Sequences per step of the running batch.",
               [*buckets, ('lmlab_batch_size_bucket{le="+Inf"}', sum(sizes.values())),
                ("lmlab_batch_size_sum", sum(k * v for k, v in sizes.items())),
                ("lmlab_batch_size_count", sum(sizes.values()))])
        metric("lmlab_http_responses_total", "counter", "HTTP responses by status code.",
               [(f'lmlab_http_responses_total{{code="{code}"}}', count)
                for code, count in sorted(self.http_counts.items())])
        return "\n".join(lines) + "\n"


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
