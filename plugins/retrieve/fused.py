"""Multi-perspective retrieval (Re3val; Song et al. 2024): the candidates of several retrievers fused into one
ranking, by reciprocal rank fusion (Cormack et al. 2009) or a weighted sum of normalised scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.fusion import reciprocal_rank_fusion, weighted_sum_fusion
from lmlab.core.retrieval.retrievers import Ranked, RetrievalIndex, Retriever

FUSIONS = ("rrf", "weighted")


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
    def __init__(self, members: dict[str, Retriever], fusion: str, weights: list[float], rrf_k: float,
                 depth: int) -> None:
        self.members, self.fusion, self.weights, self.rrf_k, self.depth = members, fusion, weights, rrf_k, depth

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        per_member = [member.search(queries, max(k, self.depth)) for member in self.members.values()]
        fused = []
        for q in range(len(queries)):
            rankings = [[(r.id, r.score) for r in ranked[q]] for ranked in per_member]
            if self.fusion == "rrf":
                merged = reciprocal_rank_fusion(rankings, k=self.rrf_k, weights=self.weights)
            else:
                merged = weighted_sum_fusion(rankings, weights=self.weights)
            fused.append([Ranked(doc, score) for doc, score in merged[:k]])
        return fused


def open_fused(index: RetrievalIndex, options: dict[str, Any]) -> FusedRetriever:
    names = list(options.get("fuse") or default_members(index, options))
    fusion = options.get("fusion", "rrf")
    if fusion not in FUSIONS:
        raise LmlabError(f"Unknown --fusion '{fusion}'.", hint=f"use one of: {', '.join(FUSIONS)}")
    if "fused" in names or len(names) < 2:
        raise LmlabError(f"fused needs two or more other retrievers, got: {', '.join(names) or 'none'}.",
                         hint="build more with `lmlab retrieve index`, or name them with --fuse bm25 --fuse dense")
    weights = list(options.get("weights") or [1.0] * len(names))
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise LmlabError(f"--weights must be non-negative numbers, not all 0; got {', '.join(map(str, weights))}.",
                         hint="e.g. --weights 1 --weights 0.5")
    if len(weights) != len(names):
        raise LmlabError(f"--weights gives {len(weights)} weights for {len(names)} fused retrievers "
                         f"({', '.join(names)}).", hint="give one --weights per --fuse, in the same order")
    members = {name: index.open(name, options) for name in names}
    return FusedRetriever(members, fusion, weights, float(options.get("rrf_k", 60.0)), int(options.get("depth", 100)))
