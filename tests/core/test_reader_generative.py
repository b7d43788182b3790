"""The generative reader: passages best-ranked first and the question in its prompt, greedy, one line per answer,
through a recording backend and through the real hf backend on the offline tiny-llama."""

from __future__ import annotations

from collections.abc import Sequence

from lmlab.core.evaluation.backends import BackendOptions, GenerateRequest, load_backend
from lmlab.core.retrieval.reader import PASSAGE_CHARS, generate_answers, reader_prompt, vote_answers

PASSAGES = [("Eiffel Tower", "The tower  was completed\nin 1889."), ("Paris", "Paris is the capital of France.")]


class Recording:
    identity = "recording"

    def __init__(self) -> None:
        self.requests: list[GenerateRequest] = []

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        self.requests += requests
        return [[" 1889 "] for _ in requests]


def test_the_prompt_lists_passages_in_rank_order_then_the_question() -> None:
    prompt = reader_prompt("When was  the tower completed?", PASSAGES)
    lines = prompt.splitlines()
    assert lines[1] == "Passage 1: Eiffel Tower: The tower was completed in 1889."
    assert lines[2] == "Passage 2: Paris: Paris is the capital of France."
    assert lines[-2:] == ["Question: When was the tower completed?", "Answer:"]


def test_a_long_passage_is_cut_so_the_best_ranked_ones_stay_whole() -> None:
    long = ("Long page", "word " * PASSAGE_CHARS)
    lines = reader_prompt("q?", [PASSAGES[0], long, PASSAGES[1]]).splitlines()
    assert lines[1] == "Passage 1: Eiffel Tower: The tower was completed in 1889."
    assert lines[2] == f"Passage 2: Long page: {('word ' * PASSAGE_CHARS)[:PASSAGE_CHARS]}"
    assert lines[3].startswith("Passage 3: Paris") and lines[-1] == "Answer:"


def test_answers_are_greedy_one_line_and_stripped() -> None:
    backend = Recording()
    assert generate_answers(backend, ["q1", "q2"], [PASSAGES, []], max_tokens=8) == ["1889", "1889"]
    first, second = backend.requests
    assert first.temperature == 0 and first.stop == ("\n",) and first.max_tokens == 8
    assert first.prompt == reader_prompt("q1", PASSAGES) and "Passage" not in second.prompt


def test_the_hf_backend_answers_each_question_in_one_line() -> None:
    backend = load_backend("hf", BackendOptions(model="tiny-llama", device="cpu"))
    answers = generate_answers(backend, ["When was the tower completed?", "Capital?"], [PASSAGES, PASSAGES[1:]],
                               max_tokens=6)
    assert len(answers) == 2 and all("\n" not in a for a in answers)


class PerPassage:
    """Answers from the one passage in its prompt: what follows 'answer is' in it."""

    identity = "per-passage"

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        return [[r.prompt.split("answer is ")[1].split(".")[0] if "answer is " in r.prompt else ""] for r in requests]


def test_the_vote_keeps_the_answer_whose_passages_are_most_confidently_relevant() -> None:
    passages = [("A", "The answer is Lyon."), ("B", "The answer is Paris."), ("C", "The answer is the  paris."),
                ("D", "Nothing here.")]
    # Lyon is ranked first but alone (0.5); two passages say Paris once normalised (0.3 + 0.3)
    assert vote_answers(PerPassage(), ["q"], [passages], [[0.5, 0.3, 0.3, 0.9]]) == [("Paris", 1)]
    assert vote_answers(PerPassage(), ["q"], [passages], [[0.7, 0.3, 0.3, 0.9]]) == [("Lyon", 0)]
    # a tie goes to the best-ranked passage; a question whose passages give no answer gets "" from its first
    assert vote_answers(PerPassage(), ["q", "r"], [passages[:2], passages[3:]], [[0.4, 0.4], [1.0]]) == [
        ("Lyon", 0), ("", 0)]
