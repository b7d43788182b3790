"""`lmlab augment index`: embed external instances into a vector store folder, in chunks saved as they are
done, so an interrupted index resumes and re-indexing the same files adds only what is new."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmlab.core.files.records import example
from lmlab.core.kernel.console import Progress, log
from lmlab.core.retrieval.embeddings import Embedder
from lmlab.core.retrieval.vector_store import VectorStore, add_missing, open_store
from lmlab.plugins.augment.options import IndexOptions
from lmlab.plugins.augment.records import Instance, embed_text, load_instances


def add_instances(store: VectorStore, folder: Path, items: list[Instance], embedder: Embedder, *,
                  save_every: int) -> int:
    """Embed and add the items the store does not hold yet, saving after every `save_every`; returns how many."""
    todo = [item for item in items if item.id not in store.ids]
    with Progress("index", len(todo), line="{label}: {completed}/{total} rows embedded") as progress:
        return add_missing(store, folder, [item.as_row() for item in todo], [embed_text(item) for item in todo],
                           embedder, save_every=save_every, progress=progress.advance)


def run_index(opts: IndexOptions) -> dict[str, Any]:
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    files = [opts.data or str(example("augment/store.jsonl"))]
    items = load_instances(files)
    folder = Path(opts.output_dir)
    store = open_store(folder, opts.embedder, opts.index_kind, opts.nlist)
    before = len(store)
    started = time.perf_counter()
    added = 0
    if any(item.id not in store.ids for item in items):  # the model loads only when there is something to embed
        added = add_instances(store, folder, items, Embedder(opts.embedder, batch_size=opts.batch_size,
                                                                  device=device, dtype=dtype),
                              save_every=opts.save_every)
    seconds = time.perf_counter() - started
    if not added:
        log(f"{folder}: already holds all {len(items)} rows")
    return {"store": str(folder), "files": files, "rows_read": len(items), "added": added, "already_there": before,
            "total": len(store), "embedder": store.info.embedder, "dim": store.info.dim, "index": store.info.index,
            "seconds": round(seconds, 2)}
