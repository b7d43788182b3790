"""The plugin's commands: `lmlab pretrain` (core's trainer options plus the corpus, architecture and monitoring ones)
and `lmlab tokenizer train`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import typer

from lmlab.core.commands import options as o
from lmlab.core.commands.options import MODEL_AND_DATA, TrainOptions, option
from lmlab.core.files.atomic import atomic_dir
from lmlab.core.files.records import example
from lmlab.core.files.runs import new_run_path
from lmlab.core.kernel.console import err, print_json, set_quiet
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.training.report import summary_table
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


pretrain = trainer_command(
    PretrainOptions, "lmlab.plugins.pretrain.train:PretrainTrainer",
    doc="Pre-train a small language model from scratch (any registered architecture and attention), logging TEV "
        "(token embedding variability) and validation perplexity.")


def tokenizer_train(
    data: Annotated[str | None, typer.Option("--data", "-d", help="Text file, folder of text, JSONL/CSV/Parquet with "
                    "a text field, saved HF dataset or Hub id (default: bundled Tiny Shakespeare).",
                    show_default=False)] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=257, help="Vocabulary size, <|endoftext|> "
                          "included (a small corpus may stop short of it).")] = 4096,
    output_dir: o.OutputDirOpt = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text in record files.")] = "text",
    json_output: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Train a byte-level BPE tokenizer (Hugging Face format) on a corpus and report how well it compresses."""
    from transformers import AutoTokenizer

    from lmlab.core.training.text_corpus import encode, read_texts, train_tokenizer

    set_quiet(quiet)
    source = data or str(example("pretrain/tinyshakespeare.txt"))
    target = new_run_path("tokenizer", output_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LmlabError(f"{target}: already exists and is not an empty folder.",
                         hint="choose another --output-dir, or leave it out for runs/tokenizer-<timestamp>")
    if target.exists():
        target.rmdir()  # atomic_dir renames a finished folder into place
    texts = [text for _, text in read_texts(source, text_field=text_field)]
    start = time.perf_counter()
    atomic_dir(target, lambda tmp: train_tokenizer(texts, vocab_size, tmp))
    seconds = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    tokens = sum(len(ids) for batch in encode(tokenizer, texts) for ids in batch)
    characters = sum(len(text) for text in texts)
    summary = {"command": "tokenizer train", "output_dir": str(target), "data": source,
               "vocab_size": len(tokenizer), "requested_vocab_size": vocab_size, "documents": len(texts),
               "characters": characters, "tokens": tokens, "chars_per_token": round(characters / max(tokens, 1), 3),
               "train_seconds": round(seconds, 3)}
    if json_output:
        print_json(summary)
    elif not quiet:
        err.print(summary_table("tokenizer train", summary))
        err.print(f"use it with: lmlab pretrain --tokenizer {target}")
