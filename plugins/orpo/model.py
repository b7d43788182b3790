"""The model `train-orpo` trains: all weights, LoRA adapters (--lora), or LoRA on a 4-bit base (--load-in-4bit),
with gradient checkpointing (--gradient-checkpointing) as TRL's ORPOTrainer sets it up."""

from __future__ import annotations

import warnings
from typing import Any

from lmlab.core.kernel.errors import LmlabError, require

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
