"""`lmlab retrieve index|search|eval` with bm25, dense and fused on a small corpus: rankings a user would check
by hand, the index read back from disk, KILT metrics in results.json, and clear messages for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lmlab.cli.app import main
from lmlab.core.kernel import plugins
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.kernel.plugins import load_plugins, pm
from lmlab.core.retrieval.kilt import load_kilt, retrieval_metrics
from lmlab.core.retrieval.retrievers import Corpus, Ranked, RetrievalIndex, RetrieverSpec
from tests.conftest import write_jsonl
from tests.plugins.retrieve.conftest import DOCS


def lmlab(args: list[str], code: int = 0) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == code


def test_index_records_its_corpus_and_settings(built_index: Path) -> None:
    info = json.loads((built_index / "index.json").read_text())
    assert info["documents"] == len(DOCS) and set(info["retrievers"]) == {"bm25", "dense", "generative"}
    assert info["retrievers"]["bm25"]["k1"] == 1.5 and info["retrievers"]["dense"]["dim"] == 384
    assert info["retrievers"]["generative"]["titles"] == len(DOCS)
    saved = Corpus.load(built_index / "corpus.jsonl")
    assert [(d.id, d.title, d.text) for d in saved.documents] == DOCS


def test_bm25_ranks_by_shared_terms_and_leaves_out_documents_without_any(built_index: Path) -> None:
    bm25 = RetrievalIndex.load(built_index).open("bm25", {})
    liquid, nothing, cello = bm25.search(["liquid metal in thermometers", "zyzzyva", "cellos"], 5)
    assert liquid[0].id == "101" and all(a.score >= b.score > 0 for a, b in zip(liquid, liquid[1:], strict=False))
    assert nothing == []
    assert cello[0].id == "106"  # stemming: "cellos" matches "cello"


def test_dense_search_after_loading_equals_cosine_similarity_of_fresh_embeddings(built_index: Path) -> None:
    from lmlab.core.retrieval.embeddings import Embedder
    from lmlab.plugins.retrieve.dense import document_text

    dense = RetrievalIndex.load(built_index).open("dense", {})
    query = "the smallest planet, nearest the sun"
    hits = dense.search([query], 4)[0]
    embedder = Embedder()
    docs = embedder.encode([document_text(t, x) for _, t, x in DOCS])
    scores = docs @ embedder.encode([query])[0]
    order = np.argsort(-scores)[:4]
    assert [h.id for h in hits] == [DOCS[i][0] for i in order]
    assert np.allclose([h.score for h in hits], scores[order], atol=1e-5)
    assert hits[0].id == "102"


def test_rebuilding_one_retriever_keeps_the_others(built_index: Path, tmp_path: Path,
                                                   retrieval_files: dict[str, Path]) -> None:
    before = json.loads((built_index / "index.json").read_text())["retrievers"]
    lmlab(["retrieve", "index", "--data", str(retrieval_files["corpus"]), "-o", str(built_index),
           "--retriever", "bm25", "--k1", "1.2", "--quiet"])
    after = json.loads((built_index / "index.json").read_text())["retrievers"]
    assert after["bm25"]["k1"] == 1.2 and after["dense"] == before["dense"]
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "1", "title": "A", "text": "a"}])
    with pytest.raises(SystemExit) as info:
        main(["retrieve", "index", "--data", str(other), "-o", str(built_index), "--retriever", "bm25"])
    assert info.value.code == 2
    lmlab(["retrieve", "index", "--data", str(retrieval_files["corpus"]), "-o", str(built_index),
           "--retriever", "bm25", "--quiet"])


def test_search_prints_jsonl_and_tsv_and_puts_results_in_the_json_summary(built_index: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    base = ["retrieve", "search", "--index", str(built_index), "--query", "liquid metal", "--query",
            "island with Jakarta", "--top-k", "2"]
    lmlab([*base, "-r", "bm25"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"] and rows[0]["results"][0]["title"] == "Mercury"
    assert rows[1]["results"][0]["title"] == "Java"
    lmlab([*base, "-r", "bm25", "--format", "tsv"])
    first = capsys.readouterr().out.splitlines()[0].split("\t")
    assert first[:3] == ["q1", "1", "101"] and first[4] == "Mercury"
    lmlab([*base, "-r", "fused", "--fuse", "bm25", "--fuse", "dense", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["retriever"] == "fused" and summary["results"][1]["results"][0]["title"] == "Java"


def test_eval_reports_kilt_metrics_that_match_its_rankings(built_index: Path, tmp_path: Path,
                                                           retrieval_files: dict[str, Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "eval"
    lmlab(["retrieve", "eval", "--index", str(built_index), "--data", str(retrieval_files["queries"]), "-o", str(run),
           "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["results"]) == {"bm25", "dense", "fused"}  # no generator trained: generative left out
    saved = json.loads((run / "results.json").read_text())
    assert saved["results"] == summary["results"] and (run / "recall.png").stat().st_size > 0
    queries = load_kilt(retrieval_files["queries"])
    rankings = [json.loads(line) for line in (run / "rankings.jsonl").read_text().splitlines()]
    for name in ("bm25", "dense", "fused"):
        expected = retrieval_metrics({r["id"]: r[name] for r in rankings}, queries, (1, 5, 10))
        assert {k: summary["results"][name][k] for k in expected} == expected
    assert summary["results"]["bm25"]["without_provenance"] == 1


class ReversedTitles:
    """A third-party retriever: documents in reverse title order, whatever the query; counts its searches."""

    def __init__(self) -> None:
        self.searches = 0

    @hookimpl
    def register_retrievers(self, register: object) -> None:
        def open_(index: RetrievalIndex, options: dict) -> SimpleNamespace:
            docs = sorted(index.corpus.documents, key=lambda d: d.title, reverse=True)

            def search(queries: list[str], k: int) -> list[list[Ranked]]:
                self.searches += 1
                return [[Ranked(d.id, 1.0 / (n + 1)) for n, d in enumerate(docs[:k])] for _ in queries]

            return SimpleNamespace(search=search)

        register(RetrieverSpec("reversed-titles", "test plugin", open_))


def test_a_plugin_retriever_is_searched_and_evaluated_by_name(built_index: Path, retrieval_files: dict[str, Path],
                                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    load_plugins()
    plugin = ReversedTitles()
    pm.register(plugin, name="reversed-titles-plugin")
    try:
        lmlab(["retrieve", "search", "--index", str(built_index), "--query", "anything", "-r", "reversed-titles",
               "--top-k", "1", "--format", "tsv"])
        assert capsys.readouterr().out.split("\t")[4].strip() == "Volcano"
        plugin.searches = 0
        lmlab(["retrieve", "eval", "--index", str(built_index), "--data", str(retrieval_files["queries"]),
               "-r", "reversed-titles", "-r", "bm25", "-r", "fused", "--fuse", "reversed-titles", "--fuse", "bm25",
               "-o", str(tmp_path / "e"), "--json"])
        results = json.loads(capsys.readouterr().out)["results"]
        assert set(results) == {"reversed-titles", "bm25", "fused"}
        assert plugin.searches == 1  # the fusion reused the ranking the member was just evaluated on
    finally:
        pm.unregister(plugin)
        plugins._infos.pop("reversed-titles-plugin", None)


def test_eval_scores_whole_rankings_so_a_set_completed_past_rank_k_counts(built_index: Path, tmp_path: Path,
                                                                          retrieval_files: dict[str, Path],
                                                                          capsys: pytest.CaptureFixture) -> None:
    """d9's evidence set {Glacier, Volcano}: the reversed-titles retriever ranks Volcano 1st and Glacier 9th, one
    point at position 8 of KILT's rank. recall@8 counts it only if the ranking is not cut to 8 pages."""
    load_plugins()
    plugin = ReversedTitles()
    pm.register(plugin, name="reversed-titles-plugin")
    try:
        run = tmp_path / "e"
        lmlab(["retrieve", "eval", "--index", str(built_index), "--data", str(retrieval_files["queries"]),
               "-r", "reversed-titles", "--k", "8", "-o", str(run), "--json"])
        results = json.loads(capsys.readouterr().out)["results"]["reversed-titles"]
    finally:
        pm.unregister(plugin)
        plugins._infos.pop("reversed-titles-plugin", None)
    rows = [json.loads(line) for line in (run / "rankings.jsonl").read_text().splitlines()]
    rankings = {row["id"]: row["reversed-titles"] for row in rows}
    assert len(rankings["d9"]) == len(DOCS) and rankings["d9"].index("109") == 8
    queries = load_kilt(retrieval_files["queries"])
    assert results == {**retrieval_metrics(rankings, queries, (8,)), "queries_per_s": results["queries_per_s"]}
    d9 = [q for q in queries if q.id == "d9"]
    assert retrieval_metrics({"d9": rankings["d9"]}, d9, (8,))["recall@8"] == 1
    assert retrieval_metrics({"d9": rankings["d9"][:8]}, d9, (8,))["recall@8"] == 0  # what a cut to k scored


