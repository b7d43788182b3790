"""Text-model backends behind one small interface: score choices by log-likelihood, or generate text. The core
registers `hf` (backend_hf) and `openai` (backend_openai) through `register_backends`; plugins add their own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lmlab.core.commands.devices import device_option, precision_option
from lmlab.core.commands.options import BACKEND, MODEL_AND_DATA, RUN_AND_OUTPUT, option
from lmlab.core.kernel.plugins import collect, not_registered


@dataclass(frozen=True)
class ChoiceRequest:
    """Score every continuation after one context: the summed log-probability of its tokens."""

    context: str
    continuations: tuple[str, ...]

    def size(self) -> int:
        return len(self.context) + max(len(c) for c in self.continuations)


@dataclass(frozen=True)
class GenerateRequest:
    """`n` completions of `prompt`, each cut before the first of `stop`. temperature 0 is greedy; above 0, a draw
    from softmax(logits / temperature) over the smallest set of tokens whose probability reaches top_p. With a
    `seed` the same request gives the same texts (completion i drawn with seed + i)."""

    prompt: str
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid GenerateRequest sampling: n={self.n}, max_tokens={self.max_tokens}, "
                             f"temperature={self.temperature}, top_p={self.top_p}")

    def size(self) -> int:
        return len(self.prompt) * self.n


class Backend(Protocol):
    """What a backend offers. `identity` names the model so that cached answers are never shared between
    different models (for a local model it includes a fingerprint of the weights)."""

    identity: str

    def loglik(self, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """For each request, the log-likelihood of each continuation given the context."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        """For each request, its `n` generated texts (without the prompt)."""


@dataclass
class BackendOptions:
    """Everything a backend may need (each reads its own fields); a command that uses a backend nests these."""

    model: str = option("smollm2-135m", "Model: alias, local HF folder or Hub id (hf backend), or the server's "
                        "model name (openai backend).", flags=("--model", "-m"), panel=MODEL_AND_DATA)
    batch_size: int = option(8, "Prompts per generate call, and per scoring pass on a GPU (on CPU, scoring runs "
                             "prompt by prompt, reusing shared prefixes).", min=1, panel=BACKEND)
    max_length: int | None = option(None, "Context length in tokens (default: the model's); longer prompts lose "
                                    "their start.", min=2, panel=MODEL_AND_DATA)
    seed: int = option(0, "Random seed (few-shot choice, sampling).", panel=RUN_AND_OUTPUT)
    base_url: str = option("http://127.0.0.1:8000/v1", "OpenAI-compatible server (openai backend).", panel=BACKEND)
    api_key: str | None = option(None, "API key for the server (or LMLAB_API_KEY / OPENAI_API_KEY).",
                                 envvar="LMLAB_API_KEY", panel=BACKEND)
    api: str = option("auto", "openai backend generation endpoint: auto, completions or chat.", panel=BACKEND)
    concurrency: int = option(4, "Requests in flight (openai backend).", min=1, panel=BACKEND)
    timeout: float = option(120.0, "Seconds per HTTP request (openai backend).", min=0.1, panel=BACKEND)
    max_retries: int = option(4, "Retries with backoff on errors (openai).", min=0, panel=BACKEND)
    chat_template: bool = option(False, "hf backend: send each prompt as a user turn in the model's chat template "
                                 "(instruct models; with openai use --api chat).", panel=BACKEND)
    device: str = device_option(BACKEND)
    precision: str = precision_option(BACKEND)


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
        raise not_registered("register_backends", name, f"Unknown backend '{name}'.",
                             hint=f"available: {', '.join(sorted(found))}; `lmlab plugins` shows where they come from")
    return found[name].build(options)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (servers and generate() differ in whether they apply `stop`)."""
    return text[:min((text.find(s) for s in stop if s and s in text), default=len(text))]
