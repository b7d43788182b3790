"""The BM25 pair of `lmlab bench retrieve`: its anchor, rank-bm25's BM25Okapi over our tokens, and how far our
bm25s rankings and scores agree with it (docs/benchmarks.md#bench-retrieve: why the anchor runs with epsilon 0)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmlab.plugins.retrieve.bm25 import document_text, tokenize

#: The relative difference under which two BM25 scores are the same (bm25s scores in float32).
TIE = 1e-5


class Okapi:
    """`rank_bm25.BM25Okapi` over the pages as our `tokenize(..., ids=False)` gives them, with bm25's k1 and b."""

    def __init__(self, docs: list[Any], settings: dict[str, Any], epsilon: float = 0.25) -> None:
        from rank_bm25 import BM25Okapi

        self.ids, self.stem, self.scale = [d.id for d in docs], settings["stem"], settings["k1"] + 1
        started = time.perf_counter()
        tokens = tokenize([document_text(d.title, d.text) for d in docs], self.stem, ids=False)
        self.model = BM25Okapi(tokens, k1=settings["k1"], b=settings["b"], epsilon=epsilon)
        self.seconds = time.perf_counter() - started  # its index: the pages' tokens and BM25Okapi's statistics

    def top(self, queries: list[Any], k: int) -> list[list[tuple[str, float]]]:
        """Each query's k best pages (`get_scores`, a stable sort), pages scoring 0 left out as bm25s leaves them."""
        import numpy as np

        out = []
        for tokens in tokenize([q.input for q in queries], self.stem, ids=False):
            scores = self.model.get_scores(tokens)
            best = np.argsort(-scores, kind="stable")[:k]
            out.append([(self.ids[i], float(scores[i])) for i in best if scores[i] > 0])
        return out

    def score_gap(self, queries: list[Any], index: str) -> float:
        """Every page's score for every query, ours (the bm25s index in the folder `index`, × (k1 + 1)) against
        this one's: the largest difference relative to the query's best score."""
        import bm25s
        import numpy as np

        ours, gap = bm25s.BM25.load(Path(index) / "bm25", show_progress=False), 0.0
        for tokens in tokenize([q.input for q in queries], self.stem, ids=False):
            known = [t for t in tokens if t in ours.vocab_dict]
            theirs = self.model.get_scores(tokens)
            mine = ours.get_scores(known) * self.scale if known else np.zeros_like(theirs)
            gap = max(gap, float(np.max(np.abs(mine - theirs)) / max(float(np.max(theirs)), 1e-9)))
        return float(f"{gap:.3g}")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TIE * max(abs(b), 1e-9)


def same_up_to_ties(ours: list[list[Any]], anchor: list[list[Any]], scale: float, depth: int) -> bool:
    """Whether two top-`depth` lists rank alike: the same scores position by position (ours × `scale`), and the
    same pages in every group of tied scores that ends before `depth` (the group at the cut may hold any of the
    pages tied there)."""
    mine = [(doc, score * scale) for doc, score in ours]
    if len(mine) != len(anchor) or not all(_close(a, b) for (_, a), (_, b) in zip(mine, anchor, strict=True)):
        return False
    start = 0
    for end in range(1, len(anchor) + 1):
        if end == len(anchor) or not _close(anchor[end][1], anchor[start][1]):
            if end < depth and {d for d, _ in mine[start:end]} != {d for d, _ in anchor[start:end]}:
                return False
            start = end
    return True


def ranking_checks(results: dict[str, dict[str, Any]], k1: float, depth: int) -> dict[str, Any]:
    """How far bm25's top lists agree with rank-bm25's (both systems' lists are dropped from the results)."""
    ours = results.get("bm25", {}).pop("top10", None)
    anchor, default, all_scores = (results.get("rank-bm25", {}).pop(key, None)
                                   for key in ("top10", "top10_default_epsilon", "all_scores_max_gap"))
    if ours is None or anchor is None:
        return {}
    scale, count = k1 + 1, len(ours)  # bm25s's robertson leaves out BM25Okapi's constant factor (k1 + 1)
    pairs = list(zip(ours, anchor, strict=True))
    gaps = [abs(a[1] * scale - b[1]) / max(abs(b[1]), 1e-9) for mine, theirs in pairs
            for a, b in zip(mine, theirs, strict=False)]
    tied = [any(_close(x[1], y[1]) for x, y in zip(top, top[1:], strict=False)) for top in anchor]
    same = [[d for d, _ in a] == [d for d, _ in b] for a, b in pairs]
    untied = [s for s, t in zip(same, tied, strict=True) if not t]
    return {"bm25_identical_top10_share": round(sum(same) / count, 4),
            "bm25_queries_with_tied_scores_in_top10_share": round(sum(tied) / count, 4),
            "bm25_identical_top10_share_without_ties": round(sum(untied) / len(untied), 4) if untied else None,
            "bm25_same_ranking_up_to_ties_share": round(sum(same_up_to_ties(a, b, scale, depth) for a, b in pairs)
                                                        / count, 4),
            "bm25_max_relative_score_gap": float(f"{max(gaps, default=0.0):.3g}"),
            "bm25_all_scores_max_relative_gap": all_scores,
            "bm25_same_ranking_up_to_ties_share_rank_bm25_default_epsilon": round(
                sum(same_up_to_ties(a, b, scale, depth) for a, b in zip(ours, default, strict=True)) / count, 4)}


def agreement_line(checks: dict[str, Any]) -> str:
    """What `ranking_checks` found, in one line under the report's table."""
    untied = checks["bm25_identical_top10_share_without_ties"]
    return (f"bm25 vs rank-bm25 (epsilon 0): the same ranking up to the order of tied scores for "
            f"{checks['bm25_same_ranking_up_to_ties_share']:.1%} of queries; identical top 10 for "
            f"{checks['bm25_identical_top10_share']:.1%} ({checks['bm25_queries_with_tied_scores_in_top10_share']:.1%} "
            f"have tied scores in their top 10, which the two order differently; without ties: "
            f"{'-' if untied is None else f'{untied:.1%}'}); every page's score agrees to "
            f"{checks['bm25_all_scores_max_relative_gap']:.2g} of the query's best; at rank-bm25's default epsilon "
            f"0.25, the same ranking up to ties for "
            f"{checks['bm25_same_ranking_up_to_ties_share_rank_bm25_default_epsilon']:.1%}")
