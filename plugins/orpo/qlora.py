"""`train-orpo --load-in-4bit` (QLoRA, Dettmers et al. 2023): the base model's weights in 4-bit NF4 through
bitsandbytes with double quantisation and bf16 compute, as TRL's QLoRA recipe loads them; the LoRA adapters on
top are trained in float32 (`lmlab.plugins.orpo.model`).

bitsandbytes quantises while `from_pretrained` reads the weights, so the model must come from a Hugging Face
folder or a Hub id: an alias is used through the folder it is cached in (smollm2-135m), and one built in
memory (tiny-llama's random weights) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmlab.core.kernel.errors import LmlabError, ModelError, require
from lmlab.core.models.loading import finish_tokenizer, model_aliases


def check_4bit() -> None:
    """Refuse --load-in-4bit where it cannot run, before anything is loaded: no CUDA GPU, or no bitsandbytes."""
    if not torch.cuda.is_available():
        raise LmlabError(f"--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), and torch "
                         f"{torch.__version__} sees none.",
                         hint="drop --load-in-4bit (--lora alone trains adapters on full-precision weights), or run "
                              "on an NVIDIA GPU with a CUDA build of torch")
    require("bitsandbytes", "--load-in-4bit", "qlora")


def pretrained_source(spec: str, *, seed: int) -> tuple[str, Any | None]:
    """What `from_pretrained` reads for `spec`, and the alias's tokenizer when `spec` is an alias (else None):
    an alias's cached folder, a local folder, or the Hub id as given."""
    aliases = model_aliases()
    if spec not in aliases:
        path = Path(spec).expanduser()
        return (str(path) if path.exists() else spec), None
    model, tokenizer = aliases[spec].build(seed)
    folder = getattr(model, "name_or_path", "") or ""
    del model
    if not (folder and (Path(folder) / "config.json").is_file()):
        raise ModelError(f"--load-in-4bit quantises weights as they are read from a Hugging Face folder, and the "
                         f"alias '{spec}' is built in memory with none behind it.",
                         hint="pass an HF folder or Hub id with --model (e.g. the model/ of an earlier run), or "
                              "the alias smollm2-135m")
    return folder, tokenizer


def load_4bit(spec: str, *, seed: int, trust_remote_code: bool, device_index: int) -> tuple[Any, Any]:
    """(model, tokenizer): the model's linear layers in 4-bit NF4 on CUDA device `device_index` (this process's
    GPU), the rest in bfloat16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source, tokenizer = pretrained_source(spec, seed=seed)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quantization, dtype=torch.bfloat16,
                                                     device_map={"": device_index},
                                                     trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"Could not load model '{spec}' in 4 bits ({str(exc).splitlines()[0]}).",
                         hint="pass a local HF folder (with config.json) or a Hub id this machine can reach") from exc
    return model, finish_tokenizer(tokenizer)

