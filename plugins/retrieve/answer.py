"""`lmlab retrieve answer`: Re3val's pipeline after retrieval, as its paper draws it, on one index.

    query → retriever (-r) → pages or passages ─┐   a page-level retriever (generative, fused) on a passage index:
                                                 │   the passages of its top pages, filled from bm25's pages;
                                                 │   several -r: their contexts fused by RRF (multi-perspective)
          → context reranker (--rerank, opt.)  → the best --top-k contexts → reader (generate | span) → answer
                                                   (--weigh-contexts: each read with the reranker's confidence)

Each answer keeps its provenance (the contexts read, the one a span came from first), written in KILT's guess
format; KILT's page-level retrieval scores and its downstream scores (EM, F1, KILT-EM/F1: an answer counts only where
the provenance's R-precision is 1) are computed on the queries that carry gold answers and pages."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from lmlab.core.evaluation.backends import BackendOptions, load_backend
from lmlab.core.files.atomic import write_json_atomic, write_jsonl_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.fusion import reciprocal_rank_fusion
from lmlab.core.retrieval.kilt import downstream_metrics, load_kilt, retrieval_metrics
from lmlab.core.retrieval.passages import passages_of_pages
from lmlab.core.retrieval.reader import MIN_WEIGHT
from lmlab.core.retrieval.rerankers import Reranking, open_reranker
from lmlab.core.retrieval.retrievers import Ranked, RetrievalIndex
from lmlab.plugins.retrieve.options import AnswerOptions

READERS = ("generate", "span")
COMMAND = "retrieve answer"


@dataclass(frozen=True)
class Context:
    """What the reader reads: a passage (or a whole page on a page index) and its KILT provenance."""

    id: str
    title: str
    text: str
    provenance: dict[str, Any]


def contexts(index: RetrievalIndex) -> dict[str, Context]:
    """Every passage of the index, or every page when it holds whole pages, by id."""
    if index.passage_words:
        return {p.id: Context(p.id, p.title, p.text, p.provenance()) for p in index.passages.values()}
    return {d.id: Context(d.id, d.title, d.text, {"wikipedia_id": d.id, "title": d.title})
            for d in index.corpus.documents}


def candidates(index: RetrievalIndex, retriever: str, opts: AnswerOptions, options: dict[str, Any], texts: list[str],
               depth: int) -> list[list[Ranked]]:
    """Each query's candidate contexts, best first: the retriever's own passages (or pages), or on a passage index
    the passages of a page-level retriever's top pages (Re3val's steps 4-5: titles missing filled from bm25)."""
    if not index.passage_words or index.passage_level(retriever):
        search = index.open_passages if index.passage_words else index.open
        return search(retriever, options).search(texts, depth)
    pages = index.open(retriever, options).search(texts, opts.top_k)
    if "bm25" in index.built and any(len(found) < opts.top_k for found in pages):
        filler = index.open("bm25", options).search(texts, 2 * opts.top_k)
        pages = [(found + [hit for hit in extra if hit.id not in {f.id for f in found}])[:opts.top_k]
                 for found, extra in zip(pages, filler, strict=True)]
    of_page = passages_of_pages(index.passages.values())
    ranked = []
    for found in pages:
        ids = [p.id for page in found for p in of_page.get(page.id, [])]
        ranked.append([Ranked(pid, -float(n)) for n, pid in enumerate(ids)])  # page order, then passage order
    return ranked


def perspectives(index: RetrievalIndex, opts: AnswerOptions, options: dict[str, Any], texts: list[str],
                 depth: int) -> list[list[Ranked]]:
    """The candidates of each --retriever; several are fused by reciprocal rank fusion (k = --rrf-k)."""
    found = [candidates(index, name, opts, options, texts, depth) for name in dict.fromkeys(opts.retriever)]
    if len(found) == 1:
        return found[0]
    return [[Ranked(doc, score) for doc, score in reciprocal_rank_fusion(
        [[(hit.id, hit.score) for hit in ranked] for ranked in lists], k=opts.search.rrf_k)[:depth]]
        for lists in zip(*found, strict=True)]


def confidences(reranking: Reranking, found: list[list[Ranked]], top_k: int, risk: float) -> list[list[float]]:
    """The reranker's confidence in each context read: P(relevant) − κ·std, in (0, 1]."""
    out = []
    for relevance, hits in zip(reranking.details, found, strict=True):
        seen = [relevance[hit.id] for hit in hits[:top_k] if hit.id in relevance]
        low = min((r.probability - risk * r.std for r in seen), default=1.0)
        out.append([min(1.0, max(MIN_WEIGHT, relevance[hit.id].probability - risk * relevance[hit.id].std
                                  if hit.id in relevance else low)) for hit in hits[:top_k]])
    return out


