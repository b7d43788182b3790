"""Text-model backends behind one small interface: score choices by log-likelihood, or generate text.

The core registers `hf` (local transformers, lmlab.core.backend_hf) and `openai` (any OpenAI-compatible
server, lmlab.core.backend_openai) through the `register_backends` hook; plugins add their own the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lmlab.core.errors import LmlabError
from lmlab.core.plugins import collect


@dataclass(frozen=True)
class ChoiceRequest:
    """Score every continuation after one context: the summed log-probability of its tokens."""

    context: str
    continuations: tuple[str, ...]

    def size(self) -> int:
        return len(self.context) + max(len(c) for c in self.continuations)


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy generation from `prompt`, cut at the first of `stop` (which is not included)."""

    prompt: str
    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def size(self) -> int:
        return len(self.prompt)


class Backend(Protocol):
    """What a backend offers. `identity` names the model so that cached answers are never shared between
    different models (for a local model it includes a fingerprint of the weights)."""

    identity: str

    def loglik(self, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """For each request, the log-likelihood of each continuation given the context."""
        ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """For each request, the generated text (without the prompt)."""
        ...


@dataclass
class BackendOptions:
    """Everything a backend may need; each backend reads the fields that apply to it."""

    model: str
    batch_size: int = 8
    max_length: int | None = None
    seed: int = 0
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    api: str = "auto"
    concurrency: int = 4
    timeout: float = 120.0
    max_retries: int = 4
    chat_template: bool = False


@dataclass
class BackendSpec:
    """A registered backend: `build(options)` returns a Backend."""

    name: str
    description: str
    build: Callable[[BackendOptions], Backend]


def backends() -> dict[str, BackendSpec]:
    return collect("register_backends", "backends", key=lambda spec: spec.name)


def load_backend(name: str, options: BackendOptions) -> Backend:
    """Build the backend called `name`; a clear error names the ones available."""
    found = backends()
    if name not in found:
        raise LmlabError(f"Unknown backend '{name}'.",
                         hint=f"available: {', '.join(sorted(found))}; `lmlab plugins` shows where they come from")
    return found[name].build(options)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (servers and generate() differ in whether they apply `stop`)."""
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]
