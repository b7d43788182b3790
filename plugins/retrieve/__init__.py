"""Re3val-style retrieval (Song et al. 2024): sparse (BM25), dense and trie-constrained generative retrievers,
their fusion, and KILT's retrieval metrics: `lmlab retrieve index|search|eval|train|questions`."""

from __future__ import annotations

from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.retrieval.retrievers import RetrieverSpec


def _open(module: str, function: str) -> Any:
    """A spec's open/build that imports its module only when called (bm25s, torch and faiss load lazily)."""
    def call(*args: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"lmlab.plugins.retrieve.{module}"), function)(*args)

    return call


@hookimpl
def register_retrievers(register: Any) -> None:
    register(RetrieverSpec("bm25", "BM25 over title and text (bm25s)", _open("bm25", "open_bm25"),
                           _open("bm25", "build"), _open("bm25", "check")))
    register(RetrieverSpec("dense", "cosine similarity of sentence embeddings (core vector store)",
                           _open("dense", "open_dense"), _open("dense", "build"), _open("dense", "check")))
    register(RetrieverSpec("generative", "a causal LM decoding titles under the title trie",
                           _open("generative", "open_generative"), _open("generative", "build")))
    register(RetrieverSpec("generative-rerank", "generative candidates rescored given dense contexts (Re3val)",
                           _open("generative", "open_reranked")))
    register(RetrieverSpec("fused", "reciprocal-rank or weighted-sum fusion of the others",
                           _open("fused", "open_fused")))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.core.commands.builder import command_group
    from lmlab.plugins.retrieve.bench import bench_retrieve
    from lmlab.plugins.retrieve.command import HELP, add_retrieve_commands

    add_retrieve_commands(command_group(app, "retrieve", HELP))
    bench.command("retrieve")(bench_retrieve)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.retrieve.demo import run_demo

    run_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("retrieve", "Re3val · sparse, dense and generative retrieval, KILT metrics", 60, _demo))

