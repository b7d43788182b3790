"""ORPO's loss equals a plain, independent implementation of the ORPO paper (full logits, one sequence at a
time), with and without prompt loss, in value and in gradient; splitting a batch into micro-batches with
global normalisers gives the same loss as the whole batch."""

from __future__ import annotations

import mpmath
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from lmlab.core.training import logprobs
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.plugins.orpo.data import PreferenceExample
from lmlab.plugins.orpo.task import OrpoTask, log1mexp

BETA = 0.1


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def examples(seed: int = 1) -> list[PreferenceExample]:
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(1, 97, (n,), generator=g).tolist()

    return [PreferenceExample(ids(p), ids(c), ids(r)) for p, c, r in [(5, 7, 3), (1, 4, 9), (8, 2, 2), (3, 6, 5)]]


def plain_orpo(lm: LlamaForCausalLM, batch: list[PreferenceExample], prompt_loss: bool) -> torch.Tensor:
    """§1 written plainly: full logits per sequence, mean completion log-prob, odds = p / (1 - p)."""
    nll_terms, logp_w, logp_l = [], [], []
    for ex in batch:
        for response, chosen in ((ex.chosen, True), (ex.rejected, False)):
            ids = torch.tensor([ex.prompt + response])
            logp = lm(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
            completion = logp[len(ex.prompt) - 1:]
            (logp_w if chosen else logp_l).append(completion.mean())
            if chosen:
                nll_terms.append(logp if prompt_loss else completion)
    nll = -torch.cat(nll_terms).mean()
    w, lo = torch.stack(logp_w), torch.stack(logp_l)
    log_odds = (w - lo) - (torch.log(1 - torch.exp(w)) - torch.log(1 - torch.exp(lo)))
    return nll - BETA * F.logsigmoid(log_odds).mean()


def ours(model: TokenLogprobModel, task: OrpoTask, parts: list[list[int]]) -> torch.Tensor:
    batches = [task.collate(ix) for ix in parts]
    totals: dict[str, float] = {}
    for b in batches:
        for k, v in task.counts(b).items():
            totals[k] = totals.get(k, 0.0) + v
    return sum(task.loss(model, b, totals)[0] for b in batches)


@pytest.mark.parametrize("prompt_loss", [True, False])
@pytest.mark.parametrize("chunk_elements", [1 << 23, 97 * 3])
def test_loss_and_gradient_match_plain_implementation(prompt_loss: bool, chunk_elements: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk_elements)
    batch = examples()
    reference_lm, our_lm = tiny_lm(), tiny_lm()
    expected = plain_orpo(reference_lm, batch, prompt_loss)
    task = OrpoTask(batch, pad_id=0, beta=BETA, prompt_loss=prompt_loss, seed=0)
    got = ours(TokenLogprobModel(our_lm), task, [list(range(len(batch)))])
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    expected.backward()
    got.backward()
    for (name, a), b in zip(reference_lm.named_parameters(), our_lm.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batches_with_global_normalisers_equal_the_whole_batch() -> None:
    batch = examples()
    task = OrpoTask(batch, pad_id=0, beta=BETA, prompt_loss=True, seed=0)
    model = TokenLogprobModel(tiny_lm())
    whole = ours(model, task, [[0, 1, 2, 3]])
    split = ours(model, task, [[0, 1], [2, 3]])
    assert split.item() == pytest.approx(whole.item(), abs=1e-6)


def test_log1mexp_is_stable_where_the_naive_formula_is_not() -> None:
    values = [-1e-6, -0.1, -0.6931, -0.7, -5.0, -40.0]
    mpmath.mp.dps = 50
    exact = torch.tensor([float(mpmath.log(1 - mpmath.exp(x))) for x in values], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(torch.tensor(values, dtype=torch.float64)), exact, rtol=1e-12, atol=0)
    tiny = torch.tensor([-1e-9, -50.0], dtype=torch.float32)
    assert torch.isfinite(log1mexp(tiny)).all()
    assert torch.log(1 - torch.exp(tiny))[1] == 0  # naive float32 loses everything; log1mexp keeps -e^-50
    assert log1mexp(tiny)[1] < 0
