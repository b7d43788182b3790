"""The architecture protocol (core.models.architectures) and generation (core.serving.generation), exercised with a
toy architecture that a test-only plugin registers: choices and options validated, save → load by config.json's
"arch", sampling through forward or the model's own generation interface, and `lmlab generate` on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.cli.app import main
from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.kernel.plugins import load_plugins, pm
from lmlab.core.models.architectures import (
    ArchConfig,
    ArchitectureSpec,
    AttentionConfig,
    AttentionSpec,
    build_model,
    check_model_choice,
    find_model_folder,
    load_model_folder,
    reject_unknown,
    save_model_folder,
)
from lmlab.core.serving.generation import Sampling, generate, sample_tokens
from lmlab.core.training.text_corpus import train_tokenizer


class Bigram(nn.Module):
    """The next token's logits from the current token alone, times the `scale` option."""

    def __init__(self, config: ArchConfig, attention: AttentionSpec) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.mix = attention.build(config.attention_config())
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]:
        logits = self.head(self.mix(self.wte(idx))) * self.config.arch_options["scale"]
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        return logits if return_logits else None, loss.view_as(targets) if reduction == "none" else loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def save(self, folder: str | Path) -> None:
        save_model_folder(self, folder)


class CountingState:
    def full(self) -> bool:
        return False

    def keep(self, rows: Tensor) -> None:
        pass

    def kv_bytes_per_sequence(self) -> int:
        return 0


class CountingBigram(Bigram):
    """A Bigram with its own generation interface: always token 1, calls counted."""

    calls = 0

    def prefill(self, idx: Tensor, real: Tensor) -> tuple[Tensor, CountingState]:
        CountingBigram.calls += 1
        return self.decode(idx[:, -1], CountingState()), CountingState()

    def decode(self, tokens: Tensor, state: CountingState) -> Tensor:
        CountingBigram.calls += 1
        return F.one_hot(torch.ones_like(tokens), self.config.vocab_size).float()


def parse_scale(raw: dict[str, str], shape: AttentionConfig) -> dict[str, Any]:
    reject_unknown(raw, ("scale",), flag="--arch-opt", owner="--arch bigram")
    return {"scale": float(raw.get("scale", "1"))}


class ToyPlugin:
    @hookimpl
    def register_attention(self, register: Any) -> None:
        register(AttentionSpec("toy-identity", "no mixing at all", build=lambda cfg: nn.Identity()))

    @hookimpl
    def register_architectures(self, register: Any) -> None:
        register(ArchitectureSpec("bigram", "bigram test model", build=Bigram, parse_options=parse_scale))
        register(ArchitectureSpec("counting", "bigram with its own generate", build=CountingBigram,
                                  parse_options=parse_scale))
        register(ArchitectureSpec("plain", "bigram without options", build=Bigram))
        register(ArchitectureSpec("broken", "not a language model", build=lambda config, attention: nn.Linear(2, 2)))


@pytest.fixture(autouse=True)
def toy_plugin() -> Iterator[None]:
    load_plugins()
    plugin = ToyPlugin()
    pm.register(plugin, name="toy-test")
    yield
    pm.unregister(plugin)


SHAPE = dict(block_size=4, n_layer=1, n_head=2, n_embd=8)


