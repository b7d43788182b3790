"""Labelled (query, context) pairs for training and calibrating a reranker: each query's gold pages (label 1) and
its BM25 hard negatives, the best-ranked pages of the index's BM25 retriever that are not gold (label 0), as Re3val
trains its context reranker (the Re3val paper). A file of `{query, context, label}` rows works too."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.core.files.records import SkipLog, load_records
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.kilt import load_kilt
from lmlab.core.retrieval.rerankers import context_of
from lmlab.core.retrieval.retrievers import RetrievalIndex


@dataclass(frozen=True)
class LabelledPair:
    query_id: str
    query: str
    context: str
    label: int


def mined_pairs(path: str, index: RetrievalIndex, *, negatives: int, depth: int, retriever: str = "bm25",
                skips: SkipLog | None = None) -> list[LabelledPair]:
    """Gold pages and the top `negatives` non-gold pages among the retriever's best `depth`, per KILT query."""
    queries = [q for q in load_kilt(path) if q.evidence]
    skips = skips if skips is not None else SkipLog()
    corpus = index.corpus
    found = index.open(retriever, {}).search([q.input for q in queries], depth) if queries else []
    out: list[LabelledPair] = []
    for query, hits in zip(queries, found, strict=True):
        gold = [page for page in dict.fromkeys(p for pages in query.evidence for p in pages) if page in corpus.by_id]
        if not gold:
            skips.add("provenance not in the index's corpus")
            continue
        out += [LabelledPair(query.id, query.input, context_of(corpus.by_id[page]), 1) for page in gold]
        hard = [hit.id for hit in hits if hit.id not in gold][:negatives]
        out += [LabelledPair(query.id, query.input, context_of(corpus.by_id[page]), 0) for page in hard]
    if not out:
        raise DataError("no query has a gold page in the index's corpus.", path=path,
                        hint="use queries whose provenance wikipedia_id is a document id of the index")
    return out


def file_pairs(path: str) -> list[LabelledPair]:
    """Rows {query, context, label (0/1)} and optionally `query_id` (default: the query text)."""
    out = []
    for record in load_records(path, required=("query", "context", "label")):
        label = record.get("label", (int, bool))
        if label not in (0, 1):
            raise DataError(f"is {label!r}, not 0 or 1", path=record.path, line=record.line, field="label",
                            hint="label 1 for a relevant context, 0 otherwise")
        query = record.get("query", str)
        query_id = str(record.data["query_id"]) if record.data.get("query_id") is not None else query
        out.append(LabelledPair(query_id, query, record.get("context", str), int(label)))
    return out


def load_pairs(path: str, index: RetrievalIndex | None, *, negatives: int, depth: int,
               skips: SkipLog | None = None) -> list[LabelledPair]:
    """{query, context, label} rows as they are, or KILT queries mined against the index's BM25."""
    first = load_records(path)[0].data
    if "context" in first and "label" in first:
        return file_pairs(path)
    if index is None:
        raise LmlabError(f"{path} holds KILT queries, whose pairs need a retrieval index (none was found).",
                         hint="build one with `lmlab retrieve index`, or give {query, context, label} rows")
    return mined_pairs(path, index, negatives=negatives, depth=depth, skips=skips)
