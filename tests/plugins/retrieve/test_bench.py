"""`lmlab bench retrieve`: its synthetic corpus, and the report's shape and checks at toy size (no timings are
asserted: benchmarks are not tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmlab.core.bench.synthetic_kilt import bench_corpus, kilt_row


def test_bench_corpus_is_deterministic_unique_and_answerable() -> None:
    docs, queries = bench_corpus(300, 60, 3)
    assert (docs, queries) == bench_corpus(300, 60, 3)
    assert bench_corpus(300, 60, 4)[0] != docs
    assert len(docs) == 300 and len(queries) == 60
    assert len({d.id for d in docs}) == 300 and len({d.title for d in docs}) == 300
    assert len({q.id for q in queries}) == 60
    titles = sorted(d.title for d in docs)
    assert any(b.startswith(a + " ") for a, b in zip(titles, titles[1:], strict=False))  # "Varno" / "Varno River"
    by_id = {d.id: d for d in docs}
    for query in queries:
        assert query.input.strip() and len(query.answers) == 1 and query.answers[0]
        assert len(query.evidence) == 1 and len(query.evidence[0]) == 1
        page = by_id[query.evidence[0][0]]
        assert query.titles == ((page.title,),)
        assert query.answers[0] in page.text
    assert bench_corpus(300, 20, 3)[1] == queries[:20]  # query i depends only on the seed and i
    row = kilt_row(queries[0])
    assert row["output"][0]["provenance"] == [{"wikipedia_id": queries[0].evidence[0][0],
                                               "title": queries[0].titles[0][0]}]


def _in_process(entry: str, system: str, settings: dict[str, Any], **_: Any) -> dict[str, Any]:
    """core.bench's worker, run in this process (each subprocess would import torch and sentence-transformers
    again); the result goes through JSON as it would from a worker."""
    from lmlab.plugins.retrieve.bench import run_system

    assert entry == "lmlab.plugins.retrieve.bench:run_system"
    return {**json.loads(json.dumps(run_system(system, settings))), "other_processes_cpu_share": None}


def test_bench_retrieve_json_report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from lmlab.cli.app import main

    monkeypatch.setattr("lmlab.core.bench.benchmark.run_measured", _in_process)
    with pytest.raises(SystemExit) as exited:
        main(["bench", "retrieve", "--documents", "100", "--queries", "20", "--decode-queries", "3", "--repeats", "1",
              "--json"])
    assert exited.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"benchmark", "machine", "settings", "results", "ratios"}
    assert report["benchmark"] == "retrieve" and report["machine"]["cores"]
    settings, results = report["settings"], report["results"]
    assert settings["documents"] == 100 and settings["queries"] == 20 and settings["bm25_method"] == "robertson"
    assert set(results) == {"bm25", "rank-bm25", "dense", "fused-rrf", "fused-weighted", "fused-rrf-tuned",
                            "fused-weighted-tuned", "trie-beam", "hf-callback", "generative"}
    assert "--generator" in results["generative"]["skipped"]
    for name in ("bm25", "rank-bm25", "dense", "fused-rrf", "fused-weighted"):
        assert results[name]["queries"] == 20 and results[name]["queries_per_s"] > 0
        for k in (1, 5, 10):
            assert 0.0 <= results[name][f"recall@{k}"] <= 1.0
        assert results[name]["recall@1"] <= results[name]["recall@5"] <= results[name]["recall@10"]
    for name in ("fused-rrf-tuned", "fused-weighted-tuned"):  # tuned on the first 6 queries, reported on the 14 others
        tuned = results[name]
        assert tuned["dev_queries"] == 6 and tuned["queries"] == 14 and set(tuned["weights"]) == {"bm25", "dense"}
        assert sum(tuned["weights"].values()) == pytest.approx(1.0) and 0.0 <= tuned["recall@1"] <= 1.0
        assert set(tuned["same_queries"]) == {"bm25", "dense", name.removesuffix("-tuned")}
    assert "top10" not in results["bm25"] and "top10" not in results["rank-bm25"]
    checks = settings["checks"]
    assert checks["bm25_same_ranking_up_to_ties_share"] == 1.0 and checks["bm25_max_relative_score_gap"] < 1e-4
    assert checks["bm25_all_scores_max_relative_gap"] < 1e-4  # every page's score, not only the top 10
    assert 0.0 <= checks["bm25_identical_top10_share"] <= 1.0
    assert checks["decode_identical"] is True
    assert results["trie-beam"]["identical"] and results["trie-beam"]["queries"] == 3
    assert set(report["ratios"]) == {"queries_per_s_bm25s_vs_rank_bm25", "queries_per_s_constrained_vs_hf_callback",
                                     "recall@1_fused_vs_best_single", "recall@1_fused_weighted_vs_best_single",
                                     "recall@1_fused_rrf_tuned_vs_best_single_held_out",
                                     "recall@1_fused_weighted_tuned_vs_best_single_held_out", "recall@1_dense_vs_bm25"}
    assert all(value > 0 for value in report["ratios"].values())


def test_every_timed_pass_searches(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The index remembers a retriever's last rankings (for eval's fusions); a timed pass must not be answered from
    that memory, or queries/s measures a dictionary lookup."""
    from lmlab.cli.app import main
    from lmlab.plugins.retrieve.bm25 import BM25Retriever

    calls = []
    search = BM25Retriever.search
    monkeypatch.setattr(BM25Retriever, "search", lambda self, queries, k: calls.append(k) or search(self, queries, k))
    monkeypatch.setattr("lmlab.core.bench.benchmark.run_measured", _in_process)
    with pytest.raises(SystemExit) as exited:
        main(["bench", "retrieve", "--documents", "60", "--queries", "10", "--repeats", "3", "--systems", "bm25",
              "--json"])
    assert exited.value.code == 0 and json.loads(capsys.readouterr().out)["results"]["bm25"]["queries"] == 10
    assert len(calls) == 4  # a warm-up pass and 3 timed ones
