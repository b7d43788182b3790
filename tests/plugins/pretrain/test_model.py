"""The GPT model (nanoGPT conventions, docs/methods.md) and the TEV measurements."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.models import architectures
from lmlab.core.models.architectures import ArchConfig, load_model_folder
from lmlab.core.models.gpt import GPT, GPT_ARCH
from lmlab.core.models.transformer import MHA_SPEC
from lmlab.core.serving.generation import generate
from lmlab.plugins.pretrain.train import embedding_grad_variance, tev
from tests.conftest import fit_one_batch


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ArchConfig(**{"vocab_size": 32, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                            **overrides}), MHA_SPEC)


def test_tev_matches_a_direct_computation() -> None:
    E = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [2.0, 2.0, -2.0, -2.0]], requires_grad=True)
    rows = [math.sqrt(1.25), 0.0, 2.0]  # population std of each row over its 4 dimensions
    mean = sum(rows) / 3
    assert tev(E) == pytest.approx({"tev_mean": mean, "tev_std": math.sqrt(sum((s - mean) ** 2 for s in rows) / 3)})
    assert tev(E.to(torch.bfloat16))["tev_mean"] == pytest.approx(mean, rel=1e-2)


def test_embedding_grad_variance_is_the_sample_variance_across_micro_batches() -> None:
    grads = [torch.ones(3, 2), 3 * torch.ones(3, 2), torch.tensor([[2.0, 2.0]] * 3)]
    assert embedding_grad_variance(grads) == pytest.approx(1.0)  # values 1, 3, 2: mean 2, (1 + 1 + 0) / 2
    with pytest.raises(LmlabError, match="at least 2"):
        embedding_grad_variance(grads[:1])


def test_forward_backward_shapes_and_losses() -> None:
    model = tiny()
    idx = torch.randint(0, 32, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 32) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    per_token = model(idx, idx, reduction="none")[1]
    assert per_token.shape == (3, 16) and per_token.mean().item() == pytest.approx(loss.item(), rel=1e-5)
    masked = idx.clone()
    masked[:, 8:] = -1
    assert model(idx, masked)[1].item() == pytest.approx(per_token[:, :8].mean().item(), rel=1e-5)
    last, none = model(idx)
    assert none is None and torch.allclose(last[:, 0], logits[:, -1], atol=1e-5)
    with pytest.raises(LmlabError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_init_ties_embeddings_and_scales_residual_projections() -> None:
    model = tiny(n_layer=4, n_embd=128, n_head=4, bias=True)
    assert model.lm_head.weight is model.transformer.wte.weight
    c_proj = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(c_proj) == 8  # attention and MLP of each of the 4 layers
    for p in c_proj:
        assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if n.endswith(("c_attn.bias", "c_fc.bias")))


def test_num_params_counts_the_tied_embedding_once() -> None:
    model = tiny()
    assert model.num_params(non_embedding=False) == len(torch.cat([p.flatten() for p in model.parameters()]))
    assert model.num_params() == model.num_params(non_embedding=False) - 16 * 32


def test_save_and_load_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(bias=True).eval()
    model.save(tmp_path / "m")
    loaded = load_model_folder(tmp_path / "m").eval()
    idx = torch.randint(0, 32, (2, 16))
    assert torch.equal(model(idx, idx)[0], loaded(idx, idx)[0])
    assert loaded.lm_head.weight is loaded.transformer.wte.weight and loaded.config == model.config
    with pytest.raises(ModelError, match="no config.json"):
        load_model_folder(tmp_path / "missing")
    monkeypatch.setattr(architectures, "attention_types", dict)
    with pytest.raises(ModelError, match="'mha' is not installed"):
        load_model_folder(tmp_path / "m")


def test_a_config_saved_before_arch_options_existed_still_loads(tmp_path) -> None:
    model = tiny().eval()
    model.save(tmp_path / "m")
    old = {"vocab_size": 32, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0,
           "bias": False, "attn": "mha", "attn_options": {}, "arch": "gpt"}  # the fields GPTConfig wrote
    (tmp_path / "m" / "config.json").write_text(json.dumps(old))
    loaded = load_model_folder(tmp_path / "m").eval()
    idx = torch.randint(0, 32, (2, 16))
    assert loaded.config.arch_options == {} and torch.equal(model(idx, idx)[0], loaded(idx, idx)[0])


def test_generate_appends_max_new_tokens_past_block_size() -> None:
    model = tiny().eval()
    prompt = torch.randint(0, 32, (2, 10))
    out = generate(model, prompt, 12, top_k=5, seed=1)  # the 16-token cache fills: generation starts again
    assert out.shape == (2, 22) and torch.equal(out[:, :10], prompt)
    again = generate(model, prompt, 12, top_k=5, seed=1)
    assert torch.equal(out, again)


def test_config_errors_are_clear() -> None:
    with pytest.raises(LmlabError, match="divisible"):
        ArchConfig(vocab_size=8, n_embd=30, n_head=4)
    with pytest.raises(ModelError, match="'mlra'"):
        GPT(ArchConfig(vocab_size=8, attn="mlra"), MHA_SPEC)
    assert isinstance(GPT_ARCH.build(ArchConfig(vocab_size=8, n_layer=1, n_embd=16), MHA_SPEC), GPT)


def test_a_tiny_model_overfits_one_batch() -> None:
    model = tiny()
    idx = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = fit_one_batch(model, idx)
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("attn", ["mha", "mlra"])
def test_cached_generation_equals_the_full_forward_for_prompts_of_different_lengths(attn: str) -> None:
    from lmlab.core.kernel.plugins import load_plugins
    from lmlab.core.models.architectures import build_model
    from lmlab.core.serving.generation import Sampling, generate_tokens

    load_plugins()
    torch.manual_seed(0)
    model = build_model("gpt", attn, vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)[0].double().eval()
    prompts, budgets = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]], [12, 4, 8]
    done = generate_tokens(model, prompts, [Sampling(max_tokens=n, temperature=0) for n in budgets])
    for prompt, budget, completion in zip(prompts, budgets, done, strict=True):
        seq = list(prompt)
        for _ in range(budget):  # the uncached forward over the whole sequence, one prompt at a time
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
        assert completion.tokens == seq[len(prompt):]
    # layers · keys and values · width · float64 · the 11-token padded prompts plus the 11 tokens fed back
    assert done[0].kv_bytes == 2 * 2 * 32 * 8 * (11 + 11)
