"""Model resolution: aliases come from plugins, bad specs are clear errors, random presets are seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.core.kernel.errors import ModelError
from lmlab.core.models.loading import load_model, model_aliases
from tests.conftest import run_cli


def test_builtin_aliases_are_registered() -> None:
    assert {"smollm2-135m", "tiny-llama"} <= set(model_aliases())


def test_tiny_llama_is_seeded_and_uses_the_smollm2_tokenizer() -> None:
    a, tokenizer = load_model("tiny-llama", seed=3)
    b, _ = load_model("tiny-llama", seed=3)
    c, _ = load_model("tiny-llama", seed=4)
    assert len(tokenizer) == 49152 and tokenizer.pad_token is not None
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.hidden_size == 256 and a.config.num_hidden_layers == 4


@pytest.mark.parametrize("spec", ["no-such-alias", "folder-without-config"])
def test_unresolvable_specs_raise_model_error(tmp_path: Path, spec: str) -> None:
    if spec == "folder-without-config":
        spec = str(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(spec)
    assert info.value.hint


def test_unreachable_hub_id_is_exit_2_from_the_cli(tmp_path: Path, preferences: Path) -> None:
    result = run_cli("train-orpo", "--model", "nobody/no-such-model", "--data", str(preferences), "-o",
                     str(tmp_path / "r"), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "nobody/no-such-model" in result.stderr and "hint:" in result.stderr
