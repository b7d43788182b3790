"""Echo scores (`sequence_logprobs`, what `/v1/completions` with echo and logprobs returns) come from the prompt alone:
the Block Transformer's blocks are aligned by the prompt, as prefill aligns them, so the tokens generated after it
never move the prompt's scores, and a generated token's score is what the sampler saw (docs/methods.md#block-
transformer)."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.kernel.plugins import load_plugins
from lmlab.core.models.architectures import build_model
from lmlab.core.serving.generation import sequence_logprobs

V, BLOCK_LEN, APPENDED = 50, 4, 8
PROMPT_LENGTHS = (1, 3, 4, 5, 7, 8, 11, 12)  # inside the first block, on block boundaries and between them


def tiny(arch: str) -> torch.nn.Module:
    load_plugins()
    torch.manual_seed(0)
    model, _ = build_model(arch, "mha", vocab_size=V, block_size=32, n_layer=4, n_head=2, n_embd=32,
                           arch_opt=[f"block_len={BLOCK_LEN}"] if arch == "block" else [])
    return model.double().eval()


def prompt_of(length: int) -> list[int]:
    return torch.randint(1, V, (length,), generator=torch.Generator().manual_seed(length)).tolist()


@torch.inference_mode()
def sampled(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens after the prompt through the model's own prefill and decode, and the log-softmax of the logits
    each was picked from."""
    logits, state = model.prefill(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.bool))
    tokens, seen = [], []
    for step in range(steps):
        seen.append(logits[0].float().log_softmax(dim=-1))
        tokens.append(int(logits[0].argmax()))
        if step < steps - 1:
            logits = model.decode(torch.tensor(tokens[-1:]), state)
    return tokens, seen


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal rows, a NaN row (a token the model never predicts) where the other has one too."""
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.allclose(
        a.nan_to_num(), b.nan_to_num(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["block", "gpt"])
@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_appended_tokens_never_change_the_prompts_scores(arch: str, length: int) -> None:
    model = tiny(arch)
    prompt = prompt_of(length)
    generated, _ = sampled(model, prompt, APPENDED)
    alone = sequence_logprobs(model, prompt)  # what a client asking with max_tokens 0 is given
    assert alone.shape == (length - 1, V)
    for k in range(APPENDED + 1):
        rows = sequence_logprobs(model, prompt + generated[:k], prompt_len=length)
        assert rows.shape == (length - 1 + k, V)
        assert same(rows[:length - 1], alone), f"the prompt's scores moved with {k} tokens appended"
    if arch == "block":  # the tokens of the first block are never predicted, the others always are
        first_block = min(length - 1, BLOCK_LEN - 1 - (-length) % BLOCK_LEN)
        assert alone[:first_block].isnan().all() and not alone[first_block:].isnan().any()


@pytest.mark.parametrize("arch", ["block", "gpt"])
@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_generated_tokens_score_what_the_sampler_saw(arch: str, length: int) -> None:
    model = tiny(arch)
    prompt = prompt_of(length)
    generated, seen = sampled(model, prompt, APPENDED)
    first = sequence_logprobs(model, prompt + generated[:1], prompt_len=length)[-1]
    assert torch.allclose(first, seen[0], rtol=0, atol=1e-6)  # log-softmax of the logits prefill returned
    rows = sequence_logprobs(model, prompt + generated, prompt_len=length)[length - 1:]
    assert same(rows, torch.stack(seen))  # and of every decode step's, across the block boundaries


def test_the_whole_sequence_scored_as_a_prompt_is_aligned_by_its_own_length() -> None:
    model = tiny("block")
    prompt, generated = prompt_of(5), prompt_of(3)  # 8 tokens: as a prompt, two full blocks, no padding
    as_prompt = sequence_logprobs(model, prompt + generated)
    after_prompt = sequence_logprobs(model, prompt + generated, prompt_len=5)  # 3 pads first, the prompt's own
    assert as_prompt[:3].isnan().all() and not as_prompt[3:].isnan().any()
    assert not after_prompt.isnan().any()  # the prompt's second token already ends the padded first block
    assert not torch.allclose(as_prompt[3:], after_prompt[3:])
