"""`lmlab retrieve train-reader`: the span reader learns each query's gold contexts (the passages of its gold pages
that hold the answer), and what it reports on held-out queries is what the saved reader answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli.app import main
from lmlab.core.evaluation.answers import best_over_golds, exact_match, f1
from lmlab.core.files.records import SkipLog
from lmlab.core.retrieval.kilt import load_kilt
from lmlab.core.retrieval.reader import ReaderConfig, load_reader, predict
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex
from lmlab.plugins.retrieve.reader_train import NO_ANSWER, NOT_VERBATIM, gold_readings
from tests.conftest import write_jsonl
from tests.plugins.retrieve.conftest import DOCS

ROWS = [
    {"id": "a", "input": "how long is a year on mercury", "output": [
        {"answer": "88 Earth days", "provenance": [{"wikipedia_id": "102"}]}]},
    {"id": "b", "input": "who released java", "output": [
        {"answer": "Sun Microsystems", "provenance": [{"wikipedia_id": "104"}]}]},
    {"id": "c", "input": "what do honeybees store", "output": [  # written otherwise than in the page
        {"answer": "HONEY", "provenance": [{"wikipedia_id": "107"}]}]},
    {"id": "d", "input": "a question without an answer", "output": [{"provenance": [{"wikipedia_id": "101"}]}]},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reader")
    corpus = write_jsonl(folder / "corpus.jsonl", [{"id": i, "title": t, "text": x} for i, t, x in DOCS])
    index = RetrievalIndex.create(folder / "index", Corpus.load(corpus), passages=8)
    index.build("bm25", {"k1": 1.5, "b": 0.75, "bm25_method": "lucene", "stem": True})
    return {"index": folder / "index", "queries": write_jsonl(folder / "queries.jsonl", ROWS), "folder": folder}


def test_readings_are_the_gold_passages_that_hold_the_answer(files: dict[str, Path]) -> None:
    index = RetrievalIndex.load(files["index"])
    skips = SkipLog()
    readings = gold_readings(load_kilt(str(files["queries"])), index, skips)
    assert [(r.id, r.output) for r in readings] == [("a", "88 Earth days"), ("b", "Sun Microsystems")]
    for reading in readings:
        assert reading.output in reading.context
        assert reading.context in {p.text for p in index.passages.values()}  # one passage, not the whole page
    assert skips.as_dict() == {NOT_VERBATIM: 1, NO_ANSWER: 1}


def test_the_reported_heldout_scores_are_the_saved_readers(files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from tests.plugins.rerank.conftest import tiny_encoder

    encoder = tiny_encoder(tmp_path / "encoder")
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["retrieve", "train-reader", "--index", str(files["index"]), "--data", str(files["queries"]),
              "--eval-data", str(files["queries"]), "--model", str(encoder), "--max-steps", "3",
              "--max-length", "64", "-o", str(run), "--json"])
    assert info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["readings"] == 2 and summary["heldout"]["readings"] == 2
    reader, tokenizer = load_reader(ReaderConfig(model=str(run), max_length=64), seed=0)  # the run folder opens
    readings = gold_readings(load_kilt(str(files["queries"])), RetrievalIndex.load(files["index"]), SkipLog())
    answers = predict(reader, tokenizer, readings)
    for name, metric in (("exact_match", exact_match), ("f1", f1)):
        expected = sum(best_over_golds(metric, a, r.answers) for a, r in zip(answers, readings, strict=True)) / 2
        assert summary["heldout"][name] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(SystemExit) as info:  # the run continues where it stopped
        main(["retrieve", "train-reader", "--resume", str(run), "--max-steps", "4", "--json"])
    assert info.value.code == 0 and json.loads(capsys.readouterr().out)["steps"] == 4


def test_queries_with_nothing_to_read_are_refused(files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from tests.conftest import refused

    unusable = write_jsonl(tmp_path / "unusable.jsonl", ROWS[2:])
    message = refused(capsys, "retrieve", "train-reader", "--index", str(files["index"]), "--data", str(unusable),
                      "--eval-data", "none", "-o", str(tmp_path / "run"))
    assert "unusable.jsonl" in message and "no query gives a reading" in message
