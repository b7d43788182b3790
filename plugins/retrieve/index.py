"""`lmlab retrieve index`: the corpus and every retriever's files in one index folder, settings recorded."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from lmlab.core.files.records import example
from lmlab.core.kernel.console import log
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex, retriever_spec
from lmlab.plugins.retrieve.options import IndexOptions


def run_index(opts: IndexOptions) -> dict[str, Any]:
    names = list(dict.fromkeys(opts.retriever))
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    options = {**asdict(opts), "device": device, "dtype": dtype}
    for name in names:  # unknown names and bad options are refused before anything is read or written
        spec = retriever_spec(name)
        if spec.check is not None:
            spec.check(options)
    corpus = Corpus.load(opts.data or example("retrieve/corpus.jsonl"))
    started = time.perf_counter()
    index = RetrievalIndex.create(opts.output_dir, corpus)
    for name in names:
        settings = index.build(name, options)
        log(f"{name}: built in {settings['seconds']} s")
    return {"index": str(index.folder), "corpus": corpus.source, "documents": len(corpus),
            "built": {name: index.built[name] for name in names}, "retrievers": sorted(index.built),
            "seconds": round(time.perf_counter() - started, 2)}
