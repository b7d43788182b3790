"""A text corpus for pre-training any architecture: read text from files, folders, record files or datasets;
train or load a tokenizer (a trained one cached by corpus and vocabulary); tokenise once into memory-mapped
train/val token files that later runs reuse; and cut those files into next-token training windows."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmlab.core.files.atomic import atomic_dir
from lmlab.core.files.records import FILE_FORMATS, HF_MARKERS, load_records
from lmlab.core.kernel.errors import DataError, LmlabError, ModelError
from lmlab.core.models.loading import finish_tokenizer, model_aliases

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TEXT_SUFFIXES = (".txt", ".md")
CORPUS_SUFFIXES = (*TEXT_SUFFIXES, *FILE_FORMATS)
SOURCES = ("pass a .txt/.md file, a folder of text or record files, a .jsonl/.json/.csv/.parquet file with a "
           "text field, a saved Hugging Face dataset folder, or a Hub id like owner/name")
SNIFF_BYTES = 8192
EOT = "<|endoftext|>"
MIN_VOCAB = 257  # the 256 byte-level symbols plus <|endoftext|>
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
SMOLLM2_ALIASES = ("smollm2-135m", "tiny-llama")  # their tokenizer loads without building the model
TOKENS_FORMAT = "tokens-v1"
BATCH_DOCS = 256


def read_texts(source: str, *, text_field: str = "text") -> list[tuple[str, str]]:
    """(origin, text) for every document in `source`; DataError naming the file on any problem."""
    path = Path(source).expanduser()
    if path.is_dir() and not _is_saved_dataset(path):
        files = _corpus_files(path)
        if not files:
            raise DataError("contains no text or record files", path=source, hint=SOURCES)
        texts = [pair for file in files for pair in _read_one(file, text_field)]
    elif path.exists() or (source.count("/") == 1 and path.suffix.lower() not in CORPUS_SUFFIXES):
        texts = _read_one(path if path.exists() else source, text_field)
    else:
        raise DataError("no such file or directory", path=source, hint=SOURCES)
    if not any(text.strip() for _, text in texts):
        raise DataError("is empty: it holds no text", path=source, hint="add some text (whitespace does not count)")
    return texts


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in HF_MARKERS)


def _corpus_files(folder: Path) -> list[Path]:
    """Text and record files under `folder` (hidden ones skipped); a nested saved dataset counts as one source."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        if here != folder and _is_saved_dataset(here):
            dirs.clear()
            found.append(here)
            continue
        found += [here / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in CORPUS_SUFFIXES]
    return sorted(found)


def _read_one(source: Path | str, text_field: str) -> list[tuple[str, str]]:
    if isinstance(source, Path) and source.is_file() and source.suffix.lower() not in FILE_FORMATS:
        return [(str(source), _read_text_file(source))]
    try:
        records = load_records(source, required=(text_field,))
    except DataError as e:
        if e.field == text_field:
            e.hint = f"{e.hint}; name the field that holds the text with --text-field"
        raise
    return [(record.path, record.get(text_field, str)) for record in records]


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot be read ({e.strerror})", path=str(path)) from None
    hint = "the corpus must be UTF-8 text: re-save the file as UTF-8, or leave binary files out"
    head = raw[:SNIFF_BYTES]
    if b"\x00" in head:
        raise DataError(f"looks binary (a NUL byte at offset {head.index(0)})", path=str(path), hint=hint)
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        what = "looks binary (invalid" if e.start < SNIFF_BYTES else "is not valid UTF-8 text (invalid"
        raise DataError(f"{what} UTF-8 at offset {e.start})", path=str(path), hint=hint) from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE with <|endoftext|> as bos/eos/pad, saved to `out_dir`; the same texts give the same one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise LmlabError(f"A vocabulary of {vocab_size} is too small for a byte-level BPE.",
                         hint=f"use --vocab-size {MIN_VOCAB} or more (256 bytes + {EOT}); 4096 suits small corpora")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, pad_token=EOT)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def resolve_tokenizer(spec: str | None, texts: Sequence[str], vocab_size: int, cache: Path) -> Any:
    """None: a BPE trained on `texts` (cached under `cache`); else a model alias, a tokenizer folder, or a Hub id."""
    if spec is None:
        target = cache / f"bpe-{vocab_size}-{_hash(texts)[:16]}"
        if not target.exists():
            atomic_dir(target, lambda tmp: train_tokenizer(texts, vocab_size, tmp))
        return _load_tokenizer(str(target), str(target))
    if spec in SMOLLM2_ALIASES:
        from lmlab.core.models.presets import smollm2_tokenizer

        return finish_tokenizer(smollm2_tokenizer())
    aliases = model_aliases()
    if spec in aliases:
        return finish_tokenizer(aliases[spec].build(0)[1])
    path = Path(spec).expanduser()
    if path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES):
        return _load_tokenizer(str(path), spec)
    if not path.exists() and spec.count("/") == 1:
        return _load_tokenizer(spec, spec)
    raise ModelError(
        f"Unknown tokenizer '{spec}': not a model alias, a folder with tokenizer files, or a Hub id.",
        hint="leave --tokenizer out to train one on the corpus, pass a folder from `lmlab tokenizer train`, "
             f"or an alias: {', '.join(sorted(aliases))}")


def _load_tokenizer(name: str, spec: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return finish_tokenizer(AutoTokenizer.from_pretrained(name))
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load tokenizer '{spec}' ({str(e).strip().splitlines()[0]}).",
                         hint="no network here? pass a local folder with tokenizer.json, or leave --tokenizer out "
                              "to train one on the corpus") from e


