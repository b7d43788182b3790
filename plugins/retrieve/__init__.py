"""Re3val-style retrieval (Song et al. 2024): sparse (BM25), dense and trie-constrained generative retrievers,
their fusion, and KILT's retrieval metrics: `lmlab retrieve index|search|eval|train|questions`."""

from __future__ import annotations

import functools
from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel import plugins
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.retrieval.retrievers import RetrieverSpec

lazy = functools.partial(plugins.lazy, __package__)


@hookimpl
def register_retrievers(register: Any) -> None:
    register(RetrieverSpec("bm25", "BM25 over title and text (bm25s)", lazy("bm25", "open_bm25"),
                           lazy("bm25", "build"), lazy("bm25", "check"), passages=True))
    register(RetrieverSpec("dense", "cosine similarity of sentence embeddings (core vector store)",
                           lazy("dense", "open_dense"), lazy("dense", "build"), lazy("dense", "check"),
                           passages=True))
    register(RetrieverSpec("generative", "a causal LM decoding titles under the title trie",
                           lazy("generative", "open_generative"), lazy("generative", "build")))
    register(RetrieverSpec("generative-rerank", "generative candidates rescored given dense contexts (Re3val)",
                           lazy("generative", "open_reranked")))
    register(RetrieverSpec("fused", "reciprocal-rank or weighted-sum fusion of the others",
                           lazy("fused", "open_fused")))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.core.commands.builder import command_group
    from lmlab.plugins.retrieve.bench import bench_retrieve
    from lmlab.plugins.retrieve.command import HELP, add_retrieve_commands

    add_retrieve_commands(command_group(app, "retrieve", HELP))
    bench.command("retrieve")(bench_retrieve)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("retrieve", "Re3val · sparse, dense and generative retrieval, KILT metrics", 60,
                      lazy("demo", "run_demo")))

