"""The span reader and `lmlab augment eval`'s comparison, on a tiny random BERT (MiniLM's tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.core.retrieval.reader import (
    NOT_FOUND,
    ReaderConfig,
    load_reader,
    predict,
)
from lmlab.plugins.augment.command import AugmentEvalOptions
from lmlab.plugins.augment.evaluate import DUPLICATE, run_eval, show_report, squad_scores
from lmlab.plugins.augment.records import Instance
from tests.conftest import write_jsonl

TOWER = "The Eiffel Tower is in Paris, France. It was completed in 1889 by Gustave Eiffel's company."
PEOPLE = [("Alice Moreau", "Lyon", "1921", "chemistry"), ("Bram Visser", "Utrecht", "1934", "geology"),
          ("Chen Wei", "Chengdu", "1948", "botany"), ("Dara Okafor", "Lagos", "1957", "astronomy"),
          ("Elif Yilmaz", "Izmir", "1962", "economics"), ("Farid Haddad", "Beirut", "1975", "linguistics")]


def _bio(name: str, city: str, year: str, field: str) -> str:
    return f"{name} was born in {city} in {year} and studied {field} at the university."


def qa_rows(people: list[tuple[str, str, str, str]], prefix: str) -> list[dict]:
    """One question per person, alternately where they were born and what they studied."""
    rows = []
    for k, (name, city, year, field) in enumerate(people):
        question, answer = (f"Where was {name} born?", city) if k % 2 == 0 else (f"What did {name} study?", field)
        rows.append({"id": f"{prefix}{k}", "question": question, "answer": answer,
                     "context": _bio(name, city, year, field)})
    return rows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models need no intra-op parallelism; one thread keeps them quick on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A 2-layer, 32-wide random BERT saved as an encoder folder, to pass as --model."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _options(tmp_path: Path, model: Path, **values) -> AugmentEvalOptions:
    settings = {"model": str(model), "max_length": 64, "batch_size": 4, "lr": 3e-3, "schedule": "constant",
                "warmup_steps": 0, "output_dir": tmp_path / "eval", **values}
    return AugmentEvalOptions(**settings)


def test_training_memorises_a_small_set(tmp_path: Path, tiny_bert: Path) -> None:
    rows = qa_rows(PEOPLE, "m")
    memorise = write_jsonl(tmp_path / "memorise.jsonl", rows)
    untrained, tok = load_reader(ReaderConfig(model=str(tiny_bert), max_length=64), seed=42)
    items = [Instance(r["id"], r["question"], r["answer"], r["context"]) for r in rows]
    before = squad_scores(predict(untrained, tok, items), [[r["answer"]] for r in rows])["f1"]
    report = run_eval(_options(tmp_path, tiny_bert, data=str(memorise), eval_data=str(memorise), max_steps=30,
                                     batch_size=3))
    after = report["systems"]["seeds"]["f1"]
    assert after >= 80.0 and after >= before + 50.0, (before, after)


def test_run_eval_compares_seeds_with_each_augmented_file(tmp_path: Path, tiny_bert: Path, capsys) -> None:
    seeds = qa_rows(PEOPLE[:2], "s")
    extra = qa_rows(PEOPLE[2:4], "x") + [seeds[0], {"id": "bad", "question": "Where?", "answer": "Mars",
                                                    "context": "Nobody was born on the Moon."}]
    train = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    augmented = write_jsonl(tmp_path / "augmented-rada.jsonl", extra)
    test = write_jsonl(tmp_path / "heldout.jsonl", qa_rows(PEOPLE[4:], "t"))
    opts = _options(tmp_path, tiny_bert, data=str(train), augmented=[str(augmented)], eval_data=str(test),
                    max_steps=2)
    report = run_eval(opts)
    eval_dir = tmp_path / "eval"
    assert json.loads((eval_dir / "report.json").read_text()) == json.loads(json.dumps(report))
    systems = report["systems"]
    assert list(systems) == ["seeds", "augmented-rada"]
    assert systems["seeds"]["n_train"] == 2 and systems["seeds"]["skipped"] == {}
    assert systems["augmented-rada"]["n_train"] == 4  # 2 seeds + 2 new rows
    assert systems["augmented-rada"]["skipped"] == {DUPLICATE: 1, NOT_FOUND: 1}
    assert report["n_test"] == 2
    for name, result in systems.items():
        assert 0.0 <= result["exact_match"] <= result["f1"] <= 100.0
        assert result["f1_delta"] == pytest.approx(result["f1"] - systems["seeds"]["f1"])
        run = eval_dir / name
        assert (run / "model" / "span_head.safetensors").is_file()
        assert len((run / "predictions.jsonl").read_text().splitlines()) == 2
        assert json.loads((run / "summary.json").read_text())["f1"] == result["f1"]
    show_report(report)
    shown = capsys.readouterr().err
    assert "augmented-rada" in shown and "ΔF1 vs seeds" in shown

    weights = eval_dir / "seeds" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    resumed = run_eval(_options(tmp_path, tiny_bert, data=str(train), augmented=[str(augmented)], eval_data=str(test),
                                max_steps=2, output_dir=None, resume=eval_dir))
    assert resumed["systems"] == report["systems"] and weights.stat().st_mtime_ns == stamp  # nothing retrained
    with pytest.raises(LmlabError, match="max_steps"):
        run_eval(_options(tmp_path, tiny_bert, data=str(train), augmented=[str(augmented)], eval_data=str(test),
                          max_steps=3, output_dir=None, resume=eval_dir))


def test_bad_input_fails_before_any_training(tmp_path: Path, tiny_bert: Path) -> None:
    train = write_jsonl(tmp_path / "seeds.jsonl", qa_rows(PEOPLE[:1], "s"))
    no_context = write_jsonl(tmp_path / "aug.jsonl", [{"question": "Where?", "answer": "Lyon"}])
    with pytest.raises(DataError, match=r"aug\.jsonl:1: field 'context'"):
        run_eval(_options(tmp_path, tiny_bert, data=str(train), eval_data=str(train), augmented=[str(no_context)]))
    with pytest.raises(LmlabError, match="'seeds' is already taken"):
        run_eval(_options(tmp_path, tiny_bert, data=str(train), eval_data=str(train), augmented=[str(train)]))
    assert not (tmp_path / "eval").exists()
