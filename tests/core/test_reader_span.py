"""The span reader in core (what `retrieve answer --reader span` and `augment eval` read with), on a tiny random
BERT with MiniLM's tokenizer: features, span choice, prediction across passages, confidence weights, the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmlab.core.files.records import SkipLog
from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.core.retrieval.reader import (
    CUT_OFF,
    NOT_FOUND,
    ReaderConfig,
    SpanTask,
    best_span,
    features,
    load_reader,
    predict,
    read_passages,
)

TOWER = "The Eiffel Tower is in Paris, France. It was completed in 1889 by Gustave Eiffel's company."
PEOPLE = [("Alice Moreau", "Lyon", "1921", "chemistry"), ("Bram Visser", "Utrecht", "1934", "geology"),
          ("Chen Wei", "Chengdu", "1948", "botany")]


@dataclass(frozen=True)
class Item:
    id: str
    input: str
    output: str
    context: str | None = None


def _bio(name: str, city: str, year: str, field: str) -> str:
    return f"{name} was born in {city} in {year} and studied {field} at the university."


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


def test_features_map_answer_characters_to_their_tokens(tokenizer) -> None:
    answers = ["Paris", "1889", "Gustave Eiffel's company", "The Eiffel Tower", "France."]
    items = [Item(str(k), "What?", answer, TOWER) for k, answer in enumerate(answers)]
    skips = SkipLog()
    feats = features(items, tokenizer, skips=skips)
    assert skips.total == 0 and [f.row for f in feats] == list(range(len(answers)))
    for f, answer in zip(feats, answers, strict=True):
        assert f.context_first <= f.start <= f.end <= f.context_last
        assert TOWER[f.offsets[f.start][0]:f.offsets[f.end][1]] == answer
    for f in feats[:2]:  # the uncased tokenizer decodes a plain word back to itself, lower-cased
        assert tokenizer.decode(f.input_ids[f.start:f.end + 1]) == items[f.row].output.lower()


def test_rows_with_the_answer_missing_or_past_the_window_are_skipped_and_counted(tokenizer) -> None:
    long_context = "Filler words fill the page. " * 20 + "The treasure is buried under the old oak."
    items = [Item("kept", "Where is the tower?", "Paris", TOWER),
             Item("missing", "Where is the tower?", "Berlin", TOWER),
             Item("cut", "Where is the treasure?", "the old oak", long_context),
             Item("long question", "why " * 200 + "?", "Paris", TOWER)]
    skips = SkipLog()
    feats = features(items, tokenizer, max_length=48, skips=skips)
    assert [items[f.row].id for f in feats] == ["kept", "long question"]  # a long question is cut, not fatal
    assert all(len(f.input_ids) <= 48 for f in feats)
    assert skips.as_dict() == {NOT_FOUND: 1, CUT_OFF: 1}


def test_best_span_keeps_start_before_end_within_the_context_and_length() -> None:
    start = torch.tensor([9.0, 1.0, 0.0, 0.0, 4.0, 0.0])
    end = torch.tensor([9.0, 0.0, 5.0, 0.0, 0.0, 0.0])
    # token 0 is not context; the best pair of maxima (start 4, end 2) ends before it starts: (1, 2) scores 1 + 5
    assert best_span(start, end, 1, 5, max_tokens=30) == (6.0, 1, 2)
    assert best_span(start, end, 1, 5, max_tokens=1) == (5.0, 2, 2)
    assert best_span(start, end, 3, 5, max_tokens=30) == (4.0, 4, 4)


def test_predict_answers_each_question_with_a_span_of_its_context(tiny_bert: Path, tokenizer) -> None:
    reader, tok = load_reader(ReaderConfig(model=str(tiny_bert), max_length=32, max_answer_tokens=3), seed=0)
    long_context = " ".join(f"word{k}" for k in range(60)) + " The end."
    items = [Item("a", "Where?", "Paris", TOWER), Item("b", "Which word?", "word7", long_context),
             Item("c", "When?", "1889", TOWER)]
    predictions = predict(reader, tok, items, batch_size=2)
    assert len(predictions) == 3
    for item, prediction in zip(items, predictions, strict=True):
        assert prediction and prediction in item.context
        assert len(tokenizer(prediction, add_special_tokens=False)["input_ids"]) <= 3
    assert predictions == predict(reader, tok, items, batch_size=1)  # batching and padding change nothing


def test_read_passages_answers_from_the_best_scoring_passage(tiny_bert: Path) -> None:
    """Over several passages the best span of any of them wins (start + end logits compared across passages),
    and the answer is that passage's own best span."""
    from lmlab.core.retrieval.reader import _best_spans, _Question

    reader, tok = load_reader(ReaderConfig(model=str(tiny_bert), max_length=48, max_answer_tokens=3), seed=0)
    passages = [[TOWER, _bio(*PEOPLE[0]), _bio(*PEOPLE[1])], [_bio(*PEOPLE[2])], []]
    questions = ["When was it completed?", "Where was Chen Wei born?", "Anything?"]
    answers = read_passages(reader, tok, questions, passages, batch_size=2)
    for question, texts, (answer, n) in zip(questions[:2], passages, answers, strict=False):
        scores = [span[0] for span in _best_spans(reader, tok, [_Question(question, t) for t in texts], 4)]
        assert n == max(range(len(texts)), key=scores.__getitem__)
        assert answer == predict(reader, tok, [Item("x", question, "", texts[n])])[0] and answer in texts[n]
    assert answers[2] == ("", None)


