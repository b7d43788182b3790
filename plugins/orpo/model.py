"""The model `train-orpo` trains: all weights, LoRA adapters (--lora), or QLoRA (--load-in-4bit, Dettmers et al.
2023: a 4-bit NF4 base via bitsandbytes, double quantisation, bf16 compute, as TRL's recipe loads it; float32
adapters on top), with gradient checkpointing (--gradient-checkpointing) as TRL's ORPOTrainer sets it up."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lmlab.core.kernel.errors import LmlabError, ModelError, require
from lmlab.core.models.loading import finish_tokenizer, model_aliases

CHECKPOINT_KWARGS = {"use_reentrant": False}  # what TRL and transformers default to: works with frozen inputs


def enable_checkpointing(lm: Any) -> None:
    """Recompute every decoder layer in the backward (non-reentrant torch.utils.checkpoint)."""
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise LmlabError(f"--gradient-checkpointing: {type(lm).__name__} does not support gradient checkpointing.",
                         hint="drop --gradient-checkpointing (or lower --batch-size / --max-length to save memory)")
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers ≥ 5 (the older name is deprecated there)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))


def trainable_model(lm: Any, *, lora: bool, quantized: bool, gradient_checkpointing: bool, r: int,
                    alpha: int) -> Any:
    """`lm` made ready to train: a 4-bit base prepared for adapters (frozen, norms and embeddings in float32),
    checkpointing enabled, and LoRA adapters on every linear layer when `lora` (always under `quantized`)."""
    if quantized:
        peft = require("peft", "--load-in-4bit", "qlora")
        lm = peft.prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_checkpointing(lm)
    if not (lora or quantized):
        return lm
    peft = require("peft", "--lora", "lora")
    if gradient_checkpointing:
        lm.enable_input_require_grads()  # the embeddings' output needs grad for the checkpointed layers (as TRL)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads the attribute transformers 5 renamed: not the user's to act on
        warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
        return peft.get_peft_model(lm, config)


def check_4bit() -> None:
    """Refuse --load-in-4bit where it cannot run, before anything is loaded: no CUDA GPU, or no bitsandbytes."""
    import torch

    if not torch.cuda.is_available():
        raise LmlabError(f"--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), and torch "
                         f"{torch.__version__} sees none.",
                         hint="drop --load-in-4bit (--lora alone trains adapters on full-precision weights), or run "
                              "on an NVIDIA GPU with a CUDA build of torch")
    require("bitsandbytes", "--load-in-4bit", "qlora")


def pretrained_source(spec: str, *, seed: int) -> tuple[str, Any | None]:
    """What `from_pretrained` reads for `spec` (an alias's cached folder, a local folder, or the Hub id as given),
    and the alias's tokenizer when `spec` is an alias (else None). bitsandbytes quantises while `from_pretrained`
    reads the weights, so an alias built in memory (tiny-llama's random weights) is refused."""
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
    import torch
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
