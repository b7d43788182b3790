"""Passages (`lmlab retrieve index --passages WORDS`): KILT spans that map back to the page text, passage hits with
their provenance from `retrieve search`, page-level rankings from `RetrievalIndex.open`, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli.app import main
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.passages import Passage, paragraphs, split_passages
from lmlab.core.retrieval.retrievers import Corpus, Document, RetrievalIndex
from tests.conftest import refused, write_jsonl

PAGES = [
    ("1", "Harbour", "The old harbour was built in stone by fishermen.\n\nIts lighthouse  guides ships at night\n"
                     "  and its cranes unload grain, timber and coal from the barges every morning."),
    ("2", "Orchard", "Apple trees."),
    ("3", "Empty page", ""),
    ("4", "Ferry", "A ferry crosses the bay\nevery hour; the ferry carries cars,\n\n\nbicycles and people."),
]
# one page with many passages about ferries, another with one: the best two passages are both the first page's
FERRIES = [("10", "Ferries", " ".join(["ferry boats sail"] * 12)), ("11", "Bay", "a ferry once sank in the bay")]


def lmlab(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0


def corpus_file(folder: Path, pages: list[tuple[str, str, str]]) -> Path:
    return write_jsonl(folder / "pages.jsonl", [{"id": i, "title": t, "text": x} for i, t, x in pages])


def span_words(page_text: str, passage: Passage) -> list[str]:
    """The page's words inside the passage's KILT span, read from the page text itself."""
    lines = paragraphs(page_text)
    words = []
    for number in range(passage.start_paragraph_id, passage.end_paragraph_id + 1):
        line = lines[number] if lines else ""
        start = passage.start_character if number == passage.start_paragraph_id else 0
        end = passage.end_character if number == passage.end_paragraph_id else len(line)
        words += line[start:end].split()
    return words


@pytest.mark.parametrize("words", [1, 3, 5, 100])
def test_every_span_maps_back_to_the_page_text_and_the_windows_cover_each_page(words: int) -> None:
    corpus = Corpus([Document(*page) for page in PAGES])
    passages = split_passages(corpus, words)
    for page in corpus.documents:
        own = [p for p in passages if p.page_id == page.id]
        assert [p.id for p in own] == [f"{page.id}-{n}" for n in range(len(own))]
        for passage in own:
            assert passage.title == page.title and passage.text == " ".join(span_words(page.text, passage))
            assert 0 < len(passage.text.split()) <= words or not page.text
        assert all(len(p.text.split()) == words for p in own[:-1])  # only the last window is shorter
        assert " ".join(p.text for p in own) == " ".join(page.text.split())  # no word lost, none repeated
    if words > 2:  # a page shorter than one window is one passage
        assert [p.text for p in passages if p.page_id == "2"] == ["Apple trees."]
    assert [(p.text, p.provenance()) for p in passages if p.page_id == "3"] == [  # no words: one empty passage
        ("", {"wikipedia_id": "3", "title": "Empty page", "start_paragraph_id": 0, "end_paragraph_id": 0,
              "start_character": 0, "end_character": 0})]


def test_a_window_that_crosses_paragraphs_records_both_ends() -> None:
    passages = split_passages(Corpus([Document(*PAGES[3])]), 4)
    assert passages[1].text == "bay every hour; the"
    assert passages[1].provenance() == {"wikipedia_id": "4", "title": "Ferry", "start_paragraph_id": 0,
                                        "end_paragraph_id": 1, "start_character": 20, "end_character": 15}
    assert passages[2].start_paragraph_id == 1 and passages[2].end_paragraph_id == 2  # the blank lines skipped
    with pytest.raises(ValueError, match="at least one word"):
        split_passages(Corpus([Document(*PAGES[3])]), 0)


def test_search_json_gives_each_passage_hit_its_kilt_provenance(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    index = tmp_path / "index"
    lmlab(["retrieve", "index", "--data", str(corpus_file(tmp_path, PAGES)), "-o", str(index), "-r", "bm25",
           "--passages", "5", "--quiet"])
    info = json.loads((index / "index.json").read_text())
    saved = [json.loads(line) for line in (index / "passages.jsonl").read_text().splitlines()]
    assert info["passages"] == 5 and [p["id"] for p in saved] == [p.id for p in split_passages(
        Corpus([Document(*page) for page in PAGES]), 5)]
    lmlab(["retrieve", "search", "--index", str(index), "-r", "bm25", "--query", "lighthouse guides ships",
           "--top-k", "2", "--json", "--quiet"])
    hits = json.loads(capsys.readouterr().out)["results"][0]["results"]
    assert hits[0]["id"] == "1-2" and hits[0]["title"] == "Harbour"
    assert hits[0]["text"] == "lighthouse guides ships at night"  # the page's double space made single
    assert hits[0]["provenance"] == {"wikipedia_id": "1", "title": "Harbour", "start_paragraph_id": 1,
                                     "end_paragraph_id": 1, "start_character": 4, "end_character": 37}
    lmlab(["retrieve", "search", "--index", str(index), "-r", "bm25", "--query", "lighthouse guides ships",
           "--top-k", "1", "--format", "tsv"])
    columns = capsys.readouterr().out.rstrip("\n").split("\t")
    assert columns[:3] == ["q1", "1", "1-2"] and columns[4:] == ["Harbour", "1:4-1:37",
                                                                 "lighthouse guides ships at night"]


def test_open_ranks_pages_without_duplicates_searching_deeper_than_k_passages(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    lmlab(["retrieve", "index", "--data", str(corpus_file(tmp_path, FERRIES)), "-o", str(folder), "-r", "bm25",
           "--passages", "3", "--quiet"])
    index = RetrievalIndex.load(folder)
    passages = index.open_passages("bm25", {}).search(["ferry"], 2)[0]
    assert [index.passages[hit.id].page_id for hit in passages] == ["10", "10"]
    pages = index.open("bm25", {}).search(["ferry", "ferry boats", "zyzzyva"], 5)
    assert [[hit.id for hit in hits] for hits in pages] == [["10", "11"], ["10", "11"], []]
    best = {h.id: h.score for h in index.open_passages("bm25", {}).search(["ferry boats"], 20)[0]}
    assert pages[1][0].score == max(best.values())  # a page scores as its best passage
    assert index.open("bm25", {}).search(["ferry"], 1)[0][0].id == "10"


def test_a_page_index_and_a_generative_build_stay_page_level(tmp_path: Path) -> None:
    pages = Corpus([Document(*page) for page in PAGES], source="pages")
    index = RetrievalIndex.create(tmp_path / "pages", pages)
    assert index.passages == {} and not index.passage_level("bm25") and index.indexed("bm25") is pages
    with pytest.raises(LmlabError, match="indexes whole pages, not passages"):
        index.open_passages("bm25", {})
    cut = RetrievalIndex.create(tmp_path / "cut", pages, passages=4)
    assert cut.indexed("generative") is pages and cut.indexed("bm25").documents[0].id == "1-0"
    with pytest.raises(LmlabError, match="'generative' ranks the pages"):
        cut.open_passages("generative", {})


def test_another_passage_size_on_the_same_index_exits_2_with_a_hint(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    data, index = str(corpus_file(tmp_path, PAGES)), str(tmp_path / "index")
    lmlab(["retrieve", "index", "--data", data, "-o", index, "-r", "bm25", "--passages", "5", "--quiet"])
    err = refused(capsys, "retrieve", "index", "--data", data, "-o", index, "-r", "bm25", "--passages", "100")
    assert "already indexes this corpus in passages of 5 words, not in passages of 100 words" in err
    assert "pass --passages 5" in err
    err = refused(capsys, "retrieve", "index", "--data", data, "-o", index, "-r", "bm25")
    assert "in passages of 5 words, not as whole pages" in err
    assert "--passages" in refused(capsys, "retrieve", "index", "--data", data, "-o", index, "--passages", "-1")
