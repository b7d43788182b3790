"""Retrievers behind one interface (`RetrieverSpec`, registered through `register_retrievers`), the corpus they index
and the index folder they share: `index.json` (the corpus's source and each retriever's recorded settings),
`corpus.jsonl` (so that a search prints titles without the original file), `passages.jsonl` when the pages are cut
into passages (`lmlab retrieve index --passages WORDS`) and one sub-folder per retriever."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from lmlab.core.files.atomic import write_json_atomic, write_jsonl_atomic
from lmlab.core.files.records import Record, load_records
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.kernel.plugins import collect, not_registered
from lmlab.core.retrieval.passages import Passage, split_passages

if TYPE_CHECKING:
    import torch

DEFAULT_INDEX = Path("runs/retrieve-index")  # where `lmlab retrieve index` builds by default
INDEX_FILE = "index.json"
CORPUS_FILE = "corpus.jsonl"
PASSAGES_FILE = "passages.jsonl"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


class Ranked(NamedTuple):
    """One retrieved document: its id and the retriever's score (higher is better)."""

    id: str
    score: float


def _text_field(record: Record, name: str, *, allow_empty: bool = False) -> str:
    value = record.get(name, (str, int) if name == "id" else str)
    value = str(value).strip() if name != "text" else str(value)
    if not value and not allow_empty:
        raise DataError("is empty", path=record.path, line=record.line, field=name,
                        hint=f"give every document a non-empty '{name}'")
    return value


class Corpus:
    """Documents `{id, title, text}` with unique ids and unique titles (generative retrieval decodes a title, which
    must name one page). `passages=True`: the documents are passages, which share their page's title, so there is no
    `by_title`."""

    def __init__(self, documents: Sequence[Document], source: str = "", *, passages: bool = False) -> None:
        self.documents = list(documents)
        self.source = source
        self.by_id = {d.id: d for d in self.documents}
        if not passages:
            self.by_title = {d.title: d for d in self.documents}

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        """Read a corpus file (JSONL/JSON/CSV/Parquet/saved dataset); a bad row raises one DataError naming it."""
        records = load_records(str(path), required=("id", "title", "text"))
        documents: list[Document] = []
        ids: dict[str, Record] = {}
        titles: dict[str, Record] = {}
        for record in records:
            doc = Document(_text_field(record, "id"), _text_field(record, "title"),
                           _text_field(record, "text", allow_empty=True))
            for seen, key, field in ((ids, doc.id, "id"), (titles, doc.title, "title")):
                if key in seen:
                    first = seen[key]
                    raise DataError(f"'{key}' is also the {field} of the document at line {first.line}",
                                    path=record.path, line=record.line, field=field,
                                    hint=f"every document needs its own {field}")
                seen[key] = record
            documents.append(doc)
        return cls(documents, source=str(path))

    def __len__(self) -> int:
        return len(self.documents)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(json.dumps([doc.id, doc.title, doc.text], ensure_ascii=False).encode())
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        write_jsonl_atomic(path, (asdict(doc) for doc in self.documents))


def _passage_size(words: int) -> str:
    return f"in passages of {words} words" if words else "as whole pages"


class Retriever(Protocol):
    """What `open` returns: the best `k` documents for each query, best first."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        ...


@dataclass(frozen=True)
class RetrieverSpec:
    """A retriever kind. `build(corpus, folder, options)` writes its files once (`lmlab retrieve index`) and returns
    the settings to record (None: nothing to build, e.g. a fusion); `open(index, options)` returns a Retriever;
    `check(options)` refuses bad options before anything is built. `options`: the command's, as a dict.
    `passages`: on an index with passages it is built over them (`index.indexed(name)`) and its hits are passage ids
    (`RetrievalIndex.open` maps them to pages)."""

    name: str
    help: str
    open: Callable[[RetrievalIndex, dict[str, Any]], Retriever]
    build: Callable[[Corpus, Path, dict[str, Any]], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any]], None] | None = None
    passages: bool = False


def placement(options: dict[str, Any]) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a retriever's or reranker's model: those the command resolved from --device/--precision
    into `options`, else auto (the first CUDA GPU, in bf16 where it has it; else the CPU in fp32)."""
    from lmlab.core.commands.devices import inference_dtype, resolve_device

    device = resolve_device(options.get("device"))
    return device, options.get("dtype") or inference_dtype("auto", device)