def encode(tokenizer: Any, texts: Sequence[str]) -> Iterator[list[list[int]]]:
    """Token ids of each text (no special tokens), a batch of documents at a time."""
    for start in range(0, len(texts), BATCH_DOCS):
        batch = list(texts[start:start + BATCH_DOCS])
        yield tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize_corpus(texts: Sequence[str], tokenizer: Any, cache: Path, val_fraction: float = 0.1, *,
                    sources: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Memory-mapped (train, val) token streams and their metadata, tokenised once and reused after: documents are
    joined with (and each ended by) the eos token, the last `val_fraction` of the stream is the validation split, and
    the files live under `cache` in a folder keyed by the corpus, the tokenizer and the split (meta["reused"]: whether
    this call found them there)."""
    if not 0 <= val_fraction < 1:
        raise LmlabError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}.",
                         hint="0.1 holds out the last tenth of the tokens")
    if tokenizer.eos_token_id is None:
        raise ModelError(f"Tokenizer '{tokenizer.name_or_path}' has no end-of-text (eos) token to join documents.",
                         hint="leave --tokenizer out to train one on the corpus")
    key = _hash([TOKENS_FORMAT, _hash(texts), _tokenizer_hash(tokenizer), repr(val_fraction)])
    target = cache / key[:16]
    reused = target.exists()
    if not reused:
        atomic_dir(target, lambda tmp: _write_tokens(tmp, texts, tokenizer, val_fraction, sources))
    meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    train = _open_tokens(target / "train.bin", meta["dtype"], meta["train_tokens"])
    val = _open_tokens(target / "val.bin", meta["dtype"], meta["val_tokens"])
    return train, val, {**meta, "reused": reused, "path": str(target)}


def _write_tokens(folder: Path, texts: Sequence[str], tokenizer: Any, val_fraction: float,
                  sources: Sequence[str]) -> None:
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)
    eos, total, start = [tokenizer.eos_token_id], 0, time.perf_counter()
    stream = folder / "all.bin"
    with stream.open("wb") as out:
        for batch in encode(tokenizer, texts):
            ids = np.fromiter(itertools.chain.from_iterable(doc + eos for doc in batch), dtype=dtype)
            ids.tofile(out)
            total += len(ids)
    n_train = total - round(total * val_fraction)
    tokens = _open_tokens(stream, dtype.name, total)
    tokens[:n_train].tofile(folder / "train.bin")
    tokens[n_train:].tofile(folder / "val.bin")
    del tokens
    stream.unlink()
    meta = {"format": TOKENS_FORMAT, "dtype": dtype.name, "train_tokens": n_train, "val_tokens": total - n_train,
            "vocab_size": len(tokenizer), "eos_token_id": eos[0], "documents": len(texts),
            "characters": sum(len(text) for text in texts), "val_fraction": val_fraction,
            "tokenizer": tokenizer.name_or_path, "sources": list(dict.fromkeys(sources)),
            "tokenize_seconds": round(time.perf_counter() - start, 3)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _open_tokens(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:  # numpy cannot memory-map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def check_length(train_tokens: np.ndarray, val_tokens: np.ndarray, block_size: int, path: str) -> None:
    """DataError unless each split holds at least one window of block_size + 1 tokens."""
    need = block_size + 1
    if len(train_tokens) < need or len(val_tokens) < need:
        raise DataError(
            f"too short for --block-size {block_size}: {len(train_tokens):,} training and {len(val_tokens):,} "
            f"validation tokens, and each split needs at least {need:,}",
            path=path, hint="lower --block-size or add more text (validation is the last --val-fraction of it)")


def _hash(texts: Iterable[str]) -> str:
    """SHA-256 of the texts in order, each length-prefixed so that boundaries count."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _tokenizer_hash(tokenizer: Any) -> str:
    """What decides the ids: the backend's model, normaliser, pre-tokenizer and added tokens (or the vocab)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        parts = [json.dumps(spec.get(k), sort_keys=True) for k in ("model", "normalizer", "pre_tokenizer",
                                                                     "added_tokens")]
    else:
        parts = [json.dumps(sorted(tokenizer.get_vocab().items()))]
    return _hash([type(tokenizer).__name__, str(tokenizer.eos_token_id), *parts])


class TokenWindows:
    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.block_size

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """{"input_ids", "targets"}: int64 [len(indices), block_size], the targets shifted by one token."""
        L = self.block_size
        rows = torch.from_numpy(np.stack([self.tokens[i * L:i * L + L + 1] for i in indices]).astype(np.int64))
        return {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}

    def epoch_batches(self, epoch: int, global_batch: int, seed: int) -> list[list[int]]:
        """The epoch's global batches of window indices: a permutation seeded by (seed, epoch), its last batch
        filled up from the start of the permutation so that every batch is full."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        order += [order[i % n] for i in range((-n) % global_batch)]
        return [order[i:i + global_batch] for i in range(0, len(order), global_batch)]

    def evenly_spaced(self, count: int) -> list[int]:
        """Up to `count` window indices spread evenly from the first window to the last."""
        n = len(self)
        return np.linspace(0, n - 1, num=min(n, count)).astype(int).tolist()

    def sample(self, count: int, generator: torch.Generator) -> list[int]:
        """`count` window indices drawn uniformly with replacement."""
        return torch.randint(0, len(self), (count,), generator=generator).tolist()
