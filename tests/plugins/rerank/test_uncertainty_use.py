"""The uncertainty put to use: the risk-aware order P(relevant) − κ·std of `Reranking`, and MC dropout that samples
the attention-probability dropout too (`--mc-attention-dropout`) on a tiny random cross-encoder."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from lmlab.core.retrieval.rerankers import Relevance, Reranking, RerankSettings
from lmlab.core.retrieval.retrievers import Corpus, Document, Ranked
from lmlab.plugins.rerank.bayes import BayesianReranker, open_folder
from tests.plugins.rerank.conftest import tiny_encoder
from tests.plugins.rerank.test_bayes import PAIRS, scorer


class FixedReranker:
    """A reranker that gives each context the Relevance chosen for it."""

    def __init__(self, chosen: dict[str, Relevance]) -> None:
        self.chosen = chosen

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Relevance]:
        return [self.chosen[context] for _, context in pairs]


def corpus(*ids: str) -> Corpus:
    return Corpus([Document(i, i, "") for i in ids])


def test_risk_puts_the_less_uncertain_of_two_equally_probable_candidates_first() -> None:
    chosen = {"wide": Relevance(0.7, 0.7, 0.2, 0.61), "narrow": Relevance(0.7, 0.7, 0.05, 0.61),
              "low": Relevance(0.4, 0.4, 0.0, 0.67)}
    candidates = [[Ranked("wide", 3.0), Ranked("narrow", 2.0), Ranked("low", 1.0)]]
    plain = Reranking(None, FixedReranker(chosen), corpus(*chosen), 3).rerank(["q"], candidates, 3)
    assert [hit.id for hit in plain[0]] == ["wide", "narrow", "low"]  # κ = 0: a tie keeps the retriever's order
    assert [hit.score for hit in plain[0]] == [0.7, 0.7, 0.4]
    reranking = Reranking(None, FixedReranker(chosen), corpus(*chosen), 3, risk=1.0)
    risky = reranking.rerank(["q"], candidates, 3)
    assert [hit.id for hit in risky[0]] == ["narrow", "wide", "low"]
    assert [hit.score for hit in risky[0]] == pytest.approx([0.65, 0.5, 0.4])
    assert reranking.details[0]["wide"].score == pytest.approx(0.5) and reranking.details[0]["wide"].probability == 0.7
    # a large κ lets a certain but less probable candidate overtake an uncertain one
    strong = Reranking(None, FixedReranker(chosen), corpus(*chosen), 3, risk=2.0).rerank(["q"], candidates, 3)
    assert [hit.id for hit in strong[0]] == ["narrow", "low", "wide"]


def test_risk_is_a_shared_rerank_setting_off_by_default() -> None:
    assert RerankSettings().risk == 0.0 and RerankSettings().mc_attention_dropout is False


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("attention")
    attention_only = tiny_encoder(root / "attention-only", dropout=0.1, seed=0)
    model = BertForSequenceClassification.from_pretrained(attention_only, hidden_dropout_prob=0.0)
    model.save_pretrained(attention_only)  # same weights, dropout only on the attention probabilities
    return {"a": tiny_encoder(root / "a", dropout=0.1, seed=0), "attention-only": attention_only}


@contextlib.contextmanager
def only_dropout_layers(model: torch.nn.Module) -> Iterator[None]:
    """MC dropout as it was before the flag: only the `nn.Dropout` modules in training mode."""
    was = {module: module.training for module in model.modules()}
    for module in model.modules():
        module.training = isinstance(module, torch.nn.Dropout)
    yield
    for module, training in was.items():
        module.training = training


def test_attention_dropout_off_gives_the_nn_dropout_passes(encoders: dict[str, Path]) -> None:
    one = scorer(encoders["a"])
    found = BayesianReranker([one], "mc-dropout", passes=4).logits(PAIRS)
    batches, passes = one.batches(PAIRS), []
    with torch.inference_mode(), only_dropout_layers(one.model):
        for seed in range(4):
            torch.manual_seed(seed)
            out = torch.empty(len(PAIRS))
            for rows, tensors in batches:
                out[torch.tensor(rows)] = one.model(**tensors).logits[:, 0].float()
            passes.append(out)
    assert torch.equal(found, torch.stack(passes))


def test_attention_dropout_samples_the_attention_probabilities(encoders: dict[str, Path]) -> None:
    """With dropout only on the attention probabilities the flag is the spread's only source: 0 without it, > 0
    (so at least as wide) on every pair with it."""
    one = scorer(encoders["attention-only"])
    without = BayesianReranker([one], "mc-dropout", passes=8).score(PAIRS)
    with_it = BayesianReranker([one], "mc-dropout", passes=8, attention_dropout=True).score(PAIRS)
    assert all(r.std == 0.0 for r in without)  # no nn.Dropout samples: the fused attention kernel ran without
    assert all(r.std > 0.0 for r in with_it)  # small: random weights make attention nearly uniform
    again = BayesianReranker([one], "mc-dropout", passes=8, attention_dropout=True).score(PAIRS)
    assert again == with_it  # seeded passes
    assert not any(module.training for module in one.model.modules())  # modes restored after the passes


def test_the_option_reaches_the_reranker(tmp_path: Path, encoders: dict[str, Path]) -> None:
    from lmlab.plugins.rerank.bayes import write_info

    folder = tmp_path / "model"
    member = encoders["a"]
    folder.mkdir()
    (folder / "member-0").symlink_to(member, target_is_directory=True)
    write_info(folder, {"kind": "cross-encoder", "members": ["member-0"], "max_length": 48,
                        "default_variant": "mc-dropout"})
    for flag in (False, True):
        opened = open_folder(folder, {"variant": "mc-dropout", "mc_attention_dropout": flag, "device": "cpu"})
        assert opened.attention_dropout is flag


def test_retrieve_rerank_orders_by_the_risk_aware_score(tmp_path: Path, encoders: dict[str, Path],
                                                        rerank_files: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lmlab.cli.app import main
    from lmlab.plugins.rerank.bayes import write_info

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "member-0").symlink_to(encoders["a"], target_is_directory=True)
    write_info(folder, {"kind": "cross-encoder", "members": ["member-0"], "max_length": 48,
                        "default_variant": "mc-dropout"})
    with pytest.raises(SystemExit) as exit_info:
        main(["retrieve", "rerank", "--index", str(rerank_files["index"]), "--data", str(rerank_files["heldout"]),
              "--model", str(folder), "--mc-passes", "4", "--mc-attention-dropout", "--risk", "2", "--top-k", "3",
              "--rerank-depth", "5", "--json"])
    assert (exit_info.value.code or 0) == 0
    for row in json.loads(capsys.readouterr().out)["results"]:
        scores = [hit["score"] for hit in row["results"]]
        assert scores == sorted(scores, reverse=True)
        for hit in row["results"]:
            assert hit["uncertainty"] > 0
            assert hit["score"] == pytest.approx(hit["probability"] - 2 * hit["uncertainty"], abs=1e-5)
