"""`lmlab retrieve explain`: which words of a context make the reranker call it relevant to a query, by LIME and
by SHAP, printed as highlighted text and saved as explanation.json plus one HTML view per explainer."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.kilt import load_kilt
from lmlab.core.retrieval.rerankers import context_of, open_reranker
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.rerank.explain import METHODS, explain, write_html
from lmlab.plugins.rerank.options import ExplainOptions


def _pair(opts: ExplainOptions, index: RetrievalIndex | None) -> tuple[str, str]:
    query = opts.query or load_kilt(str(example("retrieve/dev.jsonl")))[0].input
    if opts.context is not None:
        return query, opts.context
    if index is None:
        raise LmlabError(f"{opts.index} is not a retrieval index, needed to find a context for the query.",
                         hint="give --context TEXT, or build the index with `lmlab retrieve index`")
    best = index.open("bm25", {}).search([query], 1)[0]
    return query, context_of(index.corpus.by_id[best[0].id])


def predictor(reranker: Any, query: str) -> Any:
    """P(relevant | query, ·) over contexts, for a reranker with or without its own `probability_fn`."""
    if hasattr(reranker, "probability_fn"):
        return reranker.probability_fn(query)
    return lambda contexts: np.array([r.probability for r in reranker.score([(query, c) for c in contexts])])


def run_explain(opts: ExplainOptions) -> dict[str, Any]:
    for method in opts.explainer:
        if method not in METHODS:
            raise LmlabError(f"Unknown --explainer '{method}'.", hint=f"use one of: {', '.join(METHODS)}")
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    if opts.output_dir is not None:
        check_run_folder(opts.output_dir, "retrieve explain", reusable=True)
    index = RetrievalIndex.load(opts.index) if (opts.index / "index.json").is_file() else None
    query, context = _pair(opts, index)
    reranker = open_reranker(opts.model, {"variant": opts.variant, "device": device, "dtype": dtype}, index)
    predict = predictor(reranker, query)
    run = RunDir(new_run_path("retrieve-explain", opts.output_dir), checkpoints=False)
    run.write_config("retrieve explain", asdict(opts))
    methods: dict[str, Any] = {}
    for method in dict.fromkeys(opts.explainer):
        started = time.perf_counter()
        found = explain(predict, context, method, samples=opts.explain_samples, seed=opts.seed)
        seconds = time.perf_counter() - started
        methods[method] = {**found.to_json(), "seconds": round(seconds, 3),
                           "html": str(write_html(found, run.path / f"{method}.html", query=query)),
                           "top": [[w, round(v, 6)] for w, v in found.ranked()[:opts.top]]}
    summary = {"query": query, "context": context, "probability": float(predict([context])[0]),
               "variant": getattr(reranker, "variant", opts.variant), "methods": methods, "run_dir": str(run.path)}
    write_json_atomic(run.path / "explanation.json", summary)
    return summary
