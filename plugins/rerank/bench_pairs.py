"""What `lmlab bench rerank` scores and with what (docs/benchmarks.md#bench-rerank): the (query, page) pairs of
`bench retrieve`'s synthetic corpus and BM25, and the cross-encoder folders, trained (`--model`) or untrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.core.bench.synthetic_kilt import bench_corpus
from lmlab.core.bench.worker import worker_device
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.rerankers import RERANKER_FILE, context_of
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex

ENCODER = "all-minilm-l6-v2"
BM25 = {"bm25_method": "robertson", "k1": 1.5, "b": 0.75, "stem": True}


def reranker_folder(path: str) -> Path:
    """A trained reranker's model folder: `path` (a `retrieve train-reranker` run) or its model/."""
    from lmlab.plugins.rerank.bayes import KIND, read_info

    for candidate in (Path(path), Path(path) / "model"):
        if (candidate / RERANKER_FILE).is_file():
            if read_info(candidate).get("kind") != KIND:
                raise LmlabError(f"{candidate} holds a '{read_info(candidate).get('kind')}' reranker, not a {KIND}.",
                                 hint="give a `lmlab retrieve train-reranker` run folder")
            return candidate
    raise LmlabError(f"--model {path}: no {RERANKER_FILE} there or in its model/ folder.",
                     hint="give a `lmlab retrieve train-reranker` run folder (or leave --model out for an untrained "
                          "model)")


def member_folders(folder: Path | None, scratch: Path, members: int) -> list[str]:
    """The member folders of a trained `folder`, else `members` untrained cross-encoders (the packaged MiniLM, a new
    head from seeds 0..members-1) saved under `scratch`."""
    from lmlab.plugins.rerank.bayes import load_cross_encoder, read_info, save_member

    if folder is not None:
        return [str(folder / name) for name in read_info(folder)["members"]]
    log(f"bench rerank: saving {members} untrained {ENCODER} cross-encoder(s) (seeds 0..{members - 1})…")
    for seed in range(members):
        save_member(scratch / f"member-{seed}", *load_cross_encoder(ENCODER, seed=seed))
    return [str(scratch / f"member-{seed}") for seed in range(members)]


def build_pairs(folder: Path, documents: int, queries: int, seed: int, depth: int) -> tuple[list[Any], float]:
    """The bench corpus indexed with BM25 in `folder` as `retrieve index` builds it, then each query × its top
    `depth` pages as (query, "title. text"): (pairs per query, the index's build seconds)."""
    docs, asked = bench_corpus(documents, queries, seed)
    log(f"bench rerank: building the bm25 index of {len(docs)} pages…")
    index = RetrievalIndex.create(folder, Corpus(docs, source=f"bench_corpus({len(docs)} pages)"))
    built = index.build("bm25", BM25)
    by_id = {d.id: d for d in docs}
    found = index.open("bm25", {}).search([q.input for q in asked], depth)
    grouped = [[(q.input, context_of(by_id[h.id])) for h in hits] for q, hits in zip(asked, found, strict=True)]
    if not any(grouped):
        raise LmlabError("BM25 found no page for any query.", hint="use more --documents or --queries")
    return grouped, built["seconds"]


def prepare_inputs(opts: Any, settings: dict[str, Any], scratch: Path, members: int) -> dict[str, Any]:
    """In the parent: the index, the pairs and `members` member folders (or the trained folder's) in `scratch`, what
    they are into the report's settings; returns where they are, for the workers."""
    grouped, index_seconds = build_pairs(scratch / "index", opts.documents, opts.queries, opts.seed, opts.depth)
    (scratch / "pairs.json").write_text(json.dumps(grouped), encoding="utf-8")
    folders = member_folders(Path(settings["reranker"]) if settings["trained"] else None, scratch / "untrained",
                             members)
    pairs = sum(map(len, grouped))
    settings.update({"pairs": pairs, "queries_with_fewer_than_depth_pairs": sum(len(g) < opts.depth for g in grouped),
                     "bm25": {**BM25, "index_seconds": index_seconds}, "bayes_pairs": min(opts.bayes_pairs, pairs)
                     or pairs, "explain_pairs": min(opts.explain_pairs, pairs)})
    return {"index": str(scratch / "index"), "pairs_file": str(scratch / "pairs.json"), "member_folders": folders}


def read_groups(settings: dict[str, Any]) -> list[list[tuple[str, str]]]:
    """In a worker: the pairs of each query, as the parent wrote them (too long for a worker's command line)."""
    return [[(q, c) for q, c in group] for group in json.loads(Path(settings["pairs_file"]).read_text("utf-8"))]


def read_pairs(settings: dict[str, Any]) -> list[tuple[str, str]]:
    return [pair for group in read_groups(settings) for pair in group]


def load_scorer(folder: str, settings: dict[str, Any]) -> Any:
    """In a worker: an fp32 `PairScorer` over one member folder on the worker's device, at the bench's sizes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lmlab.plugins.rerank.bayes import PairScorer

    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).float().eval()
    return PairScorer(model.to(worker_device(settings)), AutoTokenizer.from_pretrained(folder, local_files_only=True),
                      max_length=settings["max_length"], batch_size=settings["batch_size"])
