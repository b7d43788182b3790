"""`retrieve train --method reinforce --reward reader`: a title is rewarded by the best F1, against the query's gold
answers, of the span an extractive reader cuts out of the title's page (or of the page's best bm25 passages); each
(query, page) is read once, and the CLI refuses what cannot be scored before it loads a model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lmlab.core.evaluation.answers import f1, normalize_answer
from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.core.retrieval.reader import ReaderConfig, load_reader, read_passages
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.plugins.retrieve import beam
from lmlab.plugins.retrieve import train as train_module
from lmlab.plugins.retrieve.beam import Hypothesis, TitleTrie
from lmlab.plugins.retrieve.train import READ_PASSAGES, PageContexts, Pair, ReaderReward, ReinforceTask
from tests.conftest import refused, write_jsonl
from tests.plugins.retrieve.conftest import EOS, PAD, QUERIES, TITLES, kilt_rows

PAGES = {"p1": "Eiffel Tower, built in 1889 in Paris.", "p2": "Big Ben stands in London.",
         "p3": "The Eiffel Tower is a lattice tower."}


class FirstWords:
    """A stand-in for read_passages: the first two words of each question's first context, and a log of what it was
    asked to read."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, tuple[str, ...]]]] = []

    def __call__(self, model: object, tokenizer: object, questions: Sequence[str],
                 contexts: Sequence[Sequence[str]], batch_size: int = 32) -> list[tuple[str, int | None]]:
        assert not torch.is_grad_enabled()
        self.calls.append([(q, tuple(c)) for q, c in zip(questions, contexts, strict=True)])
        return [(" ".join(c[0].split()[:2]), 0) for c in contexts]


@pytest.fixture
def first_words(monkeypatch: pytest.MonkeyPatch) -> FirstWords:
    fake = FirstWords()
    monkeypatch.setattr(train_module, "read_passages", fake)
    return fake


def page_texts(query: str, pages: Sequence[str]) -> list[list[str]]:
    return [[PAGES[page]] for page in pages]


def reward_of(contexts=page_texts) -> ReaderReward:
    return ReaderReward(torch.nn.Linear(1, 1), None, contexts)


