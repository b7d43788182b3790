"""Bayesian and explainable context reranking (Song, Oh, Kim, Thorne 2024): a cross-encoder trained on gold contexts
and BM25 hard negatives as a deep ensemble, MC dropout or SWA, calibrated and explained by LIME/SHAP. Commands:
`retrieve train-reranker|rerank|calibrate|explain`, `--rerank` on `retrieve search|eval`, `bench rerank`; the
candidates come from the retrieve plugin (`LMLAB_PLUGINS=rerank,retrieve`; without it a lookup says so)."""

from __future__ import annotations

import functools
from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel import plugins
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.retrieval.rerankers import RerankerSpec

lazy = functools.partial(plugins.lazy, __package__)


@hookimpl
def register_rerankers(register: Any) -> None:
    register(RerankerSpec("cross-encoder", "a cross-encoder (MiniLM by default): plain, ensemble, MC dropout or SWA",
                          lazy("bayes", "open_folder"), lazy("bayes", "offered_variants"),
                          lazy("bayes", "is_cross_encoder")))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.core.commands.builder import command_group
    from lmlab.plugins.rerank.bench import bench_rerank
    from lmlab.plugins.rerank.command import add_rerank_commands

    add_rerank_commands(command_group(app, "retrieve"))
    bench.command("rerank")(bench_rerank)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("rerank", "Bayesian reranking · MiniLM cross-encoder ensemble + SWA, calibration, SHAP", 65,
                      lazy("command", "run_demo"), quick=False))
