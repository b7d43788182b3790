"""lmlab.core.retrieval.fusion: reciprocal rank fusion and weighted-sum fusion on crafted rankings, scores by hand."""

from __future__ import annotations

import math

import pytest

from lmlab.core.retrieval.fusion import reciprocal_rank_fusion, weighted_sum_fusion


def ids(fused):
    return [doc for doc, _ in fused]


def assert_fused(fused, expected):
    """Same order, scores equal up to rounding."""
    assert ids(fused) == ids(expected)
    assert [score for _, score in fused] == pytest.approx([score for _, score in expected])


def test_rrf_sums_reciprocal_ranks():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]])
    assert_fused(fused, [("b", 1 / 62 + 1 / 61), ("c", 1 / 63 + 1 / 62), ("a", 1 / 61), ("d", 1 / 63)])


def test_rrf_takes_scored_pairs_and_ignores_their_scores():
    scored = [[("a", 0.1), ("b", 99.0)], [("b", -5.0), ("a", -6.0), ("c", -7.0)]]
    assert reciprocal_rank_fusion(scored, k=0) == [("a", 1 + 1 / 2), ("b", 1 / 2 + 1), ("c", 1 / 3)]


def test_rrf_weights():
    fused = reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=0, weights=[3, 1])
    assert fused == [("a", 3 + 1 / 2), ("b", 3 / 2 + 1)]


def test_rrf_ties_go_to_the_best_single_rank_then_the_id():
    # k=0: v = 1/1, w = 1/1, u = 1/2 + 1/2; u's best single rank is 2, so it comes last.
    assert reciprocal_rank_fusion([["v", "u"], ["w", "u"]], k=0) == [("v", 1.0), ("w", 1.0), ("u", 1.0)]
    assert ids(reciprocal_rank_fusion([["y", "x"], ["x", "y"]])) == ["x", "y"]


def test_rrf_a_duplicate_keeps_its_first_place():
    assert reciprocal_rank_fusion([["a", "b", "a"]], k=0) == [("a", 1.0), ("b", 1 / 2)]


SCORED = [[("a", 10.0), ("b", 6.0), ("c", 2.0)], [("b", 0.9), ("d", 0.5), ("a", 0.1)]]


def test_weighted_sum_minmax_missing_documents_get_zero():
    # minmax: first a=1, b=0.5, c=0 (d missing: 0); second b=1, d=0.5, a=0 (c missing: 0).
    assert_fused(weighted_sum_fusion(SCORED), [("b", 1.5), ("a", 1.0), ("d", 0.5), ("c", 0.0)])
    assert_fused(weighted_sum_fusion(SCORED, weights=[1, 3]), [("b", 0.5 + 3), ("d", 1.5), ("a", 1.0), ("c", 0.0)])


def test_weighted_sum_zscore_missing_documents_get_the_lowest_score():
    z = math.sqrt(3 / 2)  # (10 - 6) / pstdev(10, 6, 2) and likewise for (0.9, 0.5, 0.1)
    assert_fused(weighted_sum_fusion(SCORED, normalise="zscore"), [("b", z), ("a", 0.0), ("d", -z), ("c", -2 * z)])


def test_weighted_sum_raw_scores():
    # a = 10 + 0.1; b = 6 + 0.9; d = 0.5 + 2 (lowest of the first); c = 2 + 0.1 (lowest of the second)
    assert_fused(weighted_sum_fusion(SCORED, normalise="none"), [("a", 10.1), ("b", 6.9), ("d", 2.5), ("c", 2.1)])


def test_weighted_sum_constant_and_empty_rankings_add_nothing():
    fused = weighted_sum_fusion([[("a", 3.0), ("b", 1.0)], [("b", 5.0), ("c", 5.0)], []], weights=[1, 1, 1])
    assert fused == [("a", 1.0), ("b", 0.0), ("c", 0.0)]  # b before c: its best single rank is 1


def test_programmer_errors_raise_value_error():
    with pytest.raises(ValueError, match="2 weights for 3 rankings"):
        reciprocal_rank_fusion([["a"], ["b"], ["c"]], weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_sum_fusion(SCORED, weights=[1, -1])
    with pytest.raises(ValueError, match="normalise must be one of"):
        weighted_sum_fusion(SCORED, normalise="softmax")
    with pytest.raises(ValueError, match="finite score"):
        weighted_sum_fusion([["a", "b"]])
    with pytest.raises(ValueError, match="finite score"):
        weighted_sum_fusion([[("a", math.nan)]])
    with pytest.raises(ValueError, match="k must be non-negative"):
        reciprocal_rank_fusion([["a"]], k=-1)
