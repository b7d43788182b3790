"""Judges for argument items: each returns one score in [0, 1] per answer, the fraction of rubric points made.

`keywords` (the default) counts a point as made when any of its keywords appears in the answer as a whole
word or phrase (case-insensitive); any other `--judge` value is a judge model, asked per point whether the
argument makes it (yes/no), through `--judge-backend` and the run's request cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lmlab.core.evaluation.backends import GenerateRequest
from lmlab.core.evaluation.scoring import EvalContext, EvalItem
from lmlab.plugins.holism.data import ARGUMENT_TASK

KEYWORDS = "keywords"
# A base model often goes on to write the next prompt; only the argument itself is judged.
_NEXT_SECTION = re.compile(r"\n\s*(?:Background knowledge|Observation|Question|Argument|Answer)\s*:")
JUDGE_MAX_TOKENS = 4


def argument_text(text: str) -> str:
    """The generated argument up to the point where the model starts a new prompt section."""
    match = _NEXT_SECTION.search(text)
    return (text[:match.start()] if match else text).strip()


def _mentions(answer: str, keyword: str) -> bool:
    phrase = r"\s+".join(re.escape(word) for word in keyword.lower().split())
    return re.search(rf"(?<!\w){phrase}(?!\w)", answer) is not None


def keyword_score(rubric: Sequence[dict[str, Any]], text: str) -> float:
    """The fraction of rubric points with at least one keyword in `text`."""
    answer = argument_text(text).lower()
    made = sum(1 for point in rubric if any(_mentions(answer, k) for k in point["keywords"]))
    return made / len(rubric) if rubric else 0.0


def judge_prompt(item: EvalItem, text: str, point: str) -> str:
    situation = item.prompt.split(f"\n{ARGUMENT_TASK}", 1)[0]
    return (f"{situation}\n\nHere is an argument that tries to reconcile the observation with the background "
            f"knowledge.\nArgument: {argument_text(text)}\n\nDoes the argument make this point: {point} "
            "Answer yes or no.\nAnswer:")


def is_yes(answer: str) -> bool:
    words = re.findall(r"[a-z]+", answer.lower())
    return bool(words) and words[0] == "yes"


def judge(items: Sequence[EvalItem], texts: Sequence[str], ctx: EvalContext) -> list[float]:
    """Scores for the answers `texts` to the argument `items`, by the judge the options name."""
    spec = str(ctx.settings.options.get("judge") or KEYWORDS)
    if spec == KEYWORDS:
        return [keyword_score(item.rubric, text) for item, text in zip(items, texts, strict=True)]
    backend = ctx.backend_for(str(ctx.settings.options.get("judge_backend") or "hf"), spec)
    requests = [GenerateRequest(judge_prompt(item, text, point["point"]), JUDGE_MAX_TOKENS, stop=("\n",))
                for item, text in zip(items, texts, strict=True) for point in item.rubric]
    verdicts = iter(ctx.generate(backend, requests))
    scores = []
    for item in items:
        yes = sum(is_yes(next(verdicts)) for _ in item.rubric)
        scores.append(yes / len(item.rubric) if item.rubric else 0.0)
    return scores
