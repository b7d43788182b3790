"""The dense retriever: documents embedded once into the core vector store, queries at search time, matched by cosine
similarity (Karpukhin et al. 2020's bi-encoder setting with an off-the-shelf sentence encoder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.core.kernel.console import Progress
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER, Embedder
from lmlab.core.retrieval.retrievers import Corpus, Ranked, RetrievalIndex, placement
from lmlab.core.retrieval.vector_store import INDEX_KINDS, VectorStore, add_missing, open_store

if TYPE_CHECKING:
    import torch


def document_text(title: str, text: str) -> str:
    return f"{title}: {text}"


def check(options: dict[str, Any]) -> None:
    kind = options.get("index_kind", "flat")
    if kind not in INDEX_KINDS:
        raise LmlabError(f"Unknown --index-kind '{kind}'.", hint=f"use one of: {', '.join(INDEX_KINDS)}")


def build(corpus: Corpus, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Embed the documents the store in `folder` does not hold yet (an interrupted build resumes)."""
    embedder_name = options.get("embedder", DEFAULT_EMBEDDER)
    store = open_store(folder, embedder_name, options.get("index_kind", "flat"))
    if any(d.id not in store.ids for d in corpus.documents):  # the model loads only when there is work
        device, dtype = placement(options)
        embedder = Embedder(embedder_name, batch_size=int(options.get("batch_size", 32)), device=device, dtype=dtype)
        todo = [d for d in corpus.documents if d.id not in store.ids]
        with Progress("dense", len(todo), line="{label}: {completed}/{total} documents embedded") as progress:
            add_missing(store, folder, [{"id": d.id} for d in todo], [document_text(d.title, d.text) for d in todo],
                        embedder, save_every=4096, progress=progress.advance)
    return {"embedder": store.info.embedder, "dim": store.info.dim, "index": store.info.index}


class DenseRetriever:
    def __init__(self, index: RetrievalIndex, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.store = VectorStore.load(index.folder / "dense")
        self.embedder = Embedder(self.store.info.embedder, batch_size=batch_size, device=device, dtype=dtype)

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        hits = self.store.search(self.embedder.encode(list(queries)), k)
        return [[Ranked(str(hit.item["id"]), hit.score) for hit in row] for row in hits]


def open_dense(index: RetrievalIndex, options: dict[str, Any]) -> DenseRetriever:
    device, dtype = placement(options)
    return DenseRetriever(index, int(options.get("batch_size", 32)), device, dtype)