def retrievers() -> dict[str, RetrieverSpec]:
    return collect("register_retrievers", "retrievers", key=lambda spec: spec.name)


def retriever_spec(name: str) -> RetrieverSpec:
    found = retrievers()
    if name not in found:
        raise not_registered("register_retrievers", name, f"Unknown retriever '{name}'.",
                             hint=f"available: {', '.join(sorted(found)) or 'none'}")
    return found[name]


class _Remembered:
    """A retriever that keeps its last answer: the same queries again at the same or a smaller k (a fusion of
    rankings just evaluated one by one) are answered from it, truncated, instead of searched twice."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.last: tuple[tuple[str, ...], int, list[list[Ranked]]] | None = None

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        key = tuple(queries)
        if self.last is not None and self.last[0] == key and k <= self.last[1]:
            return [ranked[:k] for ranked in self.last[2]]
        found = self.retriever.search(queries, k)
        self.last = (key, k, found)
        return found

    def __getattr__(self, name: str) -> Any:  # the wrapped retriever's own attributes (its model, settings, ...)
        return getattr(self.retriever, name)


class _PagesOfPassages:
    """A passage retriever answering with pages: a page scores as its best passage and ranks where that passage
    first appears. When the first k passages hold fewer than k pages it searches twice as deep, until they do or the
    passages run out."""

    def __init__(self, retriever: Retriever, passages: dict[str, Passage]) -> None:
        self.retriever, self.passages = retriever, passages

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        found: list[list[Ranked]] = [[] for _ in queries]
        todo, depth = list(range(len(queries))), k
        while todo:
            short = []
            for q, hits in zip(todo, self.retriever.search([queries[q] for q in todo], depth), strict=True):
                best: dict[str, float] = {}
                for hit in hits:
                    best.setdefault(self.passages[hit.id].page_id, hit.score)
                found[q] = [Ranked(page, score) for page, score in list(best.items())[:k]]
                if len(found[q]) < k and len(hits) == depth < len(self.passages):
                    short.append(q)
            todo, depth = short, min(2 * depth, len(self.passages))
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.retriever, name)


class RetrievalIndex:
    """An index folder: the corpus plus what each retriever built, as recorded in index.json.

    With passages (`info["passages"]` words each): `passages` maps passage ids to `Passage`s (their text and KILT
    span, `Passage.provenance()`), `passage_corpus` is them as documents; `open(name)` still ranks pages (page ids,
    for KILT's page-level metrics, fusion and rerankers), `open_passages(name)` ranks passages."""

    def __init__(self, folder: Path, corpus: Corpus, info: dict[str, Any], passages: Sequence[Passage] = ()) -> None:
        self.folder, self.corpus, self.info = folder, corpus, info
        self.passages = {p.id: p for p in passages}
        self.passage_corpus = Corpus([Document(p.id, p.title, p.text) for p in passages], source=corpus.source,
                                     passages=True)
        self._opened: dict[str, _Remembered] = {}
        self._opened_passages: dict[str, _Remembered] = {}

    @property
    def passage_words(self) -> int:
        """Words per passage; 0 when the index holds whole pages."""
        return int(self.info.get("passages", 0))

    @property
    def built(self) -> dict[str, dict[str, Any]]:
        """The retrievers built into this folder, with their recorded settings."""
        return self.info["retrievers"]

    @classmethod
    def load(cls, folder: str | Path) -> RetrievalIndex:
        folder = Path(folder)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise LmlabError(f"{folder} is not a retrieval index (no {INDEX_FILE}).",
                             hint=f"build it with `lmlab retrieve index -o {folder}` (the bundled corpus, or "
                                 "--data FILE)")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LmlabError(f"{path}: cannot read the index description ({exc}).",
                             hint="rebuild the index with `lmlab retrieve index`") from exc
        corpus = Corpus.load(folder / CORPUS_FILE)
        return cls(folder, corpus, info, _load_passages(folder / PASSAGES_FILE) if info.get("passages") else ())

    @classmethod
    def create(cls, folder: str | Path, corpus: Corpus, passages: int = 0) -> RetrievalIndex:
        """A new index of `corpus` in `folder` (its pages cut into passages of `passages` words when > 0), or the
        existing one when it indexes the same documents the same way (so that building a further retriever into it
        keeps the others)."""
        folder = Path(folder)
        if (folder / INDEX_FILE).is_file():
            existing = cls.load(folder)
            if existing.info.get("fingerprint") != corpus.fingerprint():
                raise LmlabError(f"{folder} already indexes another corpus ({existing.info.get('source')}).",
                                 hint="choose another --output-dir, or delete that folder")
            if existing.passage_words != passages:
                raise LmlabError(f"{folder} already indexes this corpus {_passage_size(existing.passage_words)}, "
                                 f"not {_passage_size(passages)}.",
                                 hint=f"pass --passages {existing.passage_words} to build into it, or choose another "
                                      "--output-dir")
            return existing
        folder.mkdir(parents=True, exist_ok=True)
        corpus.save(folder / CORPUS_FILE)
        info: dict[str, Any] = {"source": corpus.source, "documents": len(corpus),
                                "fingerprint": corpus.fingerprint(), "retrievers": {}}
        cut: list[Passage] = []
        if passages:
            cut = split_passages(corpus, passages)
            write_jsonl_atomic(folder / PASSAGES_FILE, (asdict(p) for p in cut))
            info["passages"] = passages
        index = cls(folder, corpus, info, cut)
        index.write_info()
        return index

    def write_info(self) -> None:
        write_json_atomic(self.folder / INDEX_FILE, self.info)

    def build(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Build retriever `name` into its sub-folder (replacing an earlier build) and record its settings."""
        spec = retriever_spec(name)
        if spec.build is None:
            raise LmlabError(f"The '{name}' retriever has nothing to build.", hint="it searches with the others")
        started = time.perf_counter()
        settings = spec.build(self.indexed(name), self.folder / name, options)
        self.built[name] = {**settings, "seconds": round(time.perf_counter() - started, 2)}
        self.write_info()
        return self.built[name]

    def passage_level(self, name: str) -> bool:
        """Whether retriever `name` indexes this index's passages (rather than its pages)."""
        return bool(self.passage_words) and retriever_spec(name).passages

    def indexed(self, name: str) -> Corpus:
        """What retriever `name` is built over: the passages when it is passage-level here, else the pages."""
        return self.passage_corpus if self.passage_level(name) else self.corpus

    def forget(self) -> None:
        """Drop the opened retrievers' last rankings, so the next search searches (a benchmark times each pass)."""
        for retriever in (*self._opened.values(), *self._opened_passages.values()):
            retriever.last = None

    def _spec(self, name: str) -> RetrieverSpec:
        spec = retriever_spec(name)
        if spec.build is not None and name not in self.built:
            raise LmlabError(f"{self.folder} has no '{name}' index.",
                             hint=f"build it with `lmlab retrieve index --retriever {name} -o {self.folder}`")
        return spec

    def open(self, name: str, options: dict[str, Any]) -> Retriever:
        """Retriever `name` ranking pages (hits are page ids, even when it indexes passages), loaded once per index
        object (a fusion and its members share the loaded models, and the members' last rankings; `options` are the
        command's, the same for every call)."""
        if name not in self._opened:
            spec = self._spec(name)
            if self.passage_level(name):
                retriever: Retriever = _PagesOfPassages(self.open_passages(name, options), self.passages)
            else:
                retriever = spec.open(self, options)
            self._opened[name] = _Remembered(retriever)
        return self._opened[name]

    def open_passages(self, name: str, options: dict[str, Any]) -> Retriever:
        """Retriever `name` ranking passages: hits are ids of `self.passages` (text, page and KILT span). Only for a
        passage-level retriever (`passage_level(name)`: bm25 and dense on an index built with --passages)."""
        if name not in self._opened_passages:
            spec = retriever_spec(name)
            if not self.passage_words:
                raise LmlabError(f"{self.folder} indexes whole pages, not passages.",
                                 hint="build a passage index with `lmlab retrieve index --passages 100 -o FOLDER`")
            if not spec.passages:
                raise LmlabError(f"'{name}' ranks the pages of {self.folder}, not its passages.",
                                 hint="rank passages with a passage-level retriever: bm25 or dense")
            self._opened_passages[name] = _Remembered(self._spec(name).open(self, options))
        return self._opened_passages[name]


def _load_passages(path: Path) -> list[Passage]:
    hint = "rebuild the index with `lmlab retrieve index --passages N` into a new folder"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc})", path=str(path), hint=hint) from exc
    passages = []
    for n, line in enumerate(lines, 1):
        try:
            passages.append(Passage(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise DataError(f"is not a passage ({exc})", path=str(path), line=n, hint=hint) from exc
    return passages