def test_confidence_weights_add_their_log_to_each_passages_span_score(tiny_bert: Path) -> None:
    """With weights the chosen passage maximises span score + log(weight): a passage the reranker doubts loses a
    near tie, and an overwhelming weight moves the answer to its passage."""
    from lmlab.core.retrieval.reader import MIN_WEIGHT, _best_spans, _Question

    reader, tok = load_reader(ReaderConfig(model=str(tiny_bert), max_length=48, max_answer_tokens=3), seed=0)
    texts = [TOWER, _bio(*PEOPLE[0]), _bio(*PEOPLE[1])]
    question = "Where was Alice Moreau born?"
    scores = [span[0] for span in _best_spans(reader, tok, [_Question(question, t) for t in texts], 4)]
    plain = max(range(3), key=scores.__getitem__)
    for weights in ([1.0, 1.0, 1.0], [0.2, 0.9, 0.5], [1e-3, 1e-3, 1.0], [1.0, 0.0, 0.0]):
        ((_, n),) = read_passages(reader, tok, [question], [texts], weights=[weights])
        prior = [score + math.log(max(w, MIN_WEIGHT)) for score, w in zip(scores, weights, strict=True)]
        assert n == max(range(3), key=prior.__getitem__)
    ((_, n),) = read_passages(reader, tok, [question], [texts], weights=[[1.0, 1.0, 1.0]])
    assert n == plain  # equal weights change nothing
    weights = [1e-6] * 3
    weights[(plain + 1) % 3] = 1.0
    ((_, n),) = read_passages(reader, tok, [question], [texts], weights=[weights])
    assert n == (plain + 1) % 3  # an overwhelming weight moves the answer to its passage


def test_loss_is_the_hand_computed_cross_entropy(tiny_bert: Path, tokenizer) -> None:
    reader, tok = load_reader(ReaderConfig(model=str(tiny_bert)), seed=0)
    items = [Item("a", "Where is it?", "Paris", TOWER),
             Item("b", "Who built it?", "Gustave", "Built by Gustave.")]
    feats = features(items, tok)
    task = SpanTask(feats, pad_id=tok.pad_token_id, seed=0)
    batch = task.collate([0, 1])
    assert task.counts(batch) == {"examples": 2.0}
    loss, metrics = task.loss(reader, batch, {"examples": 2.0})
    by_hand = []
    for f in feats:  # each row alone, unpadded: -log softmax at the target, start and end averaged
        ids = torch.tensor([f.input_ids])
        start, end = reader(ids, torch.ones_like(ids), torch.tensor([f.token_type_ids]))
        ce_start = torch.logsumexp(start[0], 0) - start[0, f.start]
        ce_end = torch.logsumexp(end[0], 0) - end[0, f.end]
        by_hand.append((ce_start + ce_end) / 2)
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    half, _ = task.loss(reader, batch, {"examples": 4.0})  # normalised by the global count, not the local one
    assert half.item() == pytest.approx(loss.item() / 2, rel=1e-6)
    assert 0.0 <= metrics["span_accuracy"].item() <= 1.0
