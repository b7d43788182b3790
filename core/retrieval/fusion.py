"""Fuse several retrievers' rankings (doc ids or (doc_id, score) pairs such as a `Ranked`, best first; a document
listed twice keeps its first place) by reciprocal rank fusion or a weighted sum of scores. Both return (doc_id, fused
score) best first, ties broken by the best place in any one ranking, then by id, so every run gives the same order."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Entry = str | tuple[str, float]
NORMALISATIONS = ("minmax", "zscore", "none")


def _first_places(ranking: Sequence[Entry]) -> dict[str, tuple[int, float | None]]:
    """doc id -> (1-based rank, score or None) of its first occurrence."""
    places: dict[str, tuple[int, float | None]] = {}
    for rank, entry in enumerate(ranking, start=1):
        doc, score = (entry, None) if isinstance(entry, str) else (entry[0], float(entry[1]))
        places.setdefault(doc, (rank, score))
    return places


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} rankings")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    return [float(w) for w in weights]


def _ordered(scores: dict[str, float], best_rank: dict[str, int]) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda item: (-item[1], best_rank[item[0]], item[0]))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Entry]], k: int = 60,
                           weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """Cormack, Clarke and Büttcher (SIGIR 2009): score(d) = Σ_r w_r / (k + rank_r(d)) over the rankings r that
    hold d, ranks 1-based, w_r = 1 unless `weights` say otherwise; scores in the inputs are ignored."""
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for weight, ranking in zip(_weights(weights, len(rankings)), rankings, strict=True):
        for doc, (rank, _) in _first_places(ranking).items():
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
            best_rank[doc] = min(rank, best_rank.get(doc, rank))
    return _ordered(scores, best_rank)


def _normalised(scores: list[float], normalise: str) -> list[float]:
    """minmax to [0, 1], zscore by the population std, "none" raw; under the first two, equal scores give 0 each."""
    if normalise == "none":
        return scores
    low, high = min(scores), max(scores)
    if low == high:
        return [0.0] * len(scores)
    if normalise == "minmax":
        return [(s - low) / (high - low) for s in scores]
    mean, std = statistics.fmean(scores), statistics.pstdev(scores)
    return [(s - mean) / std for s in scores]


def weighted_sum_fusion(rankings: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float] | None = None,
                        normalise: str = "minmax") -> list[tuple[str, float]]:
    """score(d) = Σ_r w_r · n_r(d), n_r the scores of ranking r normalised by `normalise` ("minmax", "zscore" or
    "none"). A document missing from ranking r gets r's lowest normalised score (0 under minmax): not
    retrieved is taken as no better than the worst retrieved, whatever the scale. An empty ranking adds 0."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    columns: list[tuple[float, dict[str, float], float]] = []
    best_rank: dict[str, int] = {}
    for weight, ranking in zip(_weights(weights, len(rankings)), rankings, strict=True):
        places = _first_places(ranking)
        if not places:
            continue
        raw = [score for _, score in places.values()]
        if not all(s is not None and math.isfinite(s) for s in raw):
            raise ValueError("weighted_sum_fusion needs (doc_id, finite score) pairs, got a bare id or a NaN/inf")
        normalised = dict(zip(places, _normalised(raw, normalise), strict=True))
        columns.append((weight, normalised, min(normalised.values())))
        for doc, (rank, _) in places.items():
            best_rank[doc] = min(rank, best_rank.get(doc, rank))
    scores = {doc: math.fsum(w * column.get(doc, floor) for w, column, floor in columns) for doc in best_rank}
    return _ordered(scores, best_rank)
