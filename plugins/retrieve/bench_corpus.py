"""What `lmlab bench retrieve` builds from its synthetic corpus (core/bench/synthetic_kilt.py) before its workers
run: the facts the report gives about it, its export for training a generator (`--export`) and its index."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmlab.core.bench.synthetic_kilt import bench_corpus, kilt_row
from lmlab.core.files.atomic import write_jsonl_atomic
from lmlab.core.kernel.console import log
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex
from lmlab.plugins.retrieve.bm25 import document_text, tokenize


def corpus_facts(docs: list[Any], queries: list[Any], stem: bool) -> dict[str, Any]:
    titles = sorted(d.title for d in docs)
    tokens = tokenize([document_text(d.title, d.text) for d in docs], stem, ids=False)
    document_frequency = Counter(t for page in tokens for t in set(page))
    return {"titles_that_prefix_another": sum(b.startswith(a + " ") for a, b in zip(titles, titles[1:], strict=False)),
            "terms_in_over_half_the_documents": sorted(t for t, n in document_frequency.items() if n > len(docs) / 2),
            "mean_document_words": round(statistics.fmean(len(d.text.split()) for d in docs), 1),
            "queries_asking_for_a_name": sum(q.answers[0] == q.titles[0][0] or q.titles[0][0].startswith(
                                                 f"{q.answers[0]} (") for q in queries)}


def export_corpus(folder: Path, docs: list[Any], queries: list[Any], settings: dict[str, Any], train: int) -> None:
    """The corpus, the bench's queries and `train` others (none a bench query) for `retrieve index` and `train`."""
    folder.mkdir(parents=True, exist_ok=True)
    _, more = bench_corpus(settings["documents"], len(queries) + train, settings["seed"],
                           lexical_share=settings["lexical_share"])
    asked = {q.input for q in queries}
    for name, rows in (("corpus.jsonl", [asdict(d) for d in docs]), ("queries.jsonl", [kilt_row(q) for q in queries]),
                       ("train.jsonl", [kilt_row(q) for q in more[len(queries):] if q.input not in asked])):
        write_jsonl_atomic(folder / name, rows)


def build_index(folder: Path, docs: list[Any], chosen: list[str], settings: dict[str, Any],
                device: str) -> dict[str, float]:
    """bm25 and dense, as `retrieve index` builds them, where a chosen system needs them (rank-bm25 compares every
    score with bm25's), and their build seconds; dense embeds on the bench's `device` (a worker sees only its own)."""
    needs = {"bm25": {"bm25", "rank-bm25", "fused", "fused-tuned", "generative"},
             "dense": {"dense", "fused", "fused-tuned", "generative"}}
    index = RetrievalIndex.create(folder, Corpus(docs, source=f"bench_corpus(seed={settings['seed']})"))
    seconds = {}
    for name, users in needs.items():
        if users & set(chosen):
            log(f"bench retrieve: building the {name} index of {len(docs)} pages…")
            built = index.build(name, {"bm25_method": settings["bm25_method"], "k1": settings["k1"],
                                       "b": settings["b"], "stem": settings["stem"], "device": device})
            seconds[name] = built["seconds"]
    return seconds
