"""SQuAD v1.1 EM/F1: hand-computed cases, and agreement with the official script's own functions."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from lmlab.core.evaluation.answers import best_over_golds, exact_match, f1, normalize_answer, squad_scores


def _official_normalize(s):
    """evaluate-v1.1.py, verbatim but for names."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


@pytest.mark.parametrize(("text", "normal"), [
    ("The  Quick, Brown fox!", "quick brown fox"),
    ("An apple a day", "apple day"),
    ("theatre in Athens", "theatre in athens"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("don't\tstop\n", "dont stop"),
    ("the", ""),
    ("", ""),
])
def test_normalize_lowercases_and_removes_punctuation_articles_and_extra_space(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_after_normalisation() -> None:
    assert exact_match("Paris", "paris.") == 1.0
    assert exact_match("the Eiffel Tower", "Eiffel tower") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("1889", "1899") == 0.0


def test_f1_partial_overlap_values_by_hand() -> None:
    # pred "cat sat on mat" vs gold "cat on mat": 3 common, P = 3/4, R = 1 → F1 = 2·(3/4)/(7/4) = 6/7
    assert f1("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    # bags: pred {x:2, y:1}, gold {x:1, y:2} → common 2, P = R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)
    # "1889 by" vs "1889": P = 1/2, R = 1 → 2/3
    assert f1("1889 by", "1889") == pytest.approx(2 / 3)
    assert f1("Lyon", "Paris") == 0.0
    assert f1("PARIS!", "paris") == 1.0


def test_empty_answers_follow_v1_1() -> None:
    assert exact_match("", "") == 1.0
    assert f1("", "") == 0.0  # v1.1 returns 0 when no token is shared, even for two empty answers
    assert exact_match("the", "a") == 1.0 and f1("the", "a") == 0.0  # both normalise to nothing
    assert exact_match("", "Paris") == 0.0 and f1("", "Paris") == 0.0
    assert f1("Paris", "") == 0.0


def test_best_over_several_golds() -> None:
    assert best_over_golds(f1, "Paris France", ["France", "Paris, France"]) == 1.0
    assert best_over_golds(f1, "in Paris", ["Paris", "Lyon"]) == pytest.approx(2 / 3)
    assert best_over_golds(exact_match, "Paris", ["Lyon", "paris!"]) == 1.0


def test_corpus_scores_are_percent_means() -> None:
    scores = squad_scores(["Paris", "1889 by", "Lyon"], [["Paris"], ["1889"], ["Berlin", "Bonn"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        squad_scores(["Paris"], [])


@pytest.mark.parametrize(("prediction", "gold"), [
    ("The Eiffel Tower, Paris", "eiffel tower"), ("a a a b", "a b b"), ("Mr. Smith's dog", "smiths dog"),
    ("  ", "the an a"), ("in 1889 (completed)", "1889"), ("Café au lait", "café"), ("x-ray", "xray"),
])
def test_same_as_the_official_script(prediction: str, gold: str) -> None:
    assert normalize_answer(prediction) == _official_normalize(prediction)
    assert f1(prediction, gold) == pytest.approx(_official_f1(prediction, gold))
    assert exact_match(prediction, gold) == float(_official_normalize(prediction) == _official_normalize(gold))
