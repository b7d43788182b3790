"""Bayesian and explainable context reranking (Song, Oh, Kim, Thorne 2024): a cross-encoder trained on gold contexts
and BM25 hard negatives, as a deep ensemble, MC dropout or SWA, with calibration and LIME/SHAP explanations:
`lmlab retrieve train-reranker|rerank|calibrate|explain`, `--rerank` on `retrieve search|eval`, `bench rerank`.

Needs the retrieve plugin: its retrievers (`--retriever bm25`) give the candidates, and `lmlab retrieve index` builds
the index they search (`LMLAB_PLUGINS=rerank,retrieve`; without it a lookup of either says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.retrieval.rerankers import RerankerSpec


def _open(folder: Path | None, options: dict[str, Any]) -> Any:
    from lmlab.plugins.rerank.bayes import open_folder

    return open_folder(folder, options)


def _variants(folder: Path | None) -> list[str]:
    from lmlab.plugins.rerank.bayes import offered_variants

    return offered_variants(folder)


@hookimpl
def register_rerankers(register: Any) -> None:
    register(RerankerSpec("cross-encoder", "a cross-encoder (MiniLM by default): plain, ensemble, MC dropout or SWA",
                          _open, _variants))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.core.commands.builder import command_group
    from lmlab.plugins.rerank.bench import bench_rerank
    from lmlab.plugins.rerank.command import add_rerank_commands

    add_rerank_commands(command_group(app, "retrieve"))
    bench.command("rerank")(bench_rerank)


def _demo(output_dir: str, quick: bool) -> None:
    from lmlab.plugins.rerank.demo import run_demo

    run_demo(output_dir, quick)


@hookimpl
def register_demo_steps(register: Any) -> None:
    register(DemoStep("rerank", "Bayesian reranking · MiniLM cross-encoder ensemble + SWA, calibration, SHAP", 65,
                      _demo, quick=False))
