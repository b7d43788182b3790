"""Sampling through the hf backend: seeded requests give the same texts again, whatever their batch-mates."""

from __future__ import annotations

import pytest

from lmlab.core.evaluation.backend_hf import HFBackend
from lmlab.core.evaluation.backends import BackendOptions, GenerateRequest
from lmlab.core.models.loading import load_model

PROMPTS = ["The sky is", "Once upon a time, in a land far away,", "2 + 2 ="]


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    model, tokenizer = load_model("tiny-llama", seed=3)
    return HFBackend(BackendOptions("tiny-llama", batch_size=4), model, tokenizer)


def sampled(prompt: str, seed: int | None = 5, n: int = 1) -> GenerateRequest:
    return GenerateRequest(prompt, max_tokens=8, temperature=1.0, top_p=0.95, n=n, seed=seed)


def test_a_seeded_request_gives_the_same_texts_alone_or_batched(backend: HFBackend) -> None:
    batched = backend.generate([sampled(p) for p in PROMPTS])
    assert batched == backend.generate([sampled(p) for p in PROMPTS])
    alone = HFBackend(BackendOptions("tiny-llama", batch_size=1), backend.model, backend.tokenizer)
    assert [alone.generate([sampled(p)])[0] for p in PROMPTS] == batched


def test_n_completions_differ_and_the_seed_matters(backend: HFBackend) -> None:
    [texts] = backend.generate([sampled(PROMPTS[1], n=3)])
    assert len(texts) == 3 and len(set(texts)) == 3  # a random tiny model: three draws of 8 tokens differ
    [again] = backend.generate([sampled(PROMPTS[1], seed=6, n=2)])
    assert again[0] == texts[1]  # completion k is drawn with seed + k
    assert backend.generate([sampled(PROMPTS[1], seed=99)])[0][0] not in texts


def test_greedy_rows_in_a_sampled_batch_stay_greedy(backend: HFBackend) -> None:
    greedy = backend.generate([GenerateRequest(PROMPTS[0], max_tokens=8)])
    mixed = backend.generate([GenerateRequest(PROMPTS[0], max_tokens=8), sampled(PROMPTS[2])])
    assert mixed[0] == greedy[0]
    assert mixed[0] != backend.generate([sampled(PROMPTS[0])])[0]
