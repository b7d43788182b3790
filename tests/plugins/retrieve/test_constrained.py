"""Trie-constrained beam search: real titles only, and the same hypotheses as transformers' generate with GENRE's
prefix_allowed_tokens_fn, on a tiny random Llama."""

from __future__ import annotations

import random

import pytest
import torch

from lmlab.plugins.retrieve.beam import (
    DEAD,
    ROOT,
    DictTrie,
    TitleTrie,
    constrained_beam_search,
    hf_constrained_generate,
)
from tests.plugins.retrieve.conftest import EOS, PAD, PROMPTS, SEQUENCES, TITLES, VOCAB


def search(model, num_beams: int, batch_size: int = 4):
    return constrained_beam_search(model, PROMPTS, TitleTrie.build(SEQUENCES), num_beams=num_beams,
                                   eos_token_id=EOS, pad_token_id=PAD, batch_size=batch_size)


@pytest.mark.parametrize("num_beams", [1, 4, len(TITLES)])
def test_every_hypothesis_is_a_distinct_real_title(model, num_beams: int) -> None:
    found = search(model, num_beams)
    assert len(found) == len(PROMPTS)
    for hyps in found:
        assert len(hyps) == num_beams
        assert all(list(h.tokens) in TITLES for h in hyps)
        assert len({h.tokens for h in hyps}) == len(hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    if num_beams == len(TITLES):  # as many beams as titles: every title, the prefixes of others included
        assert all({h.tokens for h in hyps} == {tuple(t) for t in TITLES} for hyps in found)


def test_score_is_the_log_probability_of_title_and_eos(model) -> None:
    prompt, best = PROMPTS[1], search(model, 3)[1][0]
    ids = torch.tensor([prompt + list(best.tokens) + [EOS]])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].float().log_softmax(-1)
    expected = log_probs[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None]).sum().item()
    assert best.score == pytest.approx(expected, abs=1e-4)


def test_fewer_titles_than_beams(model) -> None:
    trie = TitleTrie.build([[10, EOS], [10, 11, EOS]])
    found = constrained_beam_search(model, PROMPTS[:3], trie, num_beams=5, eos_token_id=EOS, pad_token_id=PAD)
    assert all(sorted(h.tokens for h in hyps) == [(10,), (10, 11)] for hyps in found)
    assert constrained_beam_search(model, PROMPTS[:2], TitleTrie.build([]), num_beams=3, eos_token_id=EOS,
                                   pad_token_id=PAD) == [[], []]


@pytest.mark.parametrize(("num_beams", "batch_size"), [(1, 4), (3, 4), (5, 3), (8, 6)])
def test_same_as_generate_with_prefix_allowed_tokens_fn(model, num_beams: int, batch_size: int) -> None:
    ours = search(model, num_beams, batch_size)
    anchor = hf_constrained_generate(model, PROMPTS, DictTrie(SEQUENCES), num_beams=num_beams, eos_token_id=EOS,
                                     pad_token_id=PAD, batch_size=batch_size)
    for mine, theirs in zip(ours, anchor, strict=True):
        assert [h.tokens for h in mine] == [h.tokens for h in theirs]
        assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], abs=1e-4)


def test_same_as_generate_on_random_tries(model) -> None:
    rng = random.Random(1)
    for _ in range(4):
        titles = {tuple(rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(2, 25))}
        titles |= {t[:cut] for t in list(titles) for cut in range(1, len(t)) if rng.random() < 0.3}
        sequences = [list(t) + [EOS] for t in titles]
        num_beams = rng.choice([2, 3, 6])
        ours = constrained_beam_search(model, PROMPTS, TitleTrie.build(sequences), num_beams=num_beams,
                                       eos_token_id=EOS, pad_token_id=PAD, batch_size=4)
        anchor = hf_constrained_generate(model, PROMPTS, DictTrie(sequences), num_beams=num_beams,
                                         eos_token_id=EOS, pad_token_id=PAD, batch_size=4)
        assert [[h.tokens for h in hyps] for hyps in ours] == [[h.tokens for h in hyps] for hyps in anchor]


def every_node_and_token(trie: TitleTrie) -> tuple[torch.Tensor, torch.Tensor]:
    nodes = torch.arange(int(trie.children.max()) + 1)
    return nodes.repeat_interleave(VOCAB), torch.arange(VOCAB).repeat(len(nodes))


def test_save_load_round_trip(tmp_path) -> None:
    trie = TitleTrie.build(SEQUENCES)
    trie.save(tmp_path / "trie.safetensors")
    loaded = TitleTrie.load(tmp_path / "trie.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["trie.safetensors"]
    assert (len(loaded), loaded.depth) == (len(trie), trie.depth) == (len(TITLES), 8)
    nodes, tokens = every_node_and_token(trie)
    assert torch.equal(loaded.allowed_mask(nodes, VOCAB), trie.allowed_mask(nodes, VOCAB))
    assert torch.equal(loaded.advance(nodes, tokens), trie.advance(nodes, tokens))


def test_masks_and_advances_follow_the_titles() -> None:
    trie, dict_trie = TitleTrie.build(SEQUENCES + SEQUENCES[:3]), DictTrie(SEQUENCES)
    assert len(trie) == len(TITLES)
    root = trie.allowed_mask(torch.tensor([ROOT]), VOCAB)[0]
    assert set(root.nonzero().flatten().tolist()) == {t[0] for t in TITLES}
    for seq in SEQUENCES:  # walk each title: the mask is the dict trie's children, and the walk ends at a leaf
        node = torch.tensor([ROOT])
        for i, token in enumerate(seq):
            allowed = trie.allowed_mask(node, VOCAB)[0].nonzero().flatten().tolist()
            assert allowed == sorted(dict_trie.allowed(seq[:i]))
            node = trie.advance(node, torch.tensor([token]))
        assert not trie.allowed_mask(node, VOCAB).any() and node.item() != DEAD
    assert trie.advance(torch.tensor([ROOT, ROOT, DEAD]), torch.tensor([10, 11, 10])).tolist()[1:] == [DEAD, DEAD]
    assert trie.allowed_mask(torch.tensor([[ROOT, DEAD]]), VOCAB).shape == (1, 2, VOCAB)
