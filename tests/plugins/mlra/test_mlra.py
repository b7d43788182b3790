"""MLRA (docs/methods.md#mlra-attention): options, parameter counts, the paper's variance argument, and use
inside the GPT."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.architectures import ArchConfig, AttentionConfig, AttentionSpec, load_model_folder
from lmlab.core.models.gpt import GPT
from lmlab.core.models.transformer import MHA_SPEC
from lmlab.plugins.mlra import register_attention
from lmlab.plugins.mlra.attention import MLRAttention, default_rank, parse_options
from tests.conftest import fit_one_batch


def mlra_spec() -> AttentionSpec:
    found: list[AttentionSpec] = []
    register_attention(found.append)
    return found[0]


def cfg(d: int, h: int, bias: bool = False, **options) -> AttentionConfig:
    return AttentionConfig(n_embd=d, n_head=h, n_layer=2, block_size=16, bias=bias, options=options)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registers_as_mlra() -> None:
    spec = mlra_spec()
    assert spec.name == "mlra" and spec.build is MLRAttention and spec.parse_options is parse_options


def test_parse_options_fills_defaults_and_validates() -> None:
    c = cfg(128, 4)
    assert parse_options({}, c) == {"rank": 25, "targets": ["q", "k", "v"]}  # ⌊128·32/160⌋ = ⌊25.6⌋
    assert parse_options({"rank": "8", "targets": "o, v,q"}, c) == {"rank": 8, "targets": ["q", "v", "o"]}
    for raw, message in [({"rnak": "8"}, "unknown MLRA option"), ({"rank": "0"}, "positive integer"),
                         ({"rank": "2.5"}, "positive integer"), ({"targets": "q,x"}, "subset"),
                         ({"targets": ""}, "subset")]:
        with pytest.raises(LmlabError, match=message) as err:
            parse_options(raw, c)
        assert "rank=INT" in err.value.hint


@pytest.mark.parametrize("d,h,r,targets,bias", [
    (128, 4, 8, "q,k,v", False), (128, 4, 25, "q,k,v,o", True), (64, 2, 3, "o", False), (96, 8, 16, "k", True),
])
def test_parameter_count_follows_the_formula(d: int, h: int, r: int, targets: str, bias: bool) -> None:
    module = MLRAttention(cfg(d, h, bias, **parse_options({"rank": str(r), "targets": targets}, cfg(d, h))))
    d_h, n_low = d // h, len(targets.split(","))
    expected = n_low * h * r * (d + d_h) + (4 - n_low) * d * d + (4 * d if bias else 0)
    assert count(module) == expected


@pytest.mark.parametrize("d,h", [(160, 4), (96, 3), (120, 2)])  # (H+1) divides d: ⌊d·d_h/(d+d_h)⌋ = d/(H+1) exactly
def test_default_rank_matches_mha_parameters(d: int, h: int) -> None:
    c = cfg(d, h, **parse_options({"targets": "q,k,v,o"}, cfg(d, h)))
    assert default_rank(c) * (h + 1) == d
    assert count(MLRAttention(c)) == 4 * d * d
    assert count(MLRAttention(cfg(128, 4))) < 4 * 128 * 128  # ⌊25.6⌋ = 25: just under MHA when inexact


def init_pair(seed: int, **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Layer-0 attention of a MHA and a MLRA GPT, both with the model's N(0, 0.02) init."""
    base = dict(vocab_size=16, block_size=64, n_layer=2, n_head=4, n_embd=128)
    torch.manual_seed(seed)
    mha = GPT(ArchConfig(**base), MHA_SPEC).transformer.h[0].attn
    config = ArchConfig(**base, attn="mlra", attn_options=options)
    return mha, GPT(config, mlra_spec()).transformer.h[0].attn


@torch.no_grad()
def test_output_variance_at_init_is_below_mha() -> None:
    # Var(x W) = d σ² against Var(x A B) = d r σ⁴ for unit-variance x (d = 128, r = 25, σ = 0.02)
    ratios_v, ratios_out = [], []
    for seed in range(3):
        mha, mlra = init_pair(seed)
        x = torch.randn(8, 64, 128, generator=torch.Generator().manual_seed(seed))
        v_mha = mha.c_attn(x)[..., 256:]
        assert v_mha.var().item() == pytest.approx(128 * 0.02**2, rel=0.1)
        v_mlra = mlra.qkv(x)[2]
        assert v_mlra.var().item() == pytest.approx(128 * 25 * 0.02**4, rel=0.2)
        ratios_v.append(v_mlra.var().item() / v_mha.var().item())
        ratios_out.append(mlra(x).var().item() / mha(x).var().item())
    assert sum(ratios_v) / 3 == pytest.approx(25 * 0.02**2, rel=0.1)  # r σ²
    assert max(ratios_out) < 0.05
    mha, mlra_o = init_pair(0, targets=["q", "k", "v", "o"], rank=25)
    x = torch.randn(8, 64, 128)
    assert mlra_o(x).var() < 0.05 * mlra(x).var()


def test_gpt_with_mlra_trains_saves_and_loads(tmp_path) -> None:
    spec = mlra_spec()
    config = ArchConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, attn="mlra", bias=True)
    config.attn_options = parse_options({"targets": "q,k,v,o"}, config.attention_config())
    torch.manual_seed(0)
    model = GPT(config, spec)
    c_proj = model.transformer.h[0].attn.c_proj.weight  # the last factor of the output projection
    assert c_proj.shape == (32, 2 * 10) and c_proj.std().item() == pytest.approx(0.02 / 2, rel=0.2)
    idx = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = fit_one_batch(model, idx)
    assert losses[-1] < 0.1 * losses[0]
    model.eval().save(tmp_path / "m")
    loaded = load_model_folder(tmp_path / "m").eval()
    assert torch.equal(model(idx, idx)[0], loaded(idx, idx)[0])
