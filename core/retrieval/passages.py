"""Pages cut into passages of a fixed number of words (DPR's and KILT's 100-word windows), each with its KILT span:
the paragraphs it starts and ends in and the character offsets within them, so that a hit points into its page."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmlab.core.retrieval.retrievers import Corpus

WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Passage:
    """`words` consecutive words of one page. Paragraph ids index the page's paragraphs (`paragraphs(text)`);
    `start_character` is an offset within the start paragraph, `end_character` an exclusive offset within the end
    paragraph; `text` is the span's words joined by single spaces."""

    id: str
    page_id: str
    title: str
    text: str
    start_paragraph_id: int
    end_paragraph_id: int
    start_character: int
    end_character: int

    def provenance(self) -> dict[str, Any]:
        """The passage as a KILT provenance entry."""
        return {"wikipedia_id": self.page_id, "title": self.title, "start_paragraph_id": self.start_paragraph_id,
                "end_paragraph_id": self.end_paragraph_id, "start_character": self.start_character,
                "end_character": self.end_character}


def paragraphs(text: str) -> list[str]:
    """A page's paragraphs: the lines of its text that hold a word."""
    return [line for line in text.split("\n") if line.strip()]


def _words(text: str) -> Iterator[tuple[int, int, int, str]]:
    """(paragraph id, start, end, word) of every word of a page, in order."""
    for paragraph_id, paragraph in enumerate(paragraphs(text)):
        for match in WORD.finditer(paragraph):
            yield paragraph_id, match.start(), match.end(), match.group()


def split_passages(corpus: Corpus, words: int) -> list[Passage]:
    """Every page of `corpus` cut into windows of `words` words, ids `<page id>-<n>`; windows do not cross pages and
    a page's last one may be shorter. A page without words gives one empty passage, so its title is still indexed."""
    if words < 1:
        raise ValueError(f"a passage needs at least one word, not {words}")
    passages = []
    for page in corpus.documents:
        found = list(_words(page.text))
        windows = [found[start:start + words] for start in range(0, len(found), words)] or [[(0, 0, 0, "")]]
        for n, window in enumerate(windows):
            (first, start, _, _), (last, _, end, _) = window[0], window[-1]
            passages.append(Passage(f"{page.id}-{n}", page.id, page.title, " ".join(w for *_, w in window),
                                    first, last, start, end))
    return passages


def passages_of_pages(passages: Iterable[Passage]) -> dict[str, list[Passage]]:
    """Each page's passages, in page order, by page id."""
    of_page: dict[str, list[Passage]] = {}
    for passage in passages:
        of_page.setdefault(passage.page_id, []).append(passage)
    return of_page


def answer_passages(answers: Sequence[str], passages: Sequence[Passage]) -> list[Passage]:
    """The passages of a gold page that hold one of the answers as whole words after SQuAD normalisation, else its
    first passage (a page's lead, where an answer most often stands): the gold contexts of a KILT query."""
    from lmlab.core.evaluation.answers import normalize_answer

    wanted = [normalize_answer(a) for a in answers if normalize_answer(a)]
    holding = [p for p in passages if any(f" {a} " in f" {normalize_answer(p.text)} " for a in wanted)]
    return holding or list(passages[:1])
