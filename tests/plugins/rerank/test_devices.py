"""The reranker on the model's device: scoring (plain, ensemble, MC dropout), the train-time held-out pass and the
training loss feed a stand-in cross-encoder on the `meta` device nothing but inputs on that device (it asserts
so, and a CPU tensor mixed into its outputs raises); `open_folder` places the members with --device/--precision;
every reranking command refuses a missing GPU with a hint before it reads anything."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.cli.app import main
from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.plugins.rerank.bayes import BayesianReranker, PairScorer, open_folder, write_info
from lmlab.plugins.rerank.train import LabelledPair, Members, RerankTask, quality_tensor, query_groups
from tests.plugins.rerank.conftest import tiny_encoder

META = torch.device("meta")
PAIRS = [LabelledPair("q1", "closest planet to the sun", "Mercury (planet). The smallest planet.", 1),
         LabelledPair("q1", "closest planet to the sun", "Java. An island of Indonesia.", 0),
         LabelledPair("q2", "bowed instrument", "Cello. A large bowed string instrument played seated.", 1),
         LabelledPair("q2", "bowed instrument", "Glacier. A slowly moving mass of ice.", 0),
         LabelledPair("q3", "no gold here", "Volcano. Molten rock escapes.", 0)]


class MetaCrossEncoder(torch.nn.Module):
    """A cross-encoder stand-in on the meta device that asserts every input is there; logits [pairs, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros((), device=META))
        self.dropout = torch.nn.Dropout(0.1)  # MC dropout switches it on

    def forward(self, **inputs: torch.Tensor) -> SimpleNamespace:
        for name, tensor in inputs.items():
            assert tensor.device == META, f"{name} is on {tensor.device}, the model on {META}"
        return SimpleNamespace(logits=self.dropout(self.weight * inputs["input_ids"][:, :1].float()))


@pytest.fixture(scope="module")
def tokenizer() -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))


def meta_scorer(tokenizer: object) -> PairScorer:
    return PairScorer(MetaCrossEncoder().eval(), tokenizer, max_length=32, batch_size=2)


@pytest.mark.parametrize(("variant", "rows"), [("plain", 1), ("ensemble", 2), ("mc-dropout", 3)])
def test_bayesian_scoring_runs_on_the_models_device(tokenizer: object, variant: str, rows: int) -> None:
    scorers = [meta_scorer(tokenizer) for _ in range(2 if variant == "ensemble" else 1)]
    logits = BayesianReranker(scorers, variant, passes=3).device_logits([(p.query, p.context) for p in PAIRS])
    assert logits.device == META and logits.shape == (rows, len(PAIRS))
    assert not scorers[0].model.training  # dropout switched back off


def test_heldout_quality_is_computed_on_the_models_device(tokenizer: object) -> None:
    quality = quality_tensor(meta_scorer(tokenizer), PAIRS)  # accuracy, loss, AUC
    assert quality.device == META and quality.shape == (3,)


def test_the_training_loss_runs_every_member_on_the_models_device(tokenizer: object) -> None:
    features = [dict(zip(("input_ids", "token_type_ids", "attention_mask"), row, strict=True)) for row in zip(
        *tokenizer([p.query for p in PAIRS], [p.context for p in PAIRS]).values(), strict=True)]
    task = RerankTask(features, [p.label for p in PAIRS], query_groups(PAIRS), tokenizer, members=2, seed=0,
                      swa_steps=set())
    batch = {name: tensor.to(META) for name, tensor in task.collate([0, 1, 2]).items()}  # as the loop moves it
    totals = task.counts(batch)
    assert totals == {"pairs0": 5.0, "ranked0": 2.0, "pairs1": 5.0, "ranked1": 2.0}  # no value read back
    loss, metrics = task.loss(Members([MetaCrossEncoder(), MetaCrossEncoder()]), batch, totals)
    assert loss.device == META and loss.requires_grad
    assert {value.device for value in metrics.values()} == {META}


def test_open_folder_places_the_members_on_the_device_in_the_dtype(tmp_path: Path) -> None:
    for name in ("member-0", "member-1"):
        tiny_encoder(tmp_path / name)
    write_info(tmp_path, {"kind": "cross-encoder", "members": ["member-0", "member-1"], "swa": None,
                          "max_length": 32, "mc_passes": 2})
    ensemble = open_folder(tmp_path, {"variant": "ensemble", "device": META, "dtype": torch.float32})
    assert [next(s.model.parameters()).device for s in ensemble.scorers] == [META, META]
    assert all(not s.model.training for s in ensemble.scorers)
    plain = open_folder(tmp_path, {"variant": "plain", "device": torch.device("cpu"), "dtype": torch.bfloat16})
    assert next(plain.scorers[0].model.parameters()).dtype == torch.bfloat16
    half, full = plain.logits([(p.query, p.context) for p in PAIRS]), open_folder(tmp_path, {"variant": "plain"})
    assert half.dtype == torch.float32 and half.device.type == "cpu"
    assert torch.allclose(half, full.logits([(p.query, p.context) for p in PAIRS]), atol=0.1)


@pytest.mark.parametrize("command", [["retrieve", "index"], ["retrieve", "eval"], ["retrieve", "rerank"],
                                     ["retrieve", "calibrate"], ["retrieve", "explain", "--context", "x"]])
def test_every_reranking_command_refuses_a_missing_gpu_with_a_hint(command: list[str], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    where = "--output-dir" if command[1] == "index" else "--index"
    with pytest.raises(SystemExit) as exit_info:
        main([*command, where, str(tmp_path / "none"), "--device", "cuda:1"])
    message = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2
    assert "--device cuda:1: no CUDA GPU is visible" in message and "use --device cpu" in message
    assert not (tmp_path / "none").exists()  # refused before anything is read or written
