"""The serving engine: one thread owns the model and batches every request's generation continuously (a
`RunningBatch`): requests wait in a bounded queue, join the batch whenever it lets them (every step for a GPT,
between blocks for the Block Transformer) and leave it as they finish; tokens come back on each `Ticket`."""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmlab.core.serving.generation import Completion, RunningBatch, Sampling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmlab.core.models.architectures import LanguageModel


class QueueFull(Exception):
    """The engine's queue holds `max_queue` requests already."""


class Stopped(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass
class Ticket:
    """One sequence's generation: it receives ("token", id) for every token, then ("done", Completion) or
    ("error", message), on `sink` when one is given (e.g. a hand-over to an event loop), else on `events`.
    `cancel()` drops it from the batch (its client went away)."""

    prompt: list[int]
    sampling: Sampling
    sink: Callable[[tuple[str, Any]], None] | None = None
    stream: bool = True  # False: only the final ("done", ...) event (saves a hand-over per token)
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False

    def put(self, kind: str, value: Any) -> None:
        (self.sink or self.events.put)((kind, value))

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class EngineStats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    steps: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # sequences per step → steps


class Engine:
    def __init__(self, model: LanguageModel, tokenizer: PreTrainedTokenizerBase | None, *, max_batch_size: int = 32,
                 batch_window_ms: float = 5.0, max_queue: int = 256) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.batch_window_s, self.max_queue = max_batch_size, batch_window_ms / 1000, max_queue
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.stats = EngineStats()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._running: dict[int, Ticket] = {}
        self._tags = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="lmlab-engine", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._running)

    def submit(self, prompts: Sequence[list[int]], sampling: Sequence[Sampling],
               sinks: Sequence[Callable[[tuple[str, Any]], None]] | None = None, *, stream: bool = True
               ) -> list[Ticket]:
        """Queue these sequences (all or none: QueueFull when they do not fit, Stopped when shutting down);
        `stream`: whether each token is reported as it comes or only the finished Completion."""
        sinks = sinks or [None] * len(prompts)
        tickets = [Ticket(list(p), s, sink, stream) for p, s, sink in zip(prompts, sampling, sinks, strict=True)]
        with self._lock:
            if self._stopping:
                raise Stopped()
            if len(self._waiting) + len(tickets) > self.max_queue:
                raise QueueFull()
            self._waiting.extend(tickets)
            self.stats.requests += len(tickets)
            self.stats.prompt_tokens += sum(len(t.prompt) for t in tickets)
            self._lock.notify()
        return tickets

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the ones queued or running (waiting up to `timeout` seconds), then end."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout)

    def _take(self, room: int, wait: bool) -> list[Ticket]:
        with self._lock:
            if wait:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._waiting and self.batch_window_s > 0:  # let a burst of requests arrive together
                    deadline = time.monotonic() + self.batch_window_s
                    while len(self._waiting) < room and (left := deadline - time.monotonic()) > 0:
                        self._lock.wait(left)
            taken = []
            while self._waiting and len(taken) < room:
                ticket = self._waiting.popleft()
                if ticket.cancelled:
                    self.stats.cancelled += 1
                else:
                    taken.append(ticket)
            return taken

    def _loop(self) -> None:
        batch = RunningBatch(self.model, eos_id=self.eos_id, tokenizer=self.tokenizer)
        with torch.inference_mode():
            while True:
                if not len(batch) and self._stopping and not self._waiting:
                    return
                if batch.can_join() and len(batch) < self.max_batch_size:
                    self._admit(batch, self._take(self.max_batch_size - len(batch), wait=not len(batch)))
                if len(batch):
                    try:
                        self._step(batch)
                    except Exception as exc:  # fail what is running, keep serving the rest
                        for ticket in self._running.values():
                            ticket.put("error", f"generation failed: {exc}")
                        self._running.clear()
                        batch = RunningBatch(self.model, eos_id=self.eos_id, tokenizer=self.tokenizer)

    def _admit(self, batch: RunningBatch, tickets: list[Ticket]) -> None:
        if not tickets:
            return
        tags = [next(self._tags) for _ in tickets]
        try:
            batch.add([t.prompt for t in tickets], [t.sampling for t in tickets], tags)
        except Exception as exc:  # a bad request must not stop the engine: its tickets get the error
            for ticket in tickets:
                ticket.put("error", str(exc))
            return
        self._running.update(zip(tags, tickets, strict=True))

    def _step(self, batch: RunningBatch) -> None:
        for tag, ticket in list(self._running.items()):
            if ticket.cancelled:
                batch.cancel(tag)
                del self._running[tag]
                self.stats.cancelled += 1
        if not len(batch):
            return
        self.stats.batch_sizes[len(batch)] += 1
        self.stats.steps += 1
        for tag, token, done in batch.step():
            ticket = self._running[tag]
            if ticket.stream:
                ticket.put("token", token)
            self.stats.generated_tokens += 1
            if done is not None:
                ticket.put("done", done)
                del self._running[tag]
                self.stats.completed += 1


def collect(ticket: Ticket, timeout: float | None = None) -> Completion:
    """Block until the ticket's sequence is done; its Completion (RuntimeError on an engine error)."""
    while True:
        kind, value = ticket.events.get(timeout=timeout)
        if kind == "done":
            return value
        if kind == "error":
            raise RuntimeError(value)


def metrics(engine: Engine) -> dict[str, Any]:
    s = engine.stats
    return {"requests": s.requests, "completed": s.completed, "cancelled": s.cancelled,
            "generated_tokens": s.generated_tokens, "prompt_tokens": s.prompt_tokens, "steps": s.steps,
            "queue_length": engine.queue_length, "in_flight": engine.in_flight,
            "batch_sizes": {str(k): v for k, v in sorted(s.batch_sizes.items())},
            "mean_batch_size": round(sum(k * v for k, v in s.batch_sizes.items()) / s.steps, 3) if s.steps else 0}
