"""`train-orpo --load-in-4bit` (QLoRA) where it cannot run is one clear refusal before anything is made: no CUDA
GPU, no bitsandbytes, or an alias with no weights folder to quantise from; where it can, the 4-bit base is
frozen and LoRA adapters are what trains, whether or not --lora was given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.models.loading import ModelAlias
from lmlab.plugins.orpo import model as qlora
from lmlab.plugins.orpo.model import trainable_model
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.train import OrpoTrainer
from tests.conftest import run_cli
from tests.plugins.orpo.test_loss import tiny_lm


def test_without_a_gpu_it_exits_2_with_one_message_and_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train-orpo", "--load-in-4bit", "--max-steps", "1", "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--load-in-4bit needs a CUDA GPU" in errors[0], result.stderr
    assert "hint:" in result.stderr and "--lora" in result.stderr
    assert not out.exists()


def test_a_missing_bitsandbytes_is_named_with_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, whether installed or not
    with pytest.raises(LmlabError, match="--load-in-4bit needs bitsandbytes, which is not installed") as caught:
        OrpoTrainer(OrpoOptions(load_in_4bit=True)).check()
    assert caught.value.hint == "pip install 'lmlab[qlora]'"


def test_an_alias_built_in_memory_is_refused() -> None:
    with pytest.raises(ModelError, match="alias 'tiny-llama' is built in memory") as caught:
        qlora.pretrained_source("tiny-llama", seed=0)
    assert "HF folder or Hub id" in caught.value.hint


def test_an_alias_loaded_from_a_folder_is_quantised_from_that_folder(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_lm().save_pretrained(tmp_path / "cached")
    tokenizer = object()
    alias = ModelAlias("cached", "from a folder", lambda seed: (LlamaForCausalLM.from_pretrained(
        str(tmp_path / "cached")), tokenizer))
    monkeypatch.setattr(qlora, "model_aliases", lambda: {"cached": alias})
    assert qlora.pretrained_source("cached", seed=0) == (str(tmp_path / "cached"), tokenizer)
    assert qlora.pretrained_source(str(tmp_path / "cached"), seed=0) == (str(tmp_path / "cached"), None)
    assert qlora.pretrained_source("owner/model", seed=0) == ("owner/model", None)


def test_a_4bit_base_trains_lora_adapters_only_even_without_lora() -> None:
    model = trainable_model(tiny_lm(), lora=False, quantized=True, gradient_checkpointing=True, r=4, alpha=8)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert model.get_decoder().layers[0].gradient_checkpointing
