"""On a passage index the context reranker learns passages (Re3val's context reranker): the gold page's passages
that hold the answer are the positives, BM25's passages of other pages the hard negatives."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex
from lmlab.plugins.rerank.train import mined_pairs
from tests.conftest import write_jsonl
from tests.plugins.retrieve.conftest import DOCS


def test_positives_are_the_answer_passages_and_negatives_come_from_other_pages(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": i, "title": t, "text": x} for i, t, x in DOCS])
    index = RetrievalIndex.create(tmp_path / "index", Corpus.load(corpus), passages=6)
    index.build("bm25", {"k1": 1.5, "b": 0.75, "bm25_method": "lucene", "stem": True})
    rows = [{"id": "q1", "input": "how many earth days is a year on mercury",  # "88" is in 102's fourth passage
             "output": [{"answer": "88", "provenance": [{"wikipedia_id": "102"}]}]},
            # "Sun Microsystems" is nowhere in 110: its lead is the gold passage
            {"id": "q2", "input": "which instrument gathers the light of the planets",
             "output": [{"answer": "Sun Microsystems", "provenance": [{"wikipedia_id": "110"}]}]}]
    queries = write_jsonl(tmp_path / "queries.jsonl", rows)
    pairs = mined_pairs(str(queries), index, negatives=3, depth=10)
    by_query = {q: [p for p in pairs if p.query_id == q] for q in ("q1", "q2")}
    passages = index.passages
    assert [p.context for p in by_query["q1"] if p.label] == [f"Mercury (planet). {passages['102-3'].text}"]
    assert "88" in passages["102-3"].text and "88" not in passages["102-0"].text
    assert [p.context for p in by_query["q2"] if p.label] == [f"Telescope. {passages['110-0'].text}"]
    for query, gold in (("q1", "102"), ("q2", "110")):
        negatives = [p.context for p in by_query[query] if not p.label]
        assert len(negatives) == 3
        own = {f"{p.title}. {p.text}" for p in passages.values() if p.page_id == gold}
        assert not own & set(negatives)  # no passage of the gold page is a negative
        assert all(n in {f"{p.title}. {p.text}" for p in passages.values()} for n in negatives)
