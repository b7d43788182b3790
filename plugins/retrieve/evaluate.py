"""`lmlab retrieve eval`: KILT's page-level metrics (core/retrieval/kilt.py) of each retriever and the fused pipeline,
with results.json, rankings.jsonl and a recall@k plot in a run directory. A fusion evaluated after its members reuses
their rankings (each retriever searches once, as deep as the fusion asks), so its queries/s counts the fusion alone."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from lmlab.core.files.atomic import write_json_atomic, write_jsonl_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.console import log
from lmlab.core.retrieval.kilt import load_kilt, min_prediction_size, recall_at_k, retrieval_metrics
from lmlab.core.retrieval.rerankers import Reranking, resolve_reranker
from lmlab.core.retrieval.retrievers import RetrievalIndex, retriever_spec
from lmlab.core.training.report import plot_lines
from lmlab.plugins.retrieve.fused import default_members
from lmlab.plugins.retrieve.options import EvalOptions


def evaluated(index: RetrievalIndex, opts: EvalOptions, options: dict[str, Any]) -> list[str]:
    """The retrievers to evaluate: those named, else every usable one built plus fused."""
    if opts.retriever:
        for name in opts.retriever:
            retriever_spec(name)
        return list(dict.fromkeys(opts.retriever))
    members = default_members(index, options)
    return members + (["fused"] if len(members) > 1 else [])


def rerankings(index: RetrievalIndex, opts: EvalOptions, options: dict[str, Any],
               over: str) -> list[tuple[str, Reranking]]:
    """The Bayesian/XAI paper's ablation: `over` reranked by each variant the reranker offers (or the one named), and
    by its default variant plus the explanation score with --explain-weight; each reuses `over`'s ranking."""
    settings = opts.reranking
    spec, folder = resolve_reranker(opts.rerank, index)
    variants = [settings.variant] if settings.variant != "auto" else spec.variants(folder) or ["auto"]
    made = [(variant, 0.0) for variant in variants] + ([("auto", settings.explain_weight)]
                                                       if settings.explain_weight > 0 else [])
    out = []
    for variant, weight in made:
        reranker = spec.open(folder, {**asdict(settings), "variant": variant, "device": options["device"],
                                      "dtype": options["dtype"]})
        label = getattr(reranker, "variant", variant)
        name = f"{over} + {label}" + (f" + explain λ={weight:g}" if weight else "")
        out.append((name, Reranking.configured(index.open(over, options), reranker, index.corpus, settings,
                                               explain_weight=weight)))
    return out


def run_eval(opts: EvalOptions) -> dict[str, Any]:
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    data = opts.data or str(example("retrieve/dev.jsonl"))
    queries = load_kilt(data)[:opts.limit]
    index = RetrievalIndex.load(opts.search.index)
    options = {**asdict(opts.search), "device": device, "dtype": dtype}
    names = evaluated(index, opts, options)
    if opts.output_dir is not None:
        check_run_folder(opts.output_dir, "retrieve eval", reusable=True)
    # KILT scores a ranking of at least min_prediction_size pages, never one cut to k: a set whose last page
    # arrives past rank k can still complete within k points of its rank.
    depth = max([opts.search.depth, *(min_prediction_size(q.evidence, max(opts.ks)) for q in queries)])
    texts = [q.input for q in queries]
    results: dict[str, dict[str, Any]] = {}
    rankings: dict[str, dict[str, list[str]]] = {}
    searched = [(name, index.open(name, options)) for name in names]
    if opts.rerank is not None:
        searched += rerankings(index, opts, options, opts.rerank_over or names[-1])
    for name, retriever in searched:
        started = time.perf_counter()
        ranked = retriever.search(texts, depth)  # as deep as a fusion of it will ask
        seconds = time.perf_counter() - started
        rankings[name] = {q.id: [hit.id for hit in hits] for q, hits in zip(queries, ranked, strict=True)}
        results[name] = {**retrieval_metrics(rankings[name], queries, opts.ks),
                         "queries_per_s": round(len(queries) / seconds, 2) if seconds else None}
        if name == "fused":  # its weights, and how --tune-weights chose them
            results[name].update(retriever.record())
        log(f"{name}: R-precision {results[name]['r_precision']:.3f}, "
            + ", ".join(f"recall@{k} {results[name][f'recall@{k}']:.3f}" for k in opts.ks))
    names = list(rankings)
    run = RunDir(new_run_path("retrieve-eval", opts.output_dir), checkpoints=False)
    run.write_config("retrieve eval", {**asdict(opts), "data": data})
    write_jsonl_atomic(run.path / "rankings.jsonl",
                       ({"id": q.id, "input": q.input, "evidence": [list(s) for s in q.evidence],
                         **{name: ranked[q.id] for name, ranked in rankings.items()}} for q in queries))
    curves = {name: {k: sum(recall_at_k(rankings[name][q.id], q.evidence, k) for q in queries) / len(queries)
                     for k in range(1, max(opts.ks) + 1)} for name in names}
    chart = plot_lines(curves, run.path / "recall.png", f"recall@k · {len(queries)} queries · {index.folder.name}",
                       xlabel="k", ylabel="recall@k")
    summary = {"data": data, "index": str(index.folder), "queries": len(queries), "ks": opts.ks,
               "results": results, "best": max(results, key=lambda n: results[n][f"recall@{opts.ks[0]}"]),
               "chart": str(chart), "run_dir": str(run.path)}
    write_json_atomic(run.path / "results.json", summary)
    return summary
