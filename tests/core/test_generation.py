"""core.serving.generation's engine on a scripted model: sampling rules, seeds, stop strings, EOS, per-sequence budgets,
left padding; and the KV cache's masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lmlab.core.models.architectures import ArchConfig
from lmlab.core.models.kv_cache import KVCache
from lmlab.core.serving.generation import Sampling, generate_tokens, left_pad, sample_tokens
from lmlab.core.training.text_corpus import train_tokenizer

V = 12


class Successor(nn.Module):
    """After token t the likeliest next token is t + 1 (mod V), then t + 2, …: a script to check the engine by."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ArchConfig(vocab_size=V, block_size=8, n_layer=1, n_head=1, n_embd=4)
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, idx: Tensor, targets: Tensor | None = None, **_: object) -> tuple[Tensor, None]:
        distance = (torch.arange(V) - idx[..., None] - 1) % V
        return -self.scale * distance.float(), None


def test_top_p_keeps_the_smallest_set_that_reaches_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    generator = torch.Generator().manual_seed(0)

    def drawn(top_p: float) -> set[int]:
        return {int(sample_tokens(logits, [Sampling(top_p=top_p)], [generator])) for _ in range(300)}

    assert drawn(0.5) == {0}
    assert drawn(0.7) == {0, 1}
    assert drawn(0.8) == {0, 1}
    assert drawn(0.81) == {0, 1, 2}
    assert drawn(1.0) == {0, 1, 2, 3}


def test_each_sequence_samples_by_its_own_settings_and_seed() -> None:
    model = Successor()
    params = [Sampling(max_tokens=6, temperature=0), Sampling(max_tokens=6, temperature=2.0, seed=5),
              Sampling(max_tokens=6, temperature=2.0, top_k=1, seed=9)]
    done = generate_tokens(model, [[0], [3, 4], [7]], params)
    assert done[0].tokens == [1, 2, 3, 4, 5, 6]  # greedy
    assert done[2].tokens == [8, 9, 10, 11, 0, 1]  # top-1 is greedy whatever the temperature
    alone = generate_tokens(model, [[3, 4]], [params[1]])[0]
    assert done[1].tokens == alone.tokens  # a seed gives the same draws whatever else is in the batch
    other = generate_tokens(model, [[3, 4]], [Sampling(max_tokens=6, temperature=2.0, seed=6)])[0]
    assert other.tokens != alone.tokens


def test_eos_stop_strings_and_budgets_end_each_sequence_on_its_own(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(["abcdefghij"] * 4, 260, tmp_path / "tok")
    model = Successor()
    eos = 5
    done = generate_tokens(model, [[0], [6], [7], [7]], [
        Sampling(max_tokens=10, temperature=0),
        Sampling(max_tokens=3, temperature=0),
        Sampling(max_tokens=10, temperature=0, ignore_eos=True),
        Sampling(max_tokens=10, temperature=0, stop=(tokenizer.decode([10]),)),
    ], eos_id=eos, tokenizer=tokenizer)
    assert done[0].tokens == [1, 2, 3, 4, 5] and done[0].finish_reason == "eos"
    assert done[0].text == tokenizer.decode([1, 2, 3, 4])  # EOS is not part of the text
    assert done[1].tokens == [7, 8, 9] and done[1].finish_reason == "length"
    assert len(done[2].tokens) == 10 and eos in done[2].tokens and done[2].finish_reason == "length"
    assert done[3].tokens == [8, 9, 10] and done[3].finish_reason == "stop"
    assert done[3].text == tokenizer.decode([8, 9])  # cut before the stop string
    assert generate_tokens(model, [[1]], Sampling(max_tokens=0))[0].tokens == []


def test_a_prompt_longer_than_the_context_is_cropped_and_an_empty_one_refused() -> None:
    model = Successor()
    assert generate_tokens(model, [list(range(11))], Sampling(max_tokens=2, temperature=0))[0].tokens == [11, 0]
    with pytest.raises(Exception, match="no tokens"):
        generate_tokens(model, [[]], Sampling())


def test_left_pad() -> None:
    idx, real = left_pad([[4, 5, 6], [7]], pad_id=0)
    assert idx.tolist() == [[4, 5, 6], [0, 0, 7]]
    assert real.tolist() == [[True, True, True], [False, False, True]]


def test_kv_cache_masks_padding_and_future_keys() -> None:
    cache = KVCache(1, 2, 1, 2, 6, dtype=torch.float32)
    mask, is_causal = cache.begin(3, torch.tensor([[True, True, True], [False, True, True]]))
    assert not is_causal and mask.shape == (2, 1, 3, 3)
    assert mask[1, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    k, v = cache.update(0, torch.ones(2, 1, 3, 2), torch.ones(2, 1, 3, 2))
    cache.end()
    assert k.shape == (2, 1, 3, 2) and cache.room == 3
    mask, _ = cache.begin(1)
    assert mask[:, 0, 0].tolist() == [[True, True, True, True], [False, True, True, True]]
    cache.end()
    cache.keep(torch.tensor([0]))
    assert cache.begin(1) == (None, False)  # only the unpadded sequence is left: no mask needed
    assert cache.nbytes_per_sequence() == 2 * 1 * 1 * 4 * 2 * 4
