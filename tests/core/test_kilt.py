"""core.retrieval.kilt: KILT rows load with their evidence sets, bad rows name file, line and field, and the metrics
give the numbers KILT's kilt/eval_retrieval.py gives (hand-computed below)."""

from __future__ import annotations

import json

import pytest

from lmlab.core.kernel.errors import DataError
from lmlab.core.retrieval.kilt import (
    KiltQuery,
    downstream_metrics,
    load_kilt,
    min_prediction_size,
    r_precision,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
    success_at_k,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def query(qid: str, *evidence: tuple[str, ...]) -> KiltQuery:
    return KiltQuery(id=qid, input="q", answers=(), evidence=evidence, titles=tuple((None,) * len(e) for e in evidence))


# ---- loading --------------------------------------------------------------------------------------------------

# KILT's own test gold (tests/test_data/gold2.jsonl), one query with three evidence sets and mixed id types.
GOLD2 = {"id": 1, "output": [
    {"answer": "test1", "provenance": [{"wikipedia_id": 1, "section": 1}, {"wikipedia_id": "2", "section": 2}]},
    {"answer": "test2", "provenance": [{"wikipedia_id": 5}]},
    {"answer": "test3", "provenance": [{"wikipedia_id": 7}, {"wikipedia_id": 9}, {"wikipedia_id": 11}]}]}
# ... and its guesses guess2_1 and guess2_2, as page ids best first.
GUESS2_1 = [2, 5, "7", 33, 1, 9, 44, "88"]
GUESS2_2 = [5]


def test_load_kilt_reads_ids_answers_evidence_and_titles(tmp_path):
    rows = [
        {**GOLD2, "input": "who?"},
        {"id": "q2", "input": "Where is Paris?", "output": [
            {"answer": " France ", "provenance": [{"wikipedia_id": " 10 ", "title": "Paris"},
                                                  {"wikipedia_id": 10, "title": "Paris again"},
                                                  {"wikipedia_id": "11"}]},
            {"answer": "France", "provenance": [{"wikipedia_id": "11"}, {"wikipedia_id": "10"}]},  # same set
            {"answer": "", "provenance": []},
            {"answer": "in France"}]},
        {"id": "q3", "input": "a KILT test-split row has no output"},
    ]
    q1, q2, q3 = load_kilt(write_jsonl(tmp_path / "dev.jsonl", rows))
    assert q1 == KiltQuery(id="1", input="who?", answers=("test1", "test2", "test3"),
                           evidence=(("1", "2"), ("5",), ("7", "9", "11")),
                           titles=((None, None), (None,), (None, None, None)))
    assert q2.answers == ("France", "in France")
    assert q2.evidence == (("10", "11"),) and q2.titles == (("Paris", None),)
    assert (q3.answers, q3.evidence) == ((), ())


BAD_ROWS = [
    ({"id": 1.5, "input": "q"}, "id", "expected a string or an integer, got float"),
    ({"id": " ", "input": "q"}, "id", "is empty"),
    ({"id": "b", "input": "  "}, "input", "is empty"),
    ({"id": "b"}, "input", "missing"),
    ({"id": "b", "input": "q", "output": "Paris"}, "output", "expected a list of objects, got str"),
    ({"id": "b", "input": "q", "output": [{"answer": "x"}, "y"]}, "output[1]", "expected an object, got str"),
    ({"id": "b", "input": "q", "output": [{"answer": 3}]}, "output[0].answer", "expected a string, got int"),
    ({"id": "b", "input": "q", "output": [{"provenance": {"wikipedia_id": "1"}}]}, "output[0].provenance",
     "expected a list of objects, got dict"),
    ({"id": "b", "input": "q", "output": [{"provenance": [{"wikipedia_id": "1"}, {"title": "T"}]}]},
     "output[0].provenance[1].wikipedia_id", "missing"),
    ({"id": "b", "input": "q", "output": [{"provenance": [{"wikipedia_id": True}]}]},
     "output[0].provenance[0].wikipedia_id", "expected a string or an integer, got bool"),
    ({"id": "b", "input": "q", "output": [{"provenance": [{"wikipedia_id": "1", "title": 5}]}]},
     "output[0].provenance[0].title", "expected a string, got int"),
    ({"id": "a", "input": "q"}, "id", "duplicate id 'a' (first at line 1)"),
]


@pytest.mark.parametrize(("row", "field", "message"), BAD_ROWS)
def test_malformed_row_names_file_line_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "input": "fine", "output": []}, row])
    with pytest.raises(DataError) as caught:
        load_kilt(path)
    assert caught.value.message == f"{path}:2: field '{field}': {message}"
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, field)
    assert caught.value.hint


# ---- metrics ---------------------------------------------------------------------------------------------------


