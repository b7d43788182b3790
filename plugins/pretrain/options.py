"""`lmlab pretrain`'s options: the trainer options of core plus the corpus, architecture and monitoring ones."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.core.commands.options import MODEL_AND_DATA, TrainOptions, option
from lmlab.core.training.trainer import trainer_command


@dataclass
class PretrainOptions(TrainOptions):
    max_steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.1
    save_every: int = 100
    data: str | None = option(None, "Text file, folder of text, JSONL/CSV/Parquet with a text field, saved HF "
                              "dataset or Hub id (default: bundled Tiny Shakespeare).", flags=("--data", "-d"),
                              panel=MODEL_AND_DATA)
    text_field: str = option("text", "Field holding the text in record files.", panel=MODEL_AND_DATA)
    tokenizer: str | None = option(None, "Tokenizer folder or model alias (default: train a byte-level BPE on the "
                                   "corpus, cached).", panel=MODEL_AND_DATA)
    vocab_size: int = option(4096, "Vocabulary of a trained tokenizer.", min=260, panel=MODEL_AND_DATA)
    val_fraction: float = option(0.1, "Share of tokens held out for validation (at least 0.01: perplexity and "
                                 "TEV need held-out windows).", min=0.01, max=0.5, panel=MODEL_AND_DATA)
    arch: str = option("gpt", "Architecture (from register_architectures): gpt, block, …", panel=MODEL_AND_DATA)
    arch_opt: list[str] = option([], "Architecture option KEY=VALUE, repeatable (`lmlab plugins` lists the "
                                 "architectures; each names its keys in its error on a wrong one).",
                                 panel=MODEL_AND_DATA)
    attn: str = option("mha", "Attention (from register_attention): mha, mlra, …", panel=MODEL_AND_DATA)
    attn_opt: list[str] = option([], "Attention option KEY=VALUE, repeatable (mlra: rank=N, targets=q,k,v).",
                                 panel=MODEL_AND_DATA)
    n_layer: int = option(4, "Transformer blocks.", min=1, panel=MODEL_AND_DATA)
    n_head: int = option(4, "Attention heads.", min=1, panel=MODEL_AND_DATA)
    n_embd: int = option(128, "Model width.", min=8, panel=MODEL_AND_DATA)
    block_size: int = option(128, "Context length in tokens.", flags=("--block-size", "--max-length"), min=8,
                             panel=MODEL_AND_DATA)
    dropout: float = option(0.0, "Dropout.", min=0.0, max=0.9, panel=MODEL_AND_DATA)
    tev_every: int = option(1, "Log TEV every N steps (0: off).", min=0)
    grad_var_every: int = option(0, "Measure the embedding-gradient variance across micro-batches every N steps "
                                 "(expensive; 0: off).", min=0)
    eval_every: int = option(50, "Validation loss every N steps.", min=0)


#: The command (`lmlab pretrain`).
pretrain = trainer_command(
    PretrainOptions, "lmlab.plugins.pretrain.train:PretrainTrainer",
    doc="Pre-train a small language model from scratch (any registered architecture and attention), logging TEV "
        "(token embedding variability) and validation perplexity.")
