"""`lmlab tokenizer train`: a byte-level BPE trained on a corpus, saved for `lmlab pretrain --tokenizer DIR`."""

from __future__ import annotations

from typing import Annotated

import typer

from lmlab.core.commands import options as o
from lmlab.core.kernel.console import err, print_json, set_quiet


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
    import time

    from transformers import AutoTokenizer

    from lmlab.core.files.atomic import atomic_dir
    from lmlab.core.files.records import example
    from lmlab.core.files.runs import new_run_path
    from lmlab.core.kernel.errors import LmlabError
    from lmlab.core.training.report import summary_table
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