@pytest.mark.parametrize(("rows", "where"), [
    ([{"id": "1", "title": "A", "text": "a"}, {"id": "2", "text": "b"}], "line 2: field 'title'"),
    ([{"id": "1", "title": "A", "text": "a"}, {"id": "1", "title": "B", "text": "b"}], "line 2: field 'id'"),
    ([{"id": "1", "title": "A", "text": "a"}, {"id": "2", "title": "A", "text": "b"}], "line 2: field 'title'"),
    ([{"id": "1", "title": "A", "text": 3}], "line 1: field 'text'"),
])
def test_a_malformed_corpus_is_refused_with_file_line_and_field(tmp_path: Path, rows: list[dict], where: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    corpus = write_jsonl(tmp_path / "bad.jsonl", rows)
    lmlab(["retrieve", "index", "--data", str(corpus), "-o", str(tmp_path / "index"), "-r", "bm25"], code=2)
    err = " ".join(capsys.readouterr().err.split())
    assert f"bad.jsonl:{where.split(':')[0].split()[1]}" in err and where.split(": ")[1] in err
    assert "Traceback" not in err and not (tmp_path / "index").exists()


def test_malformed_queries_and_bad_options_exit_2_with_a_hint(built_index: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "input": "x", "output": [{"provenance": [{"title": "T"}]}]}])
    lmlab(["retrieve", "eval", "--index", str(built_index), "--data", str(bad), "-o", str(tmp_path / "e")], code=2)
    assert "output[0].provenance[0].wikipedia_id" in capsys.readouterr().err
    lmlab(["retrieve", "search", "--index", str(built_index), "--query", "x", "-r", "fused", "--fuse", "bm25",
           "--fuse", "dense", "--weights", "1"], code=2)
    assert "--weights" in capsys.readouterr().err
    lmlab(["retrieve", "search", "--index", str(tmp_path), "--query", "x"], code=2)
    assert "not a retrieval index" in capsys.readouterr().err
    lmlab(["retrieve", "search", "--index", str(built_index), "--query", "x", "-r", "nope"], code=2)
    assert "available: bm25, dense, fused, generative" in capsys.readouterr().err
    lmlab(["retrieve", "search", "--index", str(built_index), "--query", "x", "-r", "fused", "--fuse", "bm25",
           "--fuse", "dense", "--weights", "-1", "--weights", "1"], code=2)
    assert "--weights must be non-negative" in capsys.readouterr().err
    lmlab(["retrieve", "eval", "--index", str(built_index), "--k", "0", "-o", str(tmp_path / "k0")], code=2)
    assert not (tmp_path / "k0").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--index-kind", "nope", "'nope' is not one of 'flat', 'ivf', 'hnsw'"),
    ("--bm25-method", "okapi", "Unknown --bm25-method 'okapi'")])
def test_bad_build_options_are_refused_before_anything_is_built(tmp_path: Path, retrieval_files: dict[str, Path],
                                                                flag: str, value: str, message: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    lmlab(["retrieve", "index", "--data", str(retrieval_files["corpus"]), "-o", str(tmp_path / "index"), flag,
           value], code=2)
    assert message in capsys.readouterr().err and not (tmp_path / "index").exists()


def test_the_quick_demo_step_indexes_and_evaluates_the_bundled_example(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from lmlab.plugins.retrieve.demo import run_demo

    run_demo(str(tmp_path), quick=True)
    results = json.loads((tmp_path / "retrieve-eval" / "results.json").read_text())
    assert results["queries"] == 50 and results["results"]["bm25"]["recall@10"] > 0.8
    assert "held-out queries (50" in capsys.readouterr().err
