"""Fuse several retrievers' rankings (doc ids or (doc_id, score) pairs such as a `Ranked`, best first; a document
listed twice keeps its first place) by reciprocal rank fusion or a weighted sum of scores. Both return (doc_id, fused
score) best first, ties broken by the best place in any one ranking, then by id, so every run gives the same order.

A ranking of weight 0 is left out, its documents too, so one-hot weights give back that ranking's order (for the
weighted sum: when its scores fall as it goes, as a retriever's do). `tune_weights` relies on it: it chooses weights
on dev queries from a grid that holds every one-hot vector, so its choice never does worse there than the best
ranking alone."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lmlab.core.retrieval.kilt import Evidence, r_precision, recall_at_k

Entry = str | tuple[str, float]
NORMALISATIONS = ("minmax", "zscore", "none")
FUSIONS = ("rrf", "weighted")
#: The most weight vectors `tune_weights` tries: steps of 0.1 over 4 rankings.
MAX_GRID = 286
#: Its steps are 1/d, d the first of these whose grid fits in MAX_GRID.
DIVISIONS = (10, 5, 4, 2, 1)


@dataclass(frozen=True)
class _Column:
    """What one ranking adds to a fusion: each document's 1-based rank and term (the fused score is the weighted sum
    of the terms), and the term of a document it does not hold."""

    ranks: dict[str, int]
    terms: dict[str, float]
    floor: float


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


def _combine(columns: Sequence[_Column | None], weights: Sequence[float]) -> list[tuple[str, float]]:
    """score(d) = w_1·t_1(d) + w_2·t_2(d) + ..., added left to right over the columns of non-zero weight (None: an
    empty ranking, left out), best first; `_Dev.ranking` repeats exactly this arithmetic."""
    used = [(w, column) for w, column in zip(weights, columns, strict=True) if w != 0 and column is not None]
    best_rank: dict[str, int] = {}
    for _, column in used:
        for doc, rank in column.ranks.items():
            best_rank[doc] = min(rank, best_rank.get(doc, rank))
    scores = {}
    for doc in best_rank:
        total = 0.0
        for w, column in used:
            total = total + w * column.terms.get(doc, column.floor)
        scores[doc] = total
    return sorted(scores.items(), key=lambda item: (-item[1], best_rank[item[0]], item[0]))


def _rrf_columns(rankings: Sequence[Sequence[Entry]], k: float) -> list[_Column | None]:
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    columns: list[_Column | None] = []
    for ranking in rankings:
        ranks = {doc: rank for doc, (rank, _) in _first_places(ranking).items()}
        columns.append(_Column(ranks, {doc: 1 / (k + rank) for doc, rank in ranks.items()}, 0.0))
    return columns


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Entry]], k: float = 60,
                           weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """Cormack, Clarke and Büttcher (SIGIR 2009): score(d) = Σ_r w_r / (k + rank_r(d)) over the rankings r that
    hold d, ranks 1-based, w_r = 1 unless `weights` say otherwise (0: r left out); scores in the inputs are ignored."""
    return _combine(_rrf_columns(rankings, k), _weights(weights, len(rankings)))


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


def _weighted_columns(rankings: Sequence[Sequence[tuple[str, float]]], normalise: str) -> list[_Column | None]:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    columns: list[_Column | None] = []
    for ranking in rankings:
        places = _first_places(ranking)
        if not places:
            columns.append(None)
            continue
        raw = [score for _, score in places.values()]
        if not all(s is not None and math.isfinite(s) for s in raw):
            raise ValueError("weighted_sum_fusion needs (doc_id, finite score) pairs, got a bare id or a NaN/inf")
        terms = dict(zip(places, _normalised(raw, normalise), strict=True))
        columns.append(_Column({doc: rank for doc, (rank, _) in places.items()}, terms, min(terms.values())))
    return columns


def weighted_sum_fusion(rankings: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float] | None = None,
                        normalise: str = "minmax") -> list[tuple[str, float]]:
    """score(d) = Σ_r w_r · n_r(d), n_r the scores of ranking r normalised by `normalise` ("minmax", "zscore" or
    "none"). A document missing from ranking r gets r's lowest normalised score (0 under minmax): not
    retrieved is taken as no better than the worst retrieved, whatever the scale. An empty ranking adds 0, and one
    of weight 0 is left out."""
    return _combine(_weighted_columns(rankings, normalise), _weights(weights, len(rankings)))


def _columns(rankings: Sequence[Sequence[Entry]], fusion: str, rrf_k: float) -> list[_Column | None]:
    if fusion == "rrf":
        return _rrf_columns(rankings, rrf_k)
    if fusion == "weighted":
        return _weighted_columns(rankings, "minmax")  # type: ignore[arg-type]  # it refuses bare ids itself
    raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")


def fuse(rankings: Sequence[Sequence[Entry]], fusion: str, weights: Sequence[float] | None = None,
         rrf_k: float = 60.0) -> list[tuple[str, float]]:
    """`fusion` "rrf" (reciprocal_rank_fusion with k `rrf_k`) or "weighted" (weighted_sum_fusion, minmax)."""
    return _combine(_columns(rankings, fusion, rrf_k), _weights(weights, len(rankings)))


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of `parts` non-negative integers summing to `total`, the first part falling from `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def _divisions(members: int) -> int:
    if members < 1:
        raise ValueError(f"members must be a positive integer, got {members}")
    return next(d for d in DIVISIONS if math.comb(d + members - 1, members - 1) <= MAX_GRID or d == 1)


def weight_grid(members: int) -> list[tuple[Fraction, ...]]:
    """The weight vectors `tune_weights` tries: non-negative, summing to 1, in steps of 1/d, d the first of
    DIVISIONS whose grid has at most MAX_GRID points: steps of 0.1 up to 4 rankings (11, 66, 286 points), 0.2 for
    5-6, 0.25 for 7, 0.5 for 8-23 and each ranking alone beyond. Every one-hot vector is in it; both fusions are
    unchanged by scaling the weights, so the simplex holds every choice there is."""
    divisions = _divisions(members)
    return [tuple(Fraction(n, divisions) for n in counts) for counts in _compositions(divisions, members)]


class _Dev:
    """One dev query's columns as arrays, so that each weight vector costs a few array operations: the same
    products and left-to-right sums as `_combine`, hence the same scores to the last bit and the same order."""

    def __init__(self, columns: Sequence[_Column | None], evidence: Evidence) -> None:
        self.docs = sorted({doc for column in columns if column is not None for doc in column.ranks})
        where = {doc: i for i, doc in enumerate(self.docs)}  # row i is the i-th id in sorted order: the last tie-break
        shape = (len(self.docs), len(columns))
        self.terms, self.ranks = np.zeros(shape), np.full(shape, np.iinfo(np.int64).max, dtype=np.int64)
        self.held = np.zeros(shape, dtype=bool)
        self.filled = [column is not None for column in columns]
        for j, column in enumerate(columns):
            if column is None:
                continue
            self.terms[:, j] = column.floor
            for doc, rank in column.ranks.items():
                self.terms[where[doc], j], self.ranks[where[doc], j] = column.terms[doc], rank
                self.held[where[doc], j] = True
        self.evidence = evidence
        pages = {str(page).strip() for pages in evidence for page in pages}
        self.gold = np.array([doc.strip() in pages for doc in self.docs], dtype=bool)

    def ranking(self, weights: Sequence[float]) -> list[str]:
        """The fused ranking down to its last evidence page (the pages after it change neither R-precision nor
        KILT's recall@1), empty when it holds none."""
        used = [j for j, w in enumerate(weights) if w != 0 and self.filled[j]]
        if not used or not self.gold.any():
            return []
        total = np.zeros(len(self.docs))
        for j in used:
            total = total + weights[j] * self.terms[:, j]
        order = np.lexsort((np.arange(len(self.docs)), self.ranks[:, used].min(axis=1), -total))
        order = order[self.held[order][:, used].any(axis=1)]
        gold = np.flatnonzero(self.gold[order])
        return [self.docs[i] for i in order[:gold[-1] + 1]] if len(gold) else []


@dataclass(frozen=True)
class TunedWeights:
    """What `tune_weights` chose: `weights` (summing to 1) with their mean R-precision and recall@1 on the dev
    queries; the R-precision there of each ranking alone (`alone`) and of equal weights (`equal`); the weight
    vectors tried (`points`) and their step."""

    weights: tuple[float, ...]
    r_precision: float
    recall_at_1: float
    alone: tuple[float, ...]
    equal: float
    points: int
    step: float


def tune_weights(rankings: Sequence[Sequence[Sequence[Entry]]], evidence: Sequence[Evidence], fusion: str = "rrf",
                 rrf_k: float = 60.0) -> TunedWeights:
    """The weights of `fusion` with the best mean KILT R-precision over dev queries: `rankings[q]` holds each
    member's ranking of query q, `evidence[q]` its gold evidence sets (a query without any scores 0 whatever the
    weights). Tried: `weight_grid` plus equal weights; ties go to the better recall@1, then to the weights closest to
    equal (Euclidean, exactly), then to the earlier in the grid. The one-hot vectors give each member's own ranking,
    so the choice is never below the best member alone on these queries, nor below equal weights."""
    if len(rankings) != len(evidence) or not rankings:
        raise ValueError(f"got {len(rankings)} queries' rankings for {len(evidence)} queries' evidence")
    sizes = {len(members) for members in rankings}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every query needs the same positive number of rankings, got {sorted(sizes)}")
    members = sizes.pop()
    dev = [_Dev(_columns(query, fusion, rrf_k), gold) for query, gold in zip(rankings, evidence, strict=True)]
    equal = (Fraction(1, members),) * members
    candidates = [equal, *(w for w in weight_grid(members) if w != equal)]

    def scores(weights: tuple[Fraction, ...]) -> tuple[float, float]:
        floats = [float(w) for w in weights]
        fused = [(query.ranking(floats), query.evidence) for query in dev]
        return (math.fsum(r_precision(ranking, gold) for ranking, gold in fused) / len(dev),
                math.fsum(recall_at_k(ranking, gold, 1) for ranking, gold in fused) / len(dev))

    found = [scores(weights) for weights in candidates]
    distance = [sum((w - Fraction(1, members)) ** 2 for w in weights) for weights in candidates]
    best = max(range(len(candidates)), key=lambda i: (*found[i], -distance[i], -i))
    one_hot = [tuple(Fraction(int(n == m)) for n in range(members)) for m in range(members)]
    return TunedWeights(weights=tuple(float(w) for w in candidates[best]), r_precision=found[best][0],
                        recall_at_1=found[best][1], alone=tuple(found[candidates.index(w)][0] for w in one_hot),
                        equal=found[0][0], points=len(candidates), step=1 / _divisions(members))
