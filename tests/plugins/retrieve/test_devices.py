"""Generative retrieval on the model's device: REINFORCE's batch, advantages, loss and reward metric are made where
the model is (a stand-in model on the `meta` device refuses any input from elsewhere, and a CPU tensor mixed into
its outputs raises), and `retrieve search --device cuda` without a GPU is refused with a hint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.plugins.retrieve import beam
from lmlab.plugins.retrieve.beam import Hypothesis, TitleTrie
from lmlab.plugins.retrieve.generative import sequence_logprobs
from lmlab.plugins.retrieve.train import Pair, ReinforceTask
from tests.conftest import run_cli

META = torch.device("meta")
TITLES = [(11, 12), (13,), (11, 14, 15)]
EOS, PAD = 2, 0


class MetaLogprobModel(torch.nn.Module):
    """A TokenLogprobModel stand-in whose weights sit on the meta device: it asserts that every input is there
    too, and answers log-probabilities [targets] on it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros((), device=META))
        self.lm = SimpleNamespace(device=META)
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask),
                             ("positions", positions), ("targets", targets)):
            assert tensor.device == META, f"{name} is on {tensor.device}, the model on {META}"
        self.calls += 1
        return self.weight * targets.float()


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> ReinforceTask:
    """A REINFORCE task over three titles whose beam search (which reads scores back every step, and so cannot run
    on meta) decodes every title for every query, best first."""
    def decoded(lm: object, prompts: list[list[int]], trie: TitleTrie, **_: object) -> list[list[Hypothesis]]:
        assert trie.parents.device == lm.device  # the trie is moved to the model once, not per search
        return [[Hypothesis(t, -float(n)) for n, t in enumerate(TITLES)] for _ in prompts]

    monkeypatch.setattr(beam, "constrained_beam_search", decoded)
    page_of = {t: str(n) for n, t in enumerate(TITLES)}
    pairs = [Pair((5, 6, 7), TITLES[0] + (EOS,), frozenset(["0"])), Pair((8, 9), TITLES[2] + (EOS,), frozenset(["2"]))]
    return ReinforceTask(pairs, TitleTrie.build([t + (EOS,) for t in TITLES]), page_of, pad_id=PAD, eos_id=EOS,
                         num_beams=3, reward="rank", baseline="mean", ema=0.9, seed=0)


@pytest.mark.parametrize("baseline", ["mean", "ema", "none"])
def test_reinforce_loss_and_reward_are_made_on_the_models_device(task: ReinforceTask, baseline: str) -> None:
    task.baseline = baseline
    model = MetaLogprobModel()
    batch = task.collate(task.batches(0, 2)[0])
    loss, metrics = task.loss(model, batch, task.counts(batch))
    assert model.calls == 1
    assert loss.device == META and loss.requires_grad and loss.shape == ()
    assert {name: value.device for name, value in metrics.items()} == {"loss": META, "reward": META}
    torch.stack([metrics["loss"], metrics["reward"]])  # what the loop reduces: one device for both
    assert task.trie.parents.device == META


def test_sequence_logprobs_sums_each_rows_tokens_on_the_models_device() -> None:
    found = sequence_logprobs(MetaLogprobModel(), [((5, 6), (11, EOS)), ((7,), (13, 14, EOS))], PAD)
    assert found.device == META and found.shape == (2,)


def test_moving_the_trie_keeps_its_edges_and_reads_nothing_back() -> None:
    trie = TitleTrie.build([t + (EOS,) for t in TITLES])
    moved = trie.to(META)  # meta holds no values: a move that recomputed anything from them would raise
    assert moved.offsets.device == moved.keys.device == META and (moved.depth, len(moved)) == (trie.depth, 3)
    assert trie.to("cpu") is trie
    back = TitleTrie(trie.parents, trie.tokens, trie.children, trie.depth, trie.titles)
    assert torch.equal(back.offsets, trie.offsets) and torch.equal(back.keys, trie.keys)


def test_search_on_a_missing_gpu_exits_2_with_a_hint(tmp_path: Path) -> None:
    done = run_cli("retrieve", "search", "--index", str(tmp_path / "none"), "--query", "planet", "--device", "cuda")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "--device cuda: no CUDA GPU is visible" in message and "use --device cpu" in message
    assert "not a retrieval index" not in message  # refused before anything is read
