"""`lmlab retrieve answer` end to end on a passage index: answers in KILT's guess format with their provenance, and
scores that are KILT's on what was written (retrieval on the provenance's pages, downstream on the answers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli.app import main
from lmlab.core.retrieval.kilt import downstream_metrics, load_kilt, retrieval_metrics
from lmlab.core.retrieval.retrievers import RetrievalIndex
from tests.conftest import refused


def lmlab(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0


@pytest.fixture(scope="module")
def passage_index(retrieval_files: dict[str, Path]) -> Path:
    folder = retrieval_files["folder"] / "answer-index"
    lmlab(["retrieve", "index", "--data", str(retrieval_files["corpus"]), "-r", "bm25", "--passages", "8",
           "-o", str(folder), "--quiet"])
    return folder


def answers_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]


def test_generated_answers_carry_provenance_and_kilt_scores(passage_index: Path, retrieval_files: dict[str, Path],
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    lmlab(["retrieve", "answer", "--index", str(passage_index), "--data", str(retrieval_files["queries"]),
           "--model", "tiny-llama", "--max-new-tokens", "3", "--top-k", "3", "-o", str(run), "--json"])
    summary = json.loads(capsys.readouterr().out)
    rows = answers_of(run)
    queries = load_kilt(retrieval_files["queries"])
    assert [r["id"] for r in rows] == [q.id for q in queries]
    index = RetrievalIndex.load(passage_index)
    best = index.open_passages("bm25", {}).search([q.input for q in queries], 3)
    for row, hits in zip(rows, best, strict=True):
        (output,) = row["output"]
        assert isinstance(output["answer"], str) and "\n" not in output["answer"]
        read = [index.passages[hit.id] for hit in hits]
        assert output["provenance"] == [p.provenance() for p in read]  # what bm25 ranked, in its order
    rankings = {r["id"]: list(dict.fromkeys(p["wikipedia_id"] for p in r["output"][0]["provenance"])) for r in rows}
    assert summary["retrieval"] == retrieval_metrics(rankings, queries, (1, 3))
    assert summary["contexts"] == summary["retrieval"]  # a generated answer's provenance is the contexts in rank order
    answers = {r["id"]: r["output"][0]["answer"] for r in rows}
    assert summary["downstream"] == downstream_metrics(answers, rankings, [q for q in queries if q.answers])
    assert json.loads((run / "results.json").read_text())["downstream"] == summary["downstream"]


def test_a_span_answer_is_cut_from_the_first_passage_of_its_provenance(passage_index: Path, tmp_path: Path,
                                                                       retrieval_files: dict[str, Path]) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lmlab.core.retrieval.embeddings import embedder_path

    tokenizer = AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))
    torch.manual_seed(0)
    encoder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    run = tmp_path / "span"
    lmlab(["retrieve", "answer", "--index", str(passage_index), "--data", str(retrieval_files["queries"]),
           "--reader", "span", "--model", str(encoder), "--top-k", "2", "--limit", "4", "-o", str(run), "--quiet"])
    index = RetrievalIndex.load(passage_index)
    texts = {(p.page_id, p.start_paragraph_id, p.start_character): p.text for p in index.passages.values()}
    for row in answers_of(run):
        (output,) = row["output"]
        first = output["provenance"][0]
        assert output["answer"] and output["answer"] in texts[first["wikipedia_id"], first["start_paragraph_id"],
                                                               first["start_character"]]
        assert len(output["provenance"]) == 2


def test_an_unknown_reader_is_refused(passage_index: Path, capsys: pytest.CaptureFixture) -> None:
    message = refused(capsys, "retrieve", "answer", "--index", str(passage_index), "--reader", "fid")
    assert "Unknown --reader 'fid'" in message


def test_the_bundled_example_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The README's two commands on the bundled corpus and dev queries (three of them, a tiny generator)."""
    index = tmp_path / "passages"
    lmlab(["retrieve", "index", "--passages", "100", "-r", "bm25", "-o", str(index), "--quiet"])
    lmlab(["retrieve", "answer", "--index", str(index), "--limit", "3", "--model", "tiny-llama",
           "--max-new-tokens", "2", "-o", str(tmp_path / "run")])
    printed = capsys.readouterr().err
    assert "dev-001 Which planet is nearest to the Sun?" in printed and "KILT-EM" in printed
    (first, *_) = answers_of(tmp_path / "run")
    assert first["output"][0]["provenance"][0]["title"] == "Sun"  # bm25's best 100-word passage for dev-001