def test_kilt_own_test_case(tmp_path):
    """KILT tests/test_eval_retrieval.py: Rprec 1/2, recall@5 2/3, success_rate@5 1 for guess2_1; 1, 1/3, 1 for
    guess2_2. KILT's rank for guess2_1 is [True, False, True, set2, False, False]: {5} completes at point 1,
    {1, 2} at point 3 (its partial point is dropped), {7, 9, 11} never."""
    (gold,) = load_kilt(write_jsonl(tmp_path / "gold2.jsonl", [{**GOLD2, "input": "q"}]))
    guess_1 = [str(page) for page in GUESS2_1]
    assert r_precision(guess_1, gold.evidence) == 1 / 2  # top-2 [2, 5] holds one of {1, 2}
    assert recall_at_k(guess_1, gold.evidence, 5) == 2 / 3
    assert recall_at_k(guess_1, gold.evidence, 1) == 1 / 3
    assert success_at_k(guess_1, gold.evidence, 5) == 1
    assert reciprocal_rank(guess_1, gold.evidence) == 1
    guess_2 = [str(page) for page in GUESS2_2]
    assert r_precision(guess_2, gold.evidence) == 1
    assert recall_at_k(guess_2, gold.evidence, 5) == 1 / 3
    assert success_at_k(guess_2, gold.evidence, 5) == 1


def test_r_precision_is_the_best_over_evidence_sets():
    evidence = [("A", "B"), ("C",)]
    assert r_precision(["C", "A", "D"], evidence) == 1  # {C}: R=1, top-1 is C
    assert r_precision(["A", "C", "B"], evidence) == 1 / 2  # {A, B}: R=2, top-2 [A, C]; {C}: top-1 [A] -> 0
    assert r_precision(["B", "A"], evidence) == 1
    assert r_precision(["D", "E"], evidence) == 0


def test_a_multi_page_set_is_one_point_placed_at_its_last_page():
    evidence = [("A", "B")]
    # rank: A -> [set0], X -> [set0, False], B -> [False, True]: complete at point 2 though B is third.
    assert recall_at_k(["A", "X", "B"], evidence, 1) == 0
    assert recall_at_k(["A", "X", "B"], evidence, 2) == 1
    assert reciprocal_rank(["A", "X", "B"], evidence) == 1 / 2
    assert r_precision(["A", "X", "B"], evidence) == 1 / 2
    assert recall_at_k(["A", "X", "Y", "B"], evidence, 2) == 0


def test_recall_counts_each_complete_set_and_a_shared_page_serves_every_set():
    # A, C, B -> [set0], [set0, True], [True, True]: {C} moves up to point 1 when {A, B}'s partial point goes.
    assert recall_at_k(["A", "C", "B"], [("A", "B"), ("C",)], 1) == 1 / 2
    assert recall_at_k(["A", "C", "B"], [("A", "B"), ("C",)], 2) == 1
    # A completes {A} and half of {A, B}: two points from one page.
    assert recall_at_k(["A"], [("A",), ("A", "B")], 1) == 1 / 2
    assert recall_at_k(["A", "B"], [("A",), ("A", "B")], 2) == 1


def test_duplicates_in_the_ranking_are_dropped_and_repeated_sets_count_once():
    assert r_precision(["A", "A", "B"], [("A", "B")]) == 1  # deduplicated top-2 is [A, B]
    assert r_precision(["A", "A", "B"], [("B",)]) == 0
    assert recall_at_k(["A", "A", "B"], [("B",)], 2) == 1
    assert reciprocal_rank(["A", "A", "B"], [("B",)]) == 1 / 2
    assert recall_at_k([" 7", 7, "7 "], [("7",)], 1) == 1  # ids compare as str(id).strip()
    assert recall_at_k(["A"], [("A",), ("A",), ("B",)], 5) == 1 / 2  # {A} once, {B}: two sets


def test_k_larger_than_the_ranking_and_empty_rankings():
    assert recall_at_k(["A"], [("A",), ("B",)], 10) == 1 / 2
    assert success_at_k(["X", "A"], [("A",)], 100) == 1
    assert success_at_k(["X", "A"], [("A",)], 1) == 0
    for metric in (r_precision, reciprocal_rank):
        assert metric([], [("A",)]) == 0
    assert recall_at_k([], [("A",)], 5) == 0
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(["A"], [("A",)], 0)


def test_retrieval_metrics_counts_queries_without_provenance_as_zero():
    queries = [query("q1", ("A",)), query("q2", ("B", "C"), ("D",)), query("q3")]
    rankings = {"q1": ["A", "X"], "q2": ["B", "X", "C"], "q3": ["A"], "other": ["Z"]}
    result = retrieval_metrics(rankings, queries, ks=(1, 2))
    # q1: Rprec 1, rank [True, False]. q2: Rprec max(1/2, 0) = 1/2, rank [False, True] (B, X, C); q3: all 0.
    assert result == pytest.approx({
        "r_precision": (1 + 1 / 2 + 0) / 3,
        "recall@1": (1 + 0 + 0) / 3, "recall@2": (1 + 1 / 2 + 0) / 3,
        "success@1": 1 / 3, "success@2": 2 / 3,
        "mrr": (1 + 1 / 2 + 0) / 3,
        "queries": 3, "without_provenance": 1,
    })
    assert list(result)[:3] == ["r_precision", "recall@1", "recall@2"]