def bigram(arch: str = "bigram", vocab_size: int = 16, **options: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model(arch, "toy-identity", vocab_size=vocab_size, **SHAPE,
                           arch_opt=[f"{k}={v}" for k, v in options.items()])
    return model.eval()


def test_build_model_parses_arch_options_into_the_config() -> None:
    model, config = build_model("bigram", "toy-identity", vocab_size=16, **SHAPE, arch_opt=["scale=2.5"])
    assert isinstance(model, Bigram) and model.config is config
    assert config == ArchConfig(vocab_size=16, **SHAPE, arch="bigram", attn="toy-identity",
                                arch_options={"scale": 2.5})
    assert check_model_choice("bigram", "toy-identity", **SHAPE) == ({}, {"scale": 1.0})


@pytest.mark.parametrize(("arch", "attn", "shape", "arch_opt", "attn_opt", "message", "hint"), [
    ("nope", "toy-identity", {}, [], [], "Unknown --arch 'nope'", "bigram"),
    ("bigram", "nope", {}, [], [], "Unknown --attn 'nope'", "toy-identity"),
    ("bigram", "toy-identity", {"n_embd": 9}, [], [], "not divisible by --n-head 2", "multiple"),
    ("bigram", "toy-identity", {}, ["sclae=2"], [], "Unknown --arch-opt key.* sclae", "--arch bigram takes scale"),
    ("bigram", "toy-identity", {}, ["scale"], [], "KEY=VALUE", "--arch-opt"),
    ("plain", "toy-identity", {}, ["scale=2"], [], "Unknown --arch-opt key.* scale", "takes no options"),
    ("bigram", "toy-identity", {}, [], ["rank=2"], "Unknown --attn-opt key.* rank", "takes no options"),
])
def test_bad_choices_fail_before_anything_is_built(arch: str, attn: str, shape: dict[str, int], arch_opt: list[str],
                                                   attn_opt: list[str], message: str, hint: str) -> None:
    with pytest.raises(LmlabError, match=message) as info:
        check_model_choice(arch, attn, **{**SHAPE, **shape}, attn_opt=attn_opt, arch_opt=arch_opt)
    assert hint in info.value.hint


def test_an_architecture_that_misses_the_protocol_is_named() -> None:
    with pytest.raises(ModelError, match="'broken' built a Linear without config, num_params, get_input_embeddings"):
        build_model("broken", "toy-identity", vocab_size=16, **SHAPE)


def test_save_then_load_by_the_arch_in_config_json(tmp_path: Path) -> None:
    model = bigram(scale="3")
    model.save(tmp_path / "run" / "model")
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["arch"] == "bigram" and saved["arch_options"] == {"scale": 3.0}
    folder = find_model_folder(tmp_path / "run")
    assert folder == tmp_path / "run" / "model"
    loaded = load_model_folder(folder)
    idx = torch.randint(0, 16, (2, 4))
    assert isinstance(loaded, Bigram) and loaded.config == model.config
    assert torch.equal(model(idx)[0], loaded(idx)[0])


def write_config(folder: Path, **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"vocab_size": 16, **SHAPE, **fields}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_load_errors_name_the_folder_and_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no saved model here"):
        find_model_folder(tmp_path)
    run = write_config(tmp_path / "run")  # a run directory's config.json: options, no "arch"
    (run / "config.json").write_text(json.dumps({"command": "pretrain", "options": {}}))
    with pytest.raises(ModelError, match="not a model config"):
        load_model_folder(run)
    with pytest.raises(ModelError, match="architecture 'nope' is not installed") as info:
        load_model_folder(write_config(tmp_path / "a", arch="nope", attn="toy-identity"))
    assert "bigram" in info.value.hint and "lmlab plugins" in info.value.hint
    with pytest.raises(ModelError, match="attention type 'nope' is not installed"):
        load_model_folder(write_config(tmp_path / "b", arch="bigram", attn="nope"))
    bigram().save(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "vocab_size": 17}))
    with pytest.raises(ModelError, match="weights do not fit"):
        load_model_folder(tmp_path / "c")


def test_generate_samples_through_forward_past_the_block_size() -> None:
    model = bigram(scale="4")
    prompt = torch.tensor([[3, 5], [7, 1]])
    greedy = generate(model, prompt, 9, temperature=0)
    assert greedy.shape == (2, 11) and torch.equal(greedy[:, :2], prompt)
    for row in greedy:  # a bigram's greedy choice depends on the previous token only
        assert all(int(b) == int(model(a.view(1, 1))[0].argmax()) for a, b in zip(row[1:-1], row[2:], strict=True))
    sampled = generate(model, prompt, 9, top_k=3, seed=1)
    assert torch.equal(sampled, generate(model, prompt, 9, top_k=3, seed=1))


def test_generate_hands_over_to_the_models_own_generation_interface() -> None:
    model = bigram("counting")
    before = CountingBigram.calls
    out = generate(model, torch.tensor([[3, 5]]), 4, temperature=0)
    assert out.tolist() == [[3, 5, 1, 1, 1, 1]]
    assert CountingBigram.calls == before + 1 + 1 + 3  # prefill (its own first decode), then 3 decode steps


def test_sample_tokens_is_greedy_at_zero_and_keeps_to_the_top_k() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_tokens(logits, [Sampling(temperature=0)], [None]).tolist() == [1]
    generator = torch.Generator().manual_seed(0)
    draws = {int(sample_tokens(logits, [Sampling(temperature=5.0, top_k=2)], [generator])) for _ in range(200)}
    assert draws == {1, 3}


def run_main(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def test_lmlab_generate_runs_a_registered_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "run" / "model"
    tokenizer = train_tokenizer(["the king and the queen of the castle"] * 4, 300, folder)
    model = bigram(vocab_size=len(tokenizer), scale="5")
    model.save(folder)
    assert run_main("generate", str(tmp_path / "run"), "--prompt", "the king", "--max-new-tokens", "6",
                    "--temperature", "0", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    ids = tokenizer("the king", add_special_tokens=False)["input_ids"]
    expected = generate(model, torch.tensor([ids]), 6, temperature=0)[0, len(ids):]
    assert out == {"prompt": "the king", "completion": tokenizer.decode(expected.tolist()), "finish_reason": "length",
                   "tokens": 6}


def test_lmlab_generate_on_an_uninstalled_architecture_is_exit_2(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    folder = write_config(tmp_path / "m", arch="retnet", attn="mha")
    assert run_main("generate", str(folder), "--max-new-tokens", "3") == 2
    err = capsys.readouterr().err
    assert "architecture 'retnet' is not installed" in err and "install the plugin" in err
    assert "Traceback" not in err
