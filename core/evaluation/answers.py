"""Answer scores as SQuAD's evaluate-v1.1.py computes them, which KILT's `eval_downstream.py` reuses: answers are
normalised (lower case, no punctuation, no articles, single spaces), then compared whole (EM) or as bags of tokens
(F1), each the best over the gold answers. `augment eval` and `retrieve answer` both score with these."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """evaluate-v1.1.py's normalize_answer: lower, remove punctuation, remove articles, fix whitespace."""
    no_punctuation = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", no_punctuation).split())


def exact_match(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's exact_match_score: 1.0 when both normalise to the same string, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's f1_score: harmonic mean of token precision and recall (a token counts as often as it
    occurs in both); 0.0 when no token is shared."""
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
