"""Multi-perspective retrieval (Re3val; Song et al. 2024): the candidates of several retrievers fused into one
ranking, by reciprocal rank fusion (Cormack et al. 2009) or a weighted sum of normalised scores, with equal weights,
the --weights given, or (--tune-weights DEV) those that rank a dev split best (core.retrieval.fusion.tune_weights)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.fusion import FUSIONS, fuse, tune_weights
from lmlab.core.retrieval.kilt import ROW_HINT, KiltQuery, load_kilt
from lmlab.core.retrieval.retrievers import Ranked, RetrievalIndex, Retriever


def default_members(index: RetrievalIndex, options: dict[str, Any]) -> list[str]:
    """Every retriever built into the index; generative only when a trained generator is known, reranked by
    contexts when it was trained with them (then in place of the plain one)."""
    members = []
    for name, settings in index.built.items():
        if name == "generative":
            if not (options.get("generator") or settings.get("generator")):
                continue
            if options.get("rerank_contexts") or settings.get("contexts"):
                name = "generative-rerank"
        members.append(name)
    return members


class FusedRetriever:
    """`members` fused with `weights` (in their order); `tuned`: how the weights were chosen, under --tune-weights."""

    def __init__(self, members: dict[str, Retriever], fusion: str, weights: list[float], rrf_k: float,
                 depth: int, tuned: dict[str, Any] | None = None) -> None:
        self.members, self.fusion, self.weights, self.rrf_k, self.depth = members, fusion, weights, rrf_k, depth
        self.tuned = tuned

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        per_member = [member.search(queries, max(k, self.depth)) for member in self.members.values()]
        fused = []
        for q in range(len(queries)):
            rankings = [[(r.id, r.score) for r in ranked[q]] for ranked in per_member]
            merged = fuse(rankings, self.fusion, self.weights, self.rrf_k)
            fused.append([Ranked(doc, score) for doc, score in merged[:k]])
        return fused

    def record(self) -> dict[str, Any]:
        """What `retrieve eval` writes about this fusion into results.json: each member's weight, and under
        --tune-weights how they were chosen."""
        return {"fusion": self.fusion, "weights": dict(zip(self.members, self.weights, strict=True)),
                **({"tuned": self.tuned} if self.tuned is not None else {})}


def tuned_fusion(members: dict[str, Retriever], fusion: str, rrf_k: float, depth: int, dev: Sequence[KiltQuery],
                 source: str) -> FusedRetriever:
    """The fusion of `members` with the weights that rank the `dev` queries best, each member searching them once at
    `depth` (source: where the queries came from, for the record and the log line)."""
    texts = [q.input for q in dev]
    found = [member.search(texts, depth) for member in members.values()]
    rankings = [[[(r.id, r.score) for r in ranked[q]] for ranked in found] for q in range(len(dev))]
    chosen = tune_weights(rankings, [q.evidence for q in dev], fusion, rrf_k)
    names = list(members)
    tuned = {"data": source, "queries": len(dev), "points": chosen.points, "step": chosen.step,
             "r_precision": chosen.r_precision, "recall@1": chosen.recall_at_1,
             "equal_weights_r_precision": chosen.equal,
             "alone_r_precision": dict(zip(names, chosen.alone, strict=True))}
    shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(names, chosen.weights, strict=True))
    alone = ", ".join(f"{name} alone {r:.3f}" for name, r in zip(names, chosen.alone, strict=True))
    log(f"fused ({fusion}): weights {shown}, chosen on the {len(dev)} queries of {escape(source)} from "
        f"{chosen.points} tried: R-precision {chosen.r_precision:.3f} there (equal weights {chosen.equal:.3f}, "
        f"{alone})")
    return FusedRetriever(members, fusion, list(chosen.weights), rrf_k, depth, tuned)


def dev_queries(path: str) -> list[KiltQuery]:
    """The KILT queries of --tune-weights; refused when none of them names its gold pages."""
    queries = load_kilt(path)
    if not any(q.evidence for q in queries):
        raise DataError("no query has provenance (output[].provenance[].wikipedia_id), so there is nothing to choose "
                        "the fused weights on", path=path,
                        hint=f"give --tune-weights a dev split whose outputs name their gold pages; {ROW_HINT}")
    return queries


def open_fused(index: RetrievalIndex, options: dict[str, Any]) -> FusedRetriever:
    names = list(options.get("fuse") or default_members(index, options))
    fusion = options.get("fusion", "rrf")
    if fusion not in FUSIONS:
        raise LmlabError(f"Unknown --fusion '{fusion}'.", hint=f"use one of: {', '.join(FUSIONS)}")
    if "fused" in names or len(names) < 2:
        raise LmlabError(f"fused needs two or more other retrievers, got: {', '.join(names) or 'none'}.",
                         hint="build more with `lmlab retrieve index`, or name them with --fuse bm25 --fuse dense")
    dev = options.get("tune_weights")
    if dev and options.get("weights"):
        raise LmlabError("--tune-weights chooses the fused weights itself, so --weights cannot be given with it.",
                         hint="drop --weights to tune them on the dev queries, or drop --tune-weights to fuse with "
                              "your weights")
    weights = list(options.get("weights") or [1.0] * len(names))
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise LmlabError(f"--weights must be non-negative numbers, not all 0; got {', '.join(map(str, weights))}.",
                         hint="e.g. --weights 1 --weights 0.5")
    if len(weights) != len(names):
        raise LmlabError(f"--weights gives {len(weights)} weights for {len(names)} fused retrievers "
                         f"({', '.join(names)}).", hint="give one --weights per --fuse, in the same order")
    queries = dev_queries(str(dev)) if dev else None  # a bad dev file is refused before any model loads
    members = {name: index.open(name, options) for name in names}
    rrf_k, depth = float(options.get("rrf_k", 60.0)), int(options.get("depth", 100))
    if queries is None:
        return FusedRetriever(members, fusion, weights, rrf_k, depth)
    return tuned_fusion(members, fusion, rrf_k, depth, queries, str(dev))
