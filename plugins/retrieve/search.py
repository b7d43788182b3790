"""`lmlab retrieve search`: rank the index's documents for queries, as JSONL (one object per query) or TSV. On an
index with passages, bm25 and dense rank passages: each hit carries its KILT provenance and the start of its text."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from lmlab.core.files.atomic import atomic_file
from lmlab.core.files.records import FILE_FORMATS, HF_MARKERS, example, load_records
from lmlab.core.kernel.console import json_stdout, log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.passages import Passage
from lmlab.core.retrieval.rerankers import Reranking, open_reranker
from lmlab.core.retrieval.retrievers import Corpus, Ranked, RetrievalIndex
from lmlab.plugins.retrieve.options import SearchOptions

FORMATS = ("jsonl", "tsv")
PREVIEW = 80  # characters of a passage's text shown per hit


def read_queries(inline: list[str], path: str | None) -> list[tuple[str, str]]:
    """(id, text) pairs from --query (numbered q1, q2, ...), or --data: KILT/JSONL rows (`input`, optional `id`) or a
    text file with one query per line; neither given: the bundled held-out queries."""
    if inline and path:
        raise LmlabError("Give queries with --query or with --data, not both.", hint="use one of them")
    if inline:
        return [(f"q{n}", q) for n, q in enumerate(inline, 1)]
    if path is None:
        path = str(example("retrieve/dev.jsonl"))
        log(f"no --query or --data: searching the bundled {path}")
    source = Path(path)
    if source.is_file() and source.suffix.lower() not in FILE_FORMATS:
        lines = source.read_text(encoding="utf-8").splitlines()
        found = [(f"q{n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        if not found:
            raise DataError("holds no query", path=path, hint="write one query per line")
        return found
    if source.is_dir() and not any((source / m).exists() for m in HF_MARKERS):
        raise DataError("is a folder, not a query file", path=path, hint="pass a .jsonl/.txt file")
    out = []
    for record in load_records(path, required=("input",)):
        text = record.get("input", str).strip()
        if not text:
            raise DataError("is empty", path=record.path, line=record.line, field="input",
                            hint="give every query a non-empty 'input'")
        out.append((str(record.data.get("id", f"q{record.line}")), text))
    return out


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW else text[:PREVIEW - 1].rstrip() + "…"


def result(rank: int, hit: Ranked, corpus: Corpus, passages: dict[str, Passage]) -> dict[str, Any]:
    """One hit: a page's id and title, or a passage's id, title, KILT provenance and the start of its text."""
    row = {"rank": rank, "id": hit.id, "title": corpus.by_id[hit.id].title, "score": round(hit.score, 6)}
    if hit.id in passages:
        row.update(provenance=passages[hit.id].provenance(), text=preview(passages[hit.id].text))
    return row


def result_rows(queries: list[tuple[str, str]], ranked: list[list[Ranked]], corpus: Corpus,
                passages: dict[str, Passage]) -> list[dict[str, Any]]:
    """Rows of `write_results`: hits are ids of `corpus`, and of `passages` when passages were ranked ({} else)."""
    return [{"id": qid, "input": text,
             "results": [result(rank, hit, corpus, passages) for rank, hit in enumerate(hits, 1)]}
            for (qid, text), hits in zip(queries, ranked, strict=True)]


def span(provenance: dict[str, Any]) -> str:
    """A passage's span as `paragraph:character-paragraph:character`."""
    return (f"{provenance['start_paragraph_id']}:{provenance['start_character']}-"
            f"{provenance['end_paragraph_id']}:{provenance['end_character']}")


def write_results(out: TextIO, fmt: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if fmt == "jsonl":
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        for hit in row["results"]:
            columns = [row["id"], str(hit["rank"]), hit["id"], f"{hit['score']:.6g}", hit["title"]]
            if "provenance" in hit:
                columns += [span(hit["provenance"]), hit["text"]]
            out.write("\t".join(c.replace("\t", " ").replace("\n", " ") for c in columns) + "\n")


def run_search(opts: SearchOptions) -> dict[str, Any]:
    if opts.format not in FORMATS:
        raise LmlabError(f"Unknown --format '{opts.format}'.", hint=f"use one of: {', '.join(FORMATS)}")
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    placed = {"device": device, "dtype": dtype}
    queries = read_queries(opts.query, opts.data)
    index = RetrievalIndex.load(opts.search.index)
    options = {**asdict(opts.search), **placed}
    passages = index.passages if index.passage_level(opts.retriever) else {}  # bm25 or dense with --passages
    if passages:
        retriever, corpus = index.open_passages(opts.retriever, options), index.passage_corpus
    else:
        retriever, corpus = index.open(opts.retriever, options), index.corpus
    if opts.rerank is not None:
        settings = opts.reranking
        reranker = open_reranker(opts.rerank, {**asdict(settings), **placed}, index)
        retriever = Reranking.configured(retriever, reranker, corpus, settings)
    started = time.perf_counter()
    ranked = retriever.search([text for _, text in queries], opts.top_k)
    seconds = time.perf_counter() - started
    rows = result_rows(queries, ranked, corpus, passages)
    summary: dict[str, Any] = {}
    if opts.output is not None:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(opts.output) as out:
            write_results(out, opts.format, rows)
    elif json_stdout():  # stdout carries the --json summary: the results go in it
        summary["results"] = rows
    else:
        write_results(sys.stdout, opts.format, rows)
        sys.stdout.flush()
    return {**summary, "retriever": opts.retriever + (f" + rerank {opts.rerank}" if opts.rerank else ""),
            "queries": len(queries), "top_k": opts.top_k,
            "output": str(opts.output) if opts.output else "stdout", "seconds": round(seconds, 3),
            "queries_per_s": round(len(queries) / seconds, 2) if seconds else None}