def test_several_retrievers_are_fused_by_rrf_before_reading(retrieval_files: dict[str, Path], tmp_path: Path) -> None:
    """Multi-perspective retrieval: each -r's passages, fused by reciprocal rank fusion, are what the reader reads."""
    from lmlab.core.retrieval.fusion import reciprocal_rank_fusion

    folder = tmp_path / "two"
    lmlab(["retrieve", "index", "--data", str(retrieval_files["corpus"]), "-r", "bm25", "-r", "dense",
           "--passages", "8", "-o", str(folder), "--quiet"])
    run = tmp_path / "run"
    lmlab(["retrieve", "answer", "--index", str(folder), "--data", str(retrieval_files["queries"]), "-r", "bm25",
           "-r", "dense", "--rrf-k", "10", "--model", "tiny-llama", "--max-new-tokens", "2", "--top-k", "3",
           "-o", str(run), "--quiet"])
    index = RetrievalIndex.load(folder)
    queries = [q.input for q in load_kilt(retrieval_files["queries"])]
    lists = [index.open_passages(name, {}).search(queries, 3) for name in ("bm25", "dense")]
    changed = 0
    for row, bm25, dense in zip(answers_of(run), *lists, strict=True):
        fused = reciprocal_rank_fusion([[(h.id, h.score) for h in bm25], [(h.id, h.score) for h in dense]], k=10)
        assert row["output"][0]["provenance"] == [index.passages[doc].provenance() for doc, _ in fused[:3]]
        changed += [doc for doc, _ in fused[:3]] != [h.id for h in bm25]
    assert changed  # the fusion is not bm25's ranking under another name


def test_weighing_contexts_needs_a_reranker(passage_index: Path, capsys: pytest.CaptureFixture) -> None:
    message = refused(capsys, "retrieve", "answer", "--index", str(passage_index), "--weigh-contexts")
    assert "--weigh-contexts" in message and "--rerank" in message


def test_contexts_weighed_by_the_rerankers_confidence(passage_index: Path, retrieval_files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """--weigh-contexts with the generate reader answers from each reranked context alone and votes by the
    reranker's confidence; the answer comes from one of the contexts read and its provenance puts that one first."""
    from tests.plugins.rerank.conftest import tiny_encoder

    encoder = tiny_encoder(tmp_path / "cross-encoder")
    run = tmp_path / "weighed"
    lmlab(["retrieve", "answer", "--index", str(passage_index), "--data", str(retrieval_files["queries"]),
           "--rerank", str(encoder), "--weigh-contexts", "--model", "tiny-llama", "--max-new-tokens", "2",
           "--top-k", "2", "--limit", "3", "-o", str(run), "--quiet"])
    from lmlab.core.evaluation.backends import BackendOptions, load_backend
    from lmlab.core.retrieval.reader import generate_answers

    backend = load_backend("hf", BackendOptions(model="tiny-llama", device="cpu", chat_template=True))
    index = RetrievalIndex.load(passage_index)
    by_span = {(p.page_id, p.start_paragraph_id, p.start_character): p for p in index.passages.values()}
    rows = answers_of(run)
    assert len(rows) == 3
    for row in rows:
        (output,) = row["output"]
        assert len(output["provenance"]) == 2
        first = output["provenance"][0]
        passage = by_span[first["wikipedia_id"], first["start_paragraph_id"], first["start_character"]]
        alone = generate_answers(backend, [row["input"]], [[(passage.title, passage.text)]], max_tokens=2)
        assert output["answer"] == alone[0]  # the answer is the one its first context gives when read alone
