"""lmlab.core.retrieval.fusion: reciprocal rank fusion and weighted-sum fusion on crafted rankings, scores by hand;
weights tuned on dev queries against the hand-computed choice and the members alone."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from lmlab.core.retrieval.fusion import fuse, reciprocal_rank_fusion, tune_weights, weight_grid, weighted_sum_fusion
from lmlab.core.retrieval.kilt import r_precision, recall_at_k


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


# One member's ranking with tied scores in an order that is not the ids' (z before a), a second overlapping it and
# holding pages the first does not, a third that is empty.
MEMBERS = [[("z", 2.0), ("a", 2.0), ("m", 1.0), ("b", 0.5)], [("b", 9.0), ("q", 8.0), ("a", 1.0), ("y", 0.0)], []]


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
@pytest.mark.parametrize("member", [0, 1])
def test_one_hot_weights_give_back_that_members_ranking(fusion: str, member: int) -> None:
    weights = [float(m == member) for m in range(len(MEMBERS))]
    assert ids(fuse(MEMBERS, fusion, weights)) == [doc for doc, _ in MEMBERS[member]]


def test_a_weight_of_zero_leaves_its_ranking_out():
    assert reciprocal_rank_fusion([["a", "b"], ["c"]], k=0, weights=[1, 0]) == [("a", 1.0), ("b", 0.5)]
    assert weighted_sum_fusion(SCORED, weights=[0, 2]) == [("b", 2.0), ("d", 1.0), ("a", 0.0)]


def test_the_grid_holds_every_one_hot_vector_and_stays_bounded():
    assert weight_grid(2)[:3] == [(1, 0), (Fraction(9, 10), Fraction(1, 10)), (Fraction(4, 5), Fraction(1, 5))]
    assert [len(weight_grid(n)) for n in (2, 3, 4)] == [11, 66, 286]  # C(10 + n - 1, n - 1): steps of 0.1
    assert [len(weight_grid(n)) for n in (5, 7, 8, 30)] == [126, 210, 36, 30]  # steps 0.2, 0.25, 0.5, 1
    for n in (2, 4, 5, 8):
        grid = weight_grid(n)
        assert all(sum(w) == 1 and min(w) >= 0 for w in grid) and len(set(grid)) == len(grid)
        assert {tuple(Fraction(int(i == m)) for i in range(n)) for m in range(n)} <= set(grid)


def _perfect_and_noise() -> tuple[list, list]:
    """Three queries whose gold page g{q} the first member ranks 1st and the second last (7th), behind x{q}, which
    the first ranks 2nd. RRF (k 60) with weights (a, 1 - a): g{q} wins when a (1/61 - 1/62) > (1 - a)(1/61 - 1/67),
    i.e. a > 0.847; equal weights put x{q} first. Weighted sum: min-max scores g (1, 0) and x (0.5, 1), so g{q} wins
    when a > 1 - a/2, i.e. a > 2/3."""
    rankings, evidence = [], []
    for q in range(3):
        others = [f"o{q}-{i}" for i in range(5)]
        perfect = list(zip([f"g{q}", f"x{q}", *others], [1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], strict=True))
        noise = list(zip([f"x{q}", *others, f"g{q}"], [1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.0], strict=True))
        rankings.append([perfect, noise])
        evidence.append([[f"g{q}"]])
    return rankings, evidence


def _mean_r_precision(rankings, evidence, fusion, weights, rrf_k=60.0) -> float:
    return sum(r_precision(ids(fuse(query, fusion, weights, rrf_k)), gold)
               for query, gold in zip(rankings, evidence, strict=True)) / len(evidence)


def test_tuned_rrf_weights_follow_the_perfect_member_and_beat_equal_weights():
    rankings, evidence = _perfect_and_noise()
    tuned = tune_weights(rankings, evidence, "rrf", rrf_k=60)
    assert _mean_r_precision(rankings, evidence, "rrf", [1, 1]) == 0.0
    # 0.9 and 1.0 both give R-precision 1 (a > 0.847) and recall@1 1; 0.9 is the closer to equal weights
    assert tuned.weights == (0.9, 0.1)
    assert tuned.r_precision == tuned.recall_at_1 == 1.0 == _mean_r_precision(rankings, evidence, "rrf", [0.9, 0.1])
    assert tuned.alone == (1.0, 0.0) and tuned.equal == 0.0 and tuned.points == 11 and tuned.step == 0.1


def test_tuned_weighted_sum_weights_beat_equal_weights():
    rankings, evidence = _perfect_and_noise()
    tuned = tune_weights(rankings, evidence, "weighted")
    assert tuned.weights == (0.7, 0.3)  # 0.7 to 1.0 all rank g{q} first (a > 2/3); 0.7 is the closest to equal
    assert tuned.r_precision == 1.0 == _mean_r_precision(rankings, evidence, "weighted", [0.7, 0.3])
    assert _mean_r_precision(rankings, evidence, "weighted", [1, 1]) == tuned.equal == 0.0
    assert _mean_r_precision(rankings, evidence, "weighted", [0.6, 0.4]) == 0.0


def test_ties_go_to_equal_weights_and_the_choice_is_deterministic():
    rankings, evidence = _perfect_and_noise()
    twins = [[query[0], query[0], query[0]] for query in rankings]  # three identical members: every weight ties
    assert tune_weights(twins, evidence).weights == (1 / 3, 1 / 3, 1 / 3)
    assert tune_weights(rankings, evidence) == tune_weights(rankings, evidence)


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_the_tuned_choice_is_what_fusing_with_it_scores_and_no_member_does_better(fusion: str) -> None:
    rng = random.Random(7)
    pages = [f"p{i}" for i in range(30)]
    rankings, evidence = [], []
    for _ in range(12):  # three members, each ranking 12 pages with falling, often tied scores
        rankings.append([list(zip(rng.sample(pages, 12), sorted((round(rng.random(), 1) for _ in range(12)),
                                                                 reverse=True), strict=True)) for _ in range(3)])
        gold = rng.sample(pages, rng.choice([1, 2]))
        evidence.append([gold, [rng.choice(pages)]] if rng.random() < 0.3 else [gold])
    tuned = tune_weights(rankings, evidence, fusion, rrf_k=5)
    assert tuned.r_precision == pytest.approx(_mean_r_precision(rankings, evidence, fusion, tuned.weights, 5))
    assert tuned.recall_at_1 == pytest.approx(sum(recall_at_k(ids(fuse(query, fusion, tuned.weights, 5)), gold, 1)
                                                  for query, gold in zip(rankings, evidence, strict=True)) / 12)
    for member in range(3):
        alone = sum(r_precision([doc for doc, _ in query[member]], gold)
                    for query, gold in zip(rankings, evidence, strict=True)) / len(evidence)
        assert tuned.alone[member] == pytest.approx(alone) and tuned.r_precision >= alone
    assert tuned.r_precision >= tuned.equal and tuned.points == 67  # 66 grid points and equal weights
