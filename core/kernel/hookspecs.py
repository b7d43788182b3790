"""The hooks lmlab plugins implement (modelled on simonw/llm's hookspecs)."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "lmlab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_commands(app: Any, bench: Any) -> None:
    """Add Typer commands to `app` (the `lmlab` app) and benchmarks to `bench` (the `lmlab bench` group)."""


@hookspec
def register_models(register: Any) -> None:
    """Register model aliases: register(ModelAlias(...))."""


@hookspec
def register_demo_steps(register: Any) -> None:
    """Register steps of `lmlab demo`: register(DemoStep(name, order, run)); steps run by `order`."""


@hookspec
def register_attention(register: Any) -> None:
    """Register attention types for `pretrain --attn`: register(AttentionSpec(...)) (see core.models.architectures)."""


@hookspec
def register_architectures(register: Any) -> None:
    """Register model architectures for `pretrain --arch` and `generate`: register(ArchitectureSpec(...)) (as above)."""


@hookspec
def register_backends(register: Any) -> None:
    """Register text-model backends for `eval`: register(BackendSpec(...)) (see lmlab.core.evaluation.backends)."""


@hookspec
def register_benchmarks(register: Any) -> None:
    """Register what `lmlab eval NAME` offers: register(BenchmarkSpec(...)) (see lmlab.core.evaluation.scoring)."""


@hookspec
def register_retrievers(register: Any) -> None:
    """Register retrievers for `lmlab retrieve`: register(RetrieverSpec(...)) (see lmlab.core.retrieval.retrievers)."""


@hookspec
def register_rerankers(register: Any) -> None:
    """Register rerankers for `retrieve rerank` and `--rerank`: register(RerankerSpec(...)) (see core.retrieval)."""