def pair(query_id: str, question: str, *answers: str) -> Pair:
    return Pair((1, 2), (3, EOS), frozenset(), query_id, question, answers)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer, saved as an encoder folder (a reader's --model)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_page_that_holds_the_answer_is_rewarded_by_its_normalised_f1(first_words: FirstWords) -> None:
    """The reader answers "Eiffel Tower," from p1 and p3's "The Eiffel": F1 after SQuAD normalisation (case,
    punctuation and articles dropped), the best over the gold answers; London's page scores 0."""
    rewards = reward_of()([pair("q", "What was built in 1889?", "the eiffel tower", "Tower Bridge")],
                          [["p1", "p2", "p3", None]])
    # p1: "eiffel tower" = gold 1 exactly; p3: "eiffel" has precision 1, recall 1/2 against gold 1: F1 2/3
    assert rewards == [[1.0, 0.0, pytest.approx(2 / 3), 0.0]]
    assert rewards[0][0] > rewards[0][1]
    partial = reward_of()([pair("q", "?", "Eiffel Tower of Paris")], [["p1"]])
    assert partial == [[pytest.approx(2 * 1 * 0.5 / (1 + 0.5))]]  # precision 1, recall 2/4 ("of" is no article)


def test_each_query_page_pair_is_read_once(first_words: FirstWords) -> None:
    reward = reward_of()
    q1, q2 = pair("q1", "first?", "Big Ben"), pair("q2", "second?", "Eiffel Tower")
    first = reward([q1, q2], [["p1", "p2", "p1", "p2"], ["p2", "p2", None, "p1"]])
    assert first == [[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    assert len(first_words.calls) == 1  # one batched read per step, each distinct pair once
    assert sorted((q, c[0]) for q, c in first_words.calls[0]) == sorted(
        [("first?", PAGES["p1"]), ("first?", PAGES["p2"]), ("second?", PAGES["p2"]), ("second?", PAGES["p1"])])
    assert reward([q2, q1], [["p1"], ["p2", "p1"]]) == [[1.0], [1.0, 0.0]]
    assert len(first_words.calls) == 1  # all cached: the reader is not called
    reward([q1, q2], [["p3", "p1"], ["p3"]])
    assert [sorted(q for q, _ in call) for call in first_words.calls[1:]] == [["first?", "second?"]]  # only p3's
    assert sorted(reward.cache) == sorted((q, p) for q in ("q1", "q2") for p in ("p1", "p2", "p3"))


def test_the_real_reader_reads_each_page_and_f1_uses_the_answer_normaliser(tiny_bert: Path) -> None:
    """A random tiny encoder through the real read_passages: whatever span it cuts out of a page, a gold answer
    that is that span in upper case behind an article and before a full stop scores 1, a foreign word 0."""
    reader, tokenizer = load_reader(ReaderConfig(model=str(tiny_bert), max_length=48), seed=0)
    texts = {"a": "Mercury planet closest sun year lasts eighty eight days",
             "b": "Java island Indonesia capital Jakarta people live",
             "c": "Violin bowed string instrument four strings tuned fifths"}
    question = "which planet is closest to the sun"
    spans = {page: read_passages(reader, tokenizer, [question], [[text]])[0][0] for page, text in texts.items()}
    assert all(span and normalize_answer(span) == span.lower() for span in spans.values()), spans
    reward = ReaderReward(reader, tokenizer, lambda q, pages: [[texts[p]] for p in pages])
    gold = f"The {spans['a'].upper()}."
    rewards = reward([pair("q", question, "xyzzy", gold)], [["a", "b", "c", "a"]])
    assert [len(row) for row in rewards] == [4]
    assert rewards[0][0] == rewards[0][3] == 1.0
    assert rewards[0][1:3] == [max(f1(spans[p], "xyzzy"), f1(spans[p], gold)) for p in "bc"]
    assert not reader.training and not any(p.requires_grad for p in reader.parameters())


def test_on_a_passage_index_the_reader_reads_the_pages_best_bm25_passages(tmp_path: Path) -> None:
    from lmlab.plugins.retrieve.command import run_index
    from lmlab.plugins.retrieve.options import IndexOptions

    long_page = " ".join(f"filler{k} words{k} here{k}" for k in range(6)) + " the comet returns every seventy years"
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "1", "title": "Long", "text": long_page},
                                                     {"id": "2", "title": "Short", "text": "comet tail"}])
    out = tmp_path / "index"
    run_index(IndexOptions(data=str(corpus), output_dir=out, retriever=["bm25"], passages=3))
    index = RetrievalIndex.load(out)
    passages = [p.text for p in index.passages.values() if p.page_id == "1"]
    assert len(passages) == 8  # 6 filler passages of 3 words, then "the comet returns", "every seventy years"
    contexts = PageContexts(index)
    read = contexts("when does the comet return", ["1", "2"])
    assert read[1] == ["comet tail"]
    assert len(read[0]) == READ_PASSAGES and read[0][0] == "the comet returns"
    assert read[0][1:] == passages[:READ_PASSAGES - 1]  # no other passage matches: page order
    shutil.rmtree(out / "bm25")
    info = json.loads((out / "index.json").read_text())
    del info["retrievers"]["bm25"]
    (out / "index.json").write_text(json.dumps(info))
    assert PageContexts(RetrievalIndex.load(out))("when does the comet return", ["1"]) == [passages[:READ_PASSAGES]]


