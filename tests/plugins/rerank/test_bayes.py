"""The Bayesian variants' maths on a tiny random cross-encoder: MC dropout, ensembles, SWA, and agreement with
sentence-transformers' CrossEncoder on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.plugins.rerank.bayes import BayesianReranker, PairScorer, swa_average
from tests.plugins.rerank.conftest import tiny_encoder

PAIRS = [("closest planet to the sun", "Mercury (planet). Mercury is the smallest planet of the Solar System."),
         ("closest planet to the sun", "Java. Java is an island of Indonesia."),
         ("which metal is liquid", "Mercury. Mercury is a chemical element with symbol Hg, a heavy silvery metal."),
         ("bowed instrument", "Cello. The cello is a large bowed string instrument played seated, held between the "
                              "knees, tuned an octave below the viola.")]


def scorer(folder: Path, batch_size: int = 2) -> PairScorer:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return PairScorer(model, AutoTokenizer.from_pretrained(folder), max_length=48, batch_size=batch_size)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {"a": tiny_encoder(root / "a", seed=0), "b": tiny_encoder(root / "b", seed=1),
            "no-dropout": tiny_encoder(root / "c", dropout=0.0, seed=0)}


def test_mc_dropout_spread_is_zero_without_dropout_and_positive_with_it(encoders: dict[str, Path]) -> None:
    off = BayesianReranker([scorer(encoders["no-dropout"])], "mc-dropout", passes=6).score(PAIRS)
    on = BayesianReranker([scorer(encoders["a"])], "mc-dropout", passes=6).score(PAIRS)
    assert all(r.std == 0.0 for r in off)
    assert all(r.std > 1e-4 for r in on)
    plain = BayesianReranker([scorer(encoders["no-dropout"])], "plain").score(PAIRS)
    assert [r.probability for r in off] == pytest.approx([r.probability for r in plain], abs=1e-6)


def test_mc_dropout_passes_are_seeded_and_their_mean_is_the_score(encoders: dict[str, Path]) -> None:
    reranker = BayesianReranker([scorer(encoders["a"])], "mc-dropout", passes=5)
    first, again = reranker.samples(PAIRS), reranker.samples(PAIRS)
    assert torch.equal(first, again)
    assert [r.probability for r in reranker.score(PAIRS)] == pytest.approx(first.mean(0).tolist(), abs=1e-6)
    assert reranker.scorers[0].model.training is False  # dropout is switched back off after the passes


def test_ensemble_score_is_the_mean_of_its_members(encoders: dict[str, Path]) -> None:
    members = [scorer(encoders["a"]), scorer(encoders["b"])]
    each = [torch.sigmoid(m.score(PAIRS)) for m in members]
    found = BayesianReranker(members, "ensemble").score(PAIRS)
    assert [r.probability for r in found] == pytest.approx(((each[0] + each[1]) / 2).tolist(), abs=1e-6)
    assert [r.std for r in found] == pytest.approx(((each[0] - each[1]).abs() / 2).tolist(), abs=1e-6)
    assert all(r.score == r.probability for r in found)


def test_temperature_divides_the_logits(encoders: dict[str, Path]) -> None:
    one = scorer(encoders["a"])
    found = BayesianReranker([one], "plain", temperature=2.5).score(PAIRS)
    assert [r.probability for r in found] == pytest.approx(torch.sigmoid(one.score(PAIRS) / 2.5).tolist(), abs=1e-6)


def test_swa_averages_the_named_checkpoints() -> None:
    states = [{"w": torch.full((2, 2), float(v)), "steps": torch.tensor(v)} for v in (1, 2, 6)]
    averaged = swa_average(states)
    assert torch.equal(averaged["w"], torch.full((2, 2), 3.0))
    assert averaged["steps"] == 6  # an integer buffer comes from the last checkpoint, not averaged
    with pytest.raises(ValueError):
        swa_average([])


def test_scores_equal_cross_encoder_on_the_same_weights(encoders: dict[str, Path]) -> None:
    from sentence_transformers import CrossEncoder

    ours = scorer(encoders["a"], batch_size=3).score(PAIRS)
    anchor = CrossEncoder(str(encoders["a"]), max_length=48, device="cpu")
    theirs = anchor.predict(PAIRS, batch_size=2, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert torch.allclose(ours, theirs.float(), atol=1e-5)
    assert ours.std() > 0  # the pairs do get different scores


def test_batching_and_order_do_not_change_scores(encoders: dict[str, Path]) -> None:
    whole = scorer(encoders["a"], batch_size=8).score(PAIRS)
    single = scorer(encoders["a"], batch_size=1).score(PAIRS)
    backwards = scorer(encoders["a"], batch_size=3).score(PAIRS[::-1])
    assert torch.allclose(whole, single, atol=1e-5)
    assert torch.allclose(whole, backwards.flip(0), atol=1e-5)


def test_each_member_sees_every_query_once_with_a_batch_of_similar_lengths() -> None:
    from lmlab.plugins.rerank.train import RerankTask

    lengths = [5 + (i * 37) % 200 for i in range(600)]
    groups = [[2 * i, 2 * i + 1] for i in range(300)]  # a query is a unit: both its pairs, the longer one its length
    task = RerankTask([{"input_ids": [1] * n} for n in lengths], [0] * 600, groups, None, members=3, seed=0,
                      swa_steps=set())
    assert task.orders[0] == list(range(300)) and task.lengths[:2] == [max(lengths[:2]), max(lengths[2:4])]
    for order in task.orders[1:]:
        assert sorted(order) == list(range(300)) and order != task.orders[0]
        assert max(abs(task.lengths[i] - task.lengths[j]) for i, j in enumerate(order)) <= 50  # a neighbour in length
    assert task.orders[1] != task.orders[2]


def test_the_listwise_term_is_the_softmax_cross_entropy_of_each_querys_gold_pages() -> None:
    from lmlab.plugins.rerank.train import _listwise

    logits = torch.tensor([2.0, 0.5, -1.0, 3.0, 1.0, 0.0, 40.0, -40.0, 4.0, 9.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    query = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])  # query 3 has no gold page: it adds nothing
    gold = torch.tensor([1.0, 2.0, 1.0, 0.0])
    by_hand = -torch.log_softmax(logits[:3], 0)[0] - (torch.log_softmax(logits[3:6], 0)[1:].sum() / 2) \
        - torch.log_softmax(logits[6:8], 0)[1]
    assert torch.allclose(_listwise(logits, labels, query, gold), by_hand, atol=1e-5)
    assert torch.isfinite(_listwise(logits * 10, labels, query, gold))  # far apart: no overflow to inf or nan
