"""`lmlab train-orpo`'s options: the trainer options of core plus ORPO's own, one field per flag."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.core.commands.options import MODEL_AND_DATA, TRAINING, TrainOptions, option
from lmlab.core.training.trainer import trainer_command


@dataclass
class OrpoOptions(TrainOptions):
    schedule: str = "inverse_sqrt"
    warmup_steps: int = 10
    model: str = option("tiny-llama", "Model alias, local HF folder, or Hub id.", flags=("--model", "-m"),
                        panel=MODEL_AND_DATA)
    data: str | None = option(None, "Preference rows: JSONL/JSON/CSV/Parquet, a saved HF dataset, or a Hub id "
                              "(default: bundled examples/orpo/preferences.jsonl).", flags=("--data", "-d"),
                              panel=MODEL_AND_DATA)
    eval_data: str | None = option(None, "Held-out preference rows (the formats of --data): the ORPO loss and TRL's "
                                   "eval metrics (eval_loss, eval_rewards/accuracies, …) every --eval-every steps "
                                   "and after the last.", panel=MODEL_AND_DATA)
    eval_every: int = option(0, "Score --eval-data every N optimizer steps (0: only after the last step).", min=0,
                             panel=TRAINING)
    max_length: int = option(512, "Longest sequence in tokens.", min=2, panel=MODEL_AND_DATA)
    max_prompt_length: int | None = option(None, "Keep only the last N prompt tokens (default: never cut "
                                           "prompts).", min=1, panel=MODEL_AND_DATA)
    bos: str = option("auto", "Special tokens: auto = the tokenizer's own convention; always = TRL's (BOS first, "
                      "EOS last, as its ORPOTrainer does); never = no BOS added by the tokenizer.",
                      panel=MODEL_AND_DATA)
    trust_remote_code: bool = option(False, "Allow model code from the Hub (off: safer).", negatable=False,
                                     panel=MODEL_AND_DATA)
    beta: float = option(0.1, "λ, weight of the odds-ratio term.", min=0.0)
    prompt_loss: bool = option(True, "Include prompt tokens in the NLL term (the authors' default).")
    lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.", panel=TRAINING)
    lora_r: int = option(16, "LoRA rank.", min=1, panel=TRAINING)
    lora_alpha: int = option(32, "LoRA alpha.", min=1, panel=TRAINING)
    load_in_4bit: bool = option(False, "QLoRA: base weights in 4-bit NF4 through bitsandbytes (double quantisation, "
                                "bf16 compute), LoRA adapters trained on top (implies --lora); needs a CUDA GPU and "
                                "an HF folder or Hub id.", negatable=False, panel=TRAINING)
    gradient_checkpointing: bool = option(False, "Recompute each decoder layer's activations in the backward instead "
                                          "of keeping them: less memory for long sequences, a slower step.",
                                          negatable=False, panel=TRAINING)


train_orpo = trainer_command(
    OrpoOptions, "lmlab.plugins.orpo.train:OrpoTrainer",
    doc="Preference-train a causal LM with ORPO (no reference model): NLL on chosen + λ·odds-ratio loss.")