def test_the_beam_estimator_weighs_the_decoded_titles_by_their_reader_rewards(
        model, first_words: FirstWords, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = [tuple(TITLES[0]), tuple(TITLES[6]), tuple(TITLES[8])]
    monkeypatch.setattr(beam, "constrained_beam_search", lambda lm, prompts, trie, **_: [
        [Hypothesis(t, -float(n)) for n, t in enumerate(decoded)] for _ in prompts])
    texts = {"0": "Paris is in France", "6": "Lyon is in France", "8": "France is a country"}
    page_of = {tuple(t): str(n) for n, t in enumerate(TITLES)}
    pairs = [pair("q1", "a city?", "Paris"), pair("q2", "a country?", "France")]
    task = ReinforceTask(pairs, TitleTrie.build([t + [EOS] for t in TITLES]), page_of, pad_id=PAD, eos_id=EOS,
                         num_beams=3, reward="reader", baseline="mean", ema=0.9, seed=0, estimator="beam",
                         reader=reward_of(lambda q, pages: [[texts[p]] for p in pages]))
    batch = task.collate([0, 1])
    loss, metrics = task.loss(TokenLogprobModel(model), batch, task.counts(batch))
    # first two words: "Paris is", "Lyon is", "France is": F1 2/3 for the gold word, 0 otherwise
    by_hand = [2 / 3, 0, 0, 0, 0, 2 / 3]
    assert float(metrics["reward"]) == pytest.approx(sum(by_hand) / 6)
    assert loss.requires_grad and len(first_words.calls) == 1 and len(first_words.calls[0]) == 6


def _answered(tmp_path: Path, name: str = "train.jsonl") -> Path:
    """Single-page queries, each answered by a word of its gold page."""
    answers = {"d1": "Hg", "d2": "88 Earth days", "d3": "Jakarta", "d4": "Sun Microsystems"}
    rows = [row for row in kilt_rows(QUERIES) if row["id"] in answers]
    for row in rows:
        row["output"][0]["answer"] = answers[row["id"]]
    return write_jsonl(tmp_path / name, rows)


def test_reward_reader_needs_a_reader_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = refused(capsys, "retrieve", "train", "--method", "reinforce", "--reward", "reader",
                  "--index", str(tmp_path / "nowhere"))
    assert "--reward reader scores each title by what an extractive reader answers from its page, and no " \
           "--reader-model names that reader." in err and "--reader-model FOLDER" in err
    assert "not a retrieval index" not in err  # refused before anything is read


def test_reward_reader_refuses_queries_without_answers_and_question_pairs(
        capsys: pytest.CaptureFixture, tmp_path: Path, built_index: Path, tiny_bert: Path) -> None:
    common = ["retrieve", "train", "--method", "reinforce", "--reward", "reader", "--reader-model", str(tiny_bert),
              "--index", str(built_index), "--model", "tiny-llama"]
    rows = kilt_rows(QUERIES[:2])
    del rows[1]["output"][0]["answer"]
    data = write_jsonl(tmp_path / "unanswered.jsonl", rows)
    err = refused(capsys, *common, "--data", str(data))
    assert f"{data.name}: --reward reader scores the reader's span against each query's gold answers, and 1 of " \
           "the 2 queries has none (first: 'd2')." in err and "or use --reward match" in err
    err = refused(capsys, *common, "--data", str(_answered(tmp_path)), "--questions", str(data))
    assert "--questions pairs have none" in err and "drop --questions" in err


def test_reinforce_with_the_reader_reward_trains_and_reports_it(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                 built_index: Path, tiny_bert: Path) -> None:
    from lmlab.cli.app import main

    index = Path(shutil.copytree(built_index, tmp_path / "index"))  # the run records its generator there
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["retrieve", "train", "--method", "reinforce", "--reward", "reader", "--reader-model", str(tiny_bert),
              "--index", str(index), "--data", str(_answered(tmp_path)), "--model", "tiny-llama", "--samples", "2",
              "--batch-size", "2", "--max-steps", "2", "-o", str(run), "--json"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert "the span reader" in err and "reads each title's page" in " ".join(err.split())
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["reward"] <= 1.0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "reward" in s] == [1, 2]
    assert json.loads((run / "config.json").read_text())["options"]["reader_model"] == str(tiny_bert.resolve())