def test_retrieval_metrics_needs_a_ranking_for_every_query():
    with pytest.raises(ValueError, match="no ranking for 1 of 2 queries, e.g. 'q2'"):
        retrieval_metrics({"q1": ["A"]}, [query("q1", ("A",)), query("q2", ("B",))])


# ---- rankings longer than k -------------------------------------------------------------------------------------

def test_min_prediction_size_is_kilts():
    """KILT get_rank: the sizes of the k largest evidence sets, plus one per slot up to k no set fills."""
    evidence = [("A", "B"), ("C",), ("D", "E", "F")]
    assert min_prediction_size(evidence, 1) == 3
    assert min_prediction_size(evidence, 2) == 5
    assert min_prediction_size(evidence, 3) == 6
    assert min_prediction_size(evidence, 5) == 6 + 2
    assert min_prediction_size([], 4) == 4
    assert min_prediction_size([("A", "B"), ("B", "A")], 2) == 2 + 1  # the same set counts once


def test_a_set_completed_past_rank_k_counts_when_the_ranking_is_not_cut():
    """{A, B} with A first and B eleventh is one point at position 10 of KILT's rank (A's partial point is dropped
    when B arrives): recall@10 = 1 over the 11 guesses KILT asks for, 0 over a list cut to 10."""
    ranking = ["A", *(f"X{i}" for i in range(9)), "B"]
    evidence = [("A", "B")]
    assert min_prediction_size(evidence, 10) == 11 == len(ranking)
    assert recall_at_k(ranking, evidence, 10) == 1
    assert recall_at_k(ranking[:10], evidence, 10) == 0
    assert recall_at_k(ranking, evidence, 9) == 0


# ---- downstream -----------------------------------------------------------------------------------------------

def answered(qid: str, answers: tuple[str, ...], *evidence: tuple[str, ...]) -> KiltQuery:
    return KiltQuery(id=qid, input="q", answers=answers, evidence=evidence,
                     titles=tuple((None,) * len(e) for e in evidence))


def test_downstream_scores_credit_kilt_only_where_r_precision_is_one():
    """Hand-computed, as kilt/eval_downstream.py: q1 right answer and right page; q2 right answer up to case and
    article, wrong page; q3 half the tokens; q4 empty."""
    queries = [answered("q1", ("Paris",), ("P1",)), answered("q2", ("The Eiffel Tower",), ("P2",)),
               answered("q3", ("Gustave Eiffel",), ("P3",)), answered("q4", ("1889",), ("P4",))]
    answers = {"q1": "Paris", "q2": "eiffel tower", "q3": "Eiffel", "q4": "  "}
    rankings = {"q1": ["P1", "X"], "q2": ["X", "P2"], "q3": ["P3"], "q4": ["P4"]}
    scores = downstream_metrics(answers, rankings, queries)
    f1_q3 = 2 * (1 / 1) * (1 / 2) / (1 / 1 + 1 / 2)  # precision 1/1, recall 1/2
    assert scores["accuracy"] == pytest.approx(1 / 4)  # only q1 is one of the golds as given
    assert scores["em"] == pytest.approx(2 / 4)  # q1, q2 after normalisation
    assert scores["f1"] == pytest.approx((1 + 1 + f1_q3) / 4)
    assert scores["kilt_accuracy"] == pytest.approx(1 / 4)
    assert scores["kilt_em"] == pytest.approx(1 / 4)  # q2's page is ranked second: R-precision 0
    assert scores["kilt_f1"] == pytest.approx((1 + f1_q3) / 4)
    assert scores["queries"] == 4


def test_downstream_takes_the_best_gold_answer_and_labels_as_given():
    queries = [answered("q1", ("SUPPORTS",), ("P1",)), answered("q2", ("Marie Curie", "Curie"), ("P2",))]
    scores = downstream_metrics({"q1": "SUPPORTS", "q2": "curie"}, {"q1": ["P1"], "q2": ["P2"]}, queries)
    assert scores["accuracy"] == pytest.approx(1 / 2)  # "curie" is no gold answer as given
    assert scores["em"] == scores["kilt_em"] == pytest.approx(1.0)
    assert scores["kilt_accuracy"] == pytest.approx(1 / 2)


def test_downstream_needs_an_answer_for_every_answered_query():
    with pytest.raises(ValueError, match="no answer or ranking for 1 of 1"):
        downstream_metrics({}, {"q1": ["P1"]}, [answered("q1", ("a",), ("P1",))])