def read(opts: AnswerOptions, questions: list[str], read_contexts: list[list[Context]], device: Any,
         weights: list[list[float]] | None) -> list[tuple[str, int | None]]:
    """(answer, index of the context it came from: None for an answer generated from all of them) per question."""
    if opts.reader == "generate":
        from lmlab.core.retrieval.reader import generate_answers, vote_answers

        backend = load_backend(opts.backend, BackendOptions(model=opts.model, device=opts.placement.device,
                                                            precision=opts.placement.precision,
                                                            batch_size=opts.search.batch_size,
                                                            chat_template=opts.chat_template))
        passages = [[(c.title, c.text) for c in found] for found in read_contexts]
        if weights is not None:
            return list(vote_answers(backend, questions, passages, weights, max_tokens=opts.max_new_tokens))
        return [(answer, None) for answer in generate_answers(backend, questions, passages,
                                                               max_tokens=opts.max_new_tokens)]
    from lmlab.core.retrieval.reader import ReaderConfig, load_reader, read_passages

    reader, tokenizer = load_reader(ReaderConfig(model=opts.model), seed=0)
    return read_passages(reader.to(device), tokenizer, questions, [[c.text for c in found] for found in read_contexts],
                         batch_size=opts.search.batch_size, weights=weights)


def run_answer(opts: AnswerOptions) -> dict[str, Any]:
    if opts.reader not in READERS:
        raise LmlabError(f"Unknown --reader '{opts.reader}'.", hint=f"use one of: {', '.join(READERS)}")
    if opts.weigh_contexts and opts.rerank is None:
        raise LmlabError("--weigh-contexts weighs contexts by a reranker's confidence, and no --rerank was given.",
                         hint="add --rerank last (or a train-reranker run), or drop --weigh-contexts")
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    data = opts.data or str(example("retrieve/dev.jsonl"))
    queries = load_kilt(data)[:opts.limit]
    index = RetrievalIndex.load(opts.search.index)
    options = {**asdict(opts.search), "device": device, "dtype": dtype}
    if opts.output_dir is not None:
        check_run_folder(opts.output_dir, COMMAND, reusable=True)
    by_id = contexts(index)
    texts = [q.input for q in queries]
    seconds: dict[str, float] = {}
    weights = None
    started = time.perf_counter()
    depth = max(opts.top_k, opts.reranking.rerank_depth if opts.rerank else 0)
    found = perspectives(index, opts, options, texts, depth)
    seconds["retrieve"] = time.perf_counter() - started
    if opts.rerank is not None:
        started = time.perf_counter()
        settings = opts.reranking
        reranker = open_reranker(opts.rerank, {**asdict(settings), "device": device, "dtype": dtype}, index)
        corpus = index.passage_corpus if index.passage_words else index.corpus
        reranking = Reranking.configured(None, reranker, corpus, settings)
        found = reranking.rerank(texts, found, opts.top_k)
        weights = confidences(reranking, found, opts.top_k, settings.risk) if opts.weigh_contexts else None
        seconds["rerank"] = time.perf_counter() - started
    read_contexts = [[by_id[hit.id] for hit in hits[:opts.top_k]] for hits in found]
    started = time.perf_counter()
    answers = read(opts, texts, read_contexts, device, weights)
    seconds["read"] = time.perf_counter() - started
    rows, rankings = [], {}
    for query, contexts_read, (answer, source) in zip(queries, read_contexts, answers, strict=True):
        first = [contexts_read[source]] if source is not None else []
        provenance = [c.provenance for c in first + [c for c in contexts_read if c not in first]]
        rows.append({"id": query.id, "input": query.input, "output": [{"answer": answer, "provenance": provenance}]})
        rankings[query.id] = list(dict.fromkeys(p["wikipedia_id"] for p in provenance))
    scored = [q for q in queries if q.answers]
    ranked = {q.id: list(dict.fromkeys(c.provenance["wikipedia_id"] for c in found))
              for q, found in zip(queries, read_contexts, strict=True)}
    results = {"retrieval": retrieval_metrics(rankings, queries, sorted({1, opts.top_k})),
               "contexts": retrieval_metrics(ranked, queries, sorted({1, opts.top_k})),
               "downstream": downstream_metrics({r["id"]: r["output"][0]["answer"] for r in rows}, rankings, scored)
               if scored else None}
    run = RunDir(new_run_path("retrieve-answer", opts.output_dir), checkpoints=False)
    run.write_config(COMMAND, {**asdict(opts), "data": data})
    write_jsonl_atomic(run.path / "answers.jsonl", rows)
    summary = {"data": data, "index": str(index.folder), "passages": index.passage_words, "queries": len(queries),
               "retriever": opts.retriever, "rerank": opts.rerank, "reader": f"{opts.reader} {opts.model}",
               "top_k": opts.top_k, **results, "seconds": {k: round(v, 2) for k, v in seconds.items()},
               "answers": [{"id": r["id"], "input": r["input"], "answer": r["output"][0]["answer"],
                            "titles": [p["title"] for p in r["output"][0]["provenance"]]} for r in rows],
               "run_dir": str(run.path)}
    write_json_atomic(run.path / "results.json", summary)
    log(f"answered {len(queries)} queries in {sum(seconds.values()):.1f} s; answers in {run.path / 'answers.jsonl'}")
    return summary
