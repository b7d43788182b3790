"""Exact match and F1 as the official SQuAD v1.1 evaluation script defines them (evaluate-v1.1.py, Rajpurkar
et al. 2016), the measure RADA reports for its QA readers: answers are compared after lower-casing, removing
punctuation and the articles a/an/the, and collapsing whitespace; F1 is over the bag of remaining tokens; a
prediction scores its best match among the gold answers. As in v1.1 (unlike v2.0), two answers that both
normalise to nothing have EM 1 but F1 0: with no common token the script returns 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """evaluate-v1.1.py's normalize_answer: lower, remove punctuation, remove articles, fix whitespace."""
    lowered = text.lower()
    no_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", no_punctuation).split())


def exact_match(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's exact_match_score: 1.0 when both normalise to the same string, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's f1_score: the harmonic mean of token precision and recall over the normalised bags
    of tokens (a token counts as often as it occurs in both); 0.0 when no token is shared."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """evaluate-v1.1.py's metric_max_over_ground_truths: the prediction's best score against any gold answer."""
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus EM and F1 in percent (100 × the mean over questions, as the script prints them)."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"need one prediction per question, got {len(predictions)} for {len(golds)}")
    em = sum(best_over_golds(exact_match, p, g) for p, g in zip(predictions, golds, strict=True))
    overlap = sum(best_over_golds(f1, p, g) for p, g in zip(predictions, golds, strict=True))
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * overlap / len(golds)}
