"""`lmlab retrieve rerank`: a retriever's candidates (or a `retrieve search` output) rescored by a reranker, each with
P(relevant), its spread and entropy and (--explain-weight) the explanation score; KILT queries get recall@k and MRR."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

from lmlab.core.files.atomic import write_jsonl_atomic
from lmlab.core.files.records import example, load_records
from lmlab.core.kernel.console import json_stdout
from lmlab.core.kernel.errors import DataError
from lmlab.core.retrieval.kilt import KiltQuery, load_kilt, retrieval_metrics
from lmlab.core.retrieval.rerankers import Reranking, open_reranker
from lmlab.core.retrieval.retrievers import Ranked, RetrievalIndex, retriever_spec
from lmlab.plugins.rerank.command import RerankOptions

KS = (1, 5)


def search_output(path: str, index: RetrievalIndex) -> tuple[list[tuple[str, str]], list[list[Ranked]]]:
    """Queries and candidates from `retrieve search --format jsonl` rows {id, input, results: [{id, score}]}."""
    queries, candidates = [], []
    for record in load_records(path, required=("input", "results")):
        results = record.get("results", list)
        for n, hit in enumerate(results):
            page = str(hit.get("id")) if isinstance(hit, dict) else None
            if page not in index.corpus.by_id:
                raise DataError(f"'{page}' is not a document of the index's corpus", path=record.path,
                                line=record.line, field=f"results[{n}].id",
                                hint="rerank the output of `retrieve search` on the same --index")
        queries.append((str(record.data.get("id", record.line)), record.get("input", str)))
        candidates.append([Ranked(str(h["id"]), float(h.get("score", 0.0))) for h in results])
    return queries, candidates


def _queries(opts: RerankOptions) -> tuple[list[tuple[str, str]], list[KiltQuery] | None]:
    path = opts.data or str(example("retrieve/dev.jsonl"))
    records = load_records(path, required=("input",))
    if all("output" in r.data for r in records):
        kilt = load_kilt(path)[:opts.limit]
        return [(q.id, q.input) for q in kilt], kilt
    return [(str(r.data.get("id", r.line)), r.get("input", str)) for r in records][:opts.limit], None


def run_rerank(opts: RerankOptions) -> dict[str, Any]:
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    placed = {"device": device, "dtype": dtype}
    index = RetrievalIndex.load(opts.index)
    depth = max(opts.top_k, opts.rerank.rerank_depth)
    kilt = None
    if opts.candidates:
        queries, candidates = search_output(opts.candidates, index)
        queries, candidates = queries[:opts.limit], candidates[:opts.limit]
    else:
        queries, kilt = _queries(opts)
        retriever_spec(opts.retriever)  # an unknown --retriever is refused before any model loads
    reranker = open_reranker(opts.model, {**asdict(opts.rerank), **placed}, index)
    texts = [text for _, text in queries]
    if not opts.candidates:
        candidates = index.open(opts.retriever, placed).search(texts, depth)
    reranking = Reranking.configured(None, reranker, index.corpus, opts.rerank, depth=depth)
    started = time.perf_counter()
    ranked = reranking.rerank(texts, candidates, opts.top_k)
    seconds = time.perf_counter() - started
    rows = []
    for (qid, text), hits, before, details in zip(queries, ranked, candidates, reranking.details, strict=True):
        first = {hit.id: rank for rank, hit in enumerate(before, 1)}
        rows.append({"id": qid, "input": text, "results": [
            {"rank": rank, "id": hit.id, "title": index.corpus.by_id[hit.id].title, "score": round(hit.score, 6),
             "probability": round(details[hit.id].probability, 6), "uncertainty": round(details[hit.id].std, 6),
             "entropy": round(details[hit.id].entropy, 6), "retriever_rank": first[hit.id],
             **({"explanation": round(details[hit.id].explanation, 6)}
                if details[hit.id].explanation is not None else {})}
            for rank, hit in enumerate(hits, 1)]})
    summary: dict[str, Any] = {}
    if opts.output is not None:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(opts.output, rows)
    elif json_stdout():  # the rows go into the JSON summary
        summary["results"] = rows
    else:
        sys.stdout.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        sys.stdout.flush()
    pairs = sum(len(c) for c in candidates)
    stds = [details[hit.id].std for hits, details in zip(ranked, reranking.details, strict=True) for hit in hits]
    summary.update({"model": opts.model, "variant": getattr(reranker, "variant", opts.rerank.variant),
                    "retriever": "candidates file" if opts.candidates else opts.retriever, "queries": len(queries),
                    "pairs": pairs, "pairs_per_s": round(pairs / seconds, 2) if seconds else None,
                    "top1_changed": sum(1 for h, b in zip(ranked, candidates, strict=True)
                                        if h and b and h[0].id != b[0].id),
                    "mean_uncertainty": round(sum(stds) / max(1, len(stds)), 6),
                    "output": str(opts.output) if opts.output else "stdout"})
    if kilt is not None:
        ks = [k for k in KS if k <= opts.top_k]
        for key, found in (("before", candidates), ("after", ranked)):
            summary[key] = retrieval_metrics({q.id: [h.id for h in hits] for q, hits in zip(kilt, found, strict=True)},
                                             kilt, ks)
    return summary
