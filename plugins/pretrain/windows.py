"""The token windows `lmlab bench pretrain` trains every system on: the bundled Tiny Shakespeare tokenised as
`lmlab pretrain` does, and each step's windows in PretrainTask's own seeded order
(docs/benchmarks.md#pre-training-vs-hugging-face-gpt-2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.core.bench.worker import tensors_sha256


def prepare_windows(settings: dict[str, Any], n_steps: int) -> dict[str, Any]:
    """Tokenise the corpus (BPE of settings["vocab_size"] trained on it and cached, tokens memory-mapped and cached)
    and pick the windows of `n_steps` full batches; sets the settings' vocabulary size and data description and
    returns what only the workers read (`tokens_dir`, `order`, …)."""
    from lmlab.core.files.records import example
    from lmlab.core.models.loading import cache_dir
    from lmlab.core.training.text_corpus import check_length, read_texts, resolve_tokenizer, tokenize_corpus
    from lmlab.plugins.pretrain.task import PretrainTask

    corpus, batch_size = example("pretrain/tinyshakespeare.txt"), settings["batch_size"]
    texts = read_texts(str(corpus))
    tokenizer = resolve_tokenizer(None, [t for _, t in texts], settings["vocab_size"], cache_dir() / "tokenizers")
    train_tokens, val_tokens, meta = tokenize_corpus([t for _, t in texts], tokenizer, cache_dir() / "tokens",
                                                     sources=[origin for origin, _ in texts])
    check_length(train_tokens, val_tokens, settings["block_size"], str(corpus))
    task = PretrainTask(train_tokens, val_tokens, block_size=settings["block_size"], seed=settings["seed"],
                        batch_size=batch_size)
    order: list[list[int]] = []
    epoch = 0
    while len(order) < n_steps:
        order += [b for b in task.batches(epoch, batch_size) if len(b) == batch_size]
        epoch += 1
    settings.update(vocab_size=len(tokenizer), data=f"examples/pretrain/tinyshakespeare.txt, {meta['train_tokens']:,} "
                    f"training tokens (byte-level BPE, {len(tokenizer):,} tokens); PretrainTask's seeded windows")
    return {"tokens_dir": meta["path"], "tokens_dtype": meta["dtype"], "train_tokens": meta["train_tokens"],
            "order": order[:n_steps]}


def windows_task(settings: dict[str, Any], tev_every: int) -> tuple[Any, list[dict[str, Any]], str]:
    """In a worker: PretrainTask over the memory-mapped training tokens `prepare_windows` wrote (TEV every
    `tev_every` steps, no evaluation), the run's batches collated by it, and their fingerprint."""
    import numpy as np

    from lmlab.plugins.pretrain.task import PretrainTask

    tokens = np.memmap(Path(settings["tokens_dir"]) / "train.bin", dtype=settings["tokens_dtype"], mode="r",
                       shape=(settings["train_tokens"],))
    task = PretrainTask(tokens, tokens, block_size=settings["block_size"], seed=settings["seed"], tev_every=tev_every,
                        eval_every=0, batch_size=settings["batch_size"])
    batches = [task.collate(indices) for indices in settings["order"]]
    return task, batches, tensors_sha256((f"{i}.{key}", batch[key]) for i, batch in enumerate(batches)
                                         for key in ("input_ids", "targets"))
