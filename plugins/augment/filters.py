"""What happens to a parsed generation before it is kept: RADA's answer-in-context filter (the filter the
authors found useful), near-duplicate removal, and distinct-n, the diversity figure of the report."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from lmlab.plugins.augment.templates import option_letters

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def answer_span(answer: str, context: str) -> str | None:
    """The answer as it is written in the context (matched ignoring case and runs of whitespace), or None when
    the context does not contain it: an extractive answer must be a span of its context."""
    pattern = r"\s+".join(re.escape(w) for w in answer.split())
    found = re.search(pattern, context, re.IGNORECASE) if pattern else None
    return found.group(0) if found else None


def choice_answer(answer: str, question: str) -> str | None:
    """A multiple-choice answer normalised to its letter, or None when it is not one of the question's options."""
    letter = re.fullmatch(r"\(?([A-Ea-e])[.)]?(\s.*)?", answer.strip())
    if letter is None or letter.group(1).upper() not in option_letters(question):
        return None
    return letter.group(1).upper()


def shingles(text: str, n: int = 2) -> frozenset[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return frozenset([tuple(tokens)])
    return frozenset(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


class Deduper:
    """Near-duplicate removal: a row duplicates an earlier one (or a seed) when the Jaccard similarity of their
    word-bigram sets reaches `threshold` (1.0: only rows that are the same after lower-casing and dropping
    punctuation). An inverted index over bigrams means only rows sharing one are compared."""

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[tuple[str, ...]]] = []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def key(self, question: str, answer: str) -> frozenset[tuple[str, ...]]:
        return shingles(question) | {("\x00answer", *words(answer))}

    def duplicate(self, question: str, answer: str) -> bool:
        """Whether (question, answer) is a near-duplicate of a row already added."""
        mine = self.key(question, answer)
        seen: set[int] = set()
        for gram in mine:
            for row in self.index.get(gram, ()):
                if row in seen:
                    continue
                seen.add(row)
                other = self.sets[row]
                if len(mine & other) / len(mine | other) >= self.threshold:
                    return True
        return False

    def add(self, question: str, answer: str) -> None:
        mine = self.key(question, answer)
        for gram in mine:
            self.index[gram].append(len(self.sets))
        self.sets.append(mine)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of the texts; 0 for none."""
    grams = [tuple(t[i:i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(texts: list[str]) -> dict[str, float]:
    return {f"distinct_{n}": round(distinct_n(texts, n), 4) for n in (1, 2, 3)}
