"""The text corpus (core.training.text_corpus): every source kind reads, tokenizers train deterministically, tokens are
cached, and empty, binary or too-short corpora fail with a DataError that names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.core.files.records import example
from lmlab.core.kernel.errors import DataError, LmlabError, ModelError
from lmlab.core.training import text_corpus as corpus
from lmlab.core.training.text_corpus import (
    check_length,
    read_texts,
    resolve_tokenizer,
    tokenize_corpus,
    train_tokenizer,
)
from tests.conftest import CORPUS_DOCS as DOCS


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return train_tokenizer(DOCS, 300, tmp_path_factory.mktemp("tok"))


def test_a_text_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\ufeffhello world\n", encoding="utf-8")
    assert read_texts(str(path)) == [(str(path), "hello world\n")]


def test_a_folder_reads_text_and_record_files_sorted_and_skips_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# notes")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text(json.dumps({"text": "gamma"}) + "\n")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / "script.py").write_text("print()")
    texts = read_texts(str(tmp_path))
    assert [text for _, text in texts] == ["alpha", "# notes", "gamma"]
    assert texts[2][0] == str(tmp_path / "sub" / "c.jsonl")


def test_record_files_and_saved_datasets_use_the_text_field(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": "first"}, {"body": "second"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.csv").write_text("body\nfirst\nsecond\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    for name in ("r.jsonl", "r.json", "r.csv", "r.parquet", "saved"):
        texts = read_texts(str(tmp_path / name), text_field="body")
        assert [text for _, text in texts] == ["first", "second"], name


def test_a_missing_text_field_names_the_file_and_the_option(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(DataError, match="r.jsonl:1") as info:
        read_texts(str(path))
    assert "--text-field" in info.value.hint and "content" in info.value.hint


def test_the_bundled_corpus_reads() -> None:
    ((origin, text),) = read_texts(str(example("pretrain/tinyshakespeare.txt")))
    assert origin.endswith("tinyshakespeare.txt") and text.startswith("First Citizen:") and len(text) > 1_000_000


@pytest.mark.parametrize("content", [b"", b" \n\t\n"])
def test_an_empty_corpus_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.txt: is empty"):
        read_texts(str(path))


def test_a_folder_without_corpus_files_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("pass")
    with pytest.raises(DataError, match="contains no text or record files"):
        read_texts(str(tmp_path))


def test_a_missing_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        read_texts(str(tmp_path / "nope.txt"))


def test_an_unreachable_hub_id_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no-such-owner/no-such-corpus: could not be loaded"):
        read_texts("no-such-owner/no-such-corpus")


@pytest.mark.parametrize(("content", "offset"), [(b"\x00\x01\x02\x03binary", 0), (b"text then \xff\xfe", 10)])
def test_a_binary_file_is_a_data_error_with_the_offset(tmp_path: Path, content: bytes, offset: int) -> None:
    path = tmp_path / "blob.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"blob\.txt: looks binary .* offset {offset}\)"):
        read_texts(str(path))


def test_invalid_utf8_after_the_first_8kb_is_reported_as_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "late.txt"
    path.write_bytes(b"a" * 9000 + b"\xff")
    with pytest.raises(DataError, match="is not valid UTF-8 text .* offset 9000"):
        read_texts(str(path))


def test_tokenizer_training_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    train_tokenizer(DOCS, 300, tmp_path / "one")
    train_tokenizer(DOCS, 300, tmp_path / "again")
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "again"))
    assert loaded.eos_token == loaded.bos_token == "<|endoftext|>"
    for text in [*DOCS[:4], "unseen: Ωmega ßtraße \x7f"]:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
        assert loaded.eos_token_id not in ids


def test_a_vocabulary_below_the_byte_alphabet_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="too small"):
        train_tokenizer(DOCS, 100, tmp_path / "tok")


def test_resolve_trains_once_per_corpus_and_vocab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_tokenizer(None, DOCS, 300, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    def fail(*args: object) -> None:
        raise AssertionError("retrained")

    monkeypatch.setattr(corpus, "train_tokenizer", fail)
    assert resolve_tokenizer(None, DOCS, 300, tmp_path).get_vocab() == first.get_vocab()
    with pytest.raises(AssertionError, match="retrained"):
        resolve_tokenizer(None, DOCS[:2], 300, tmp_path)


def test_resolve_loads_a_tokenizer_folder_and_refuses_unknown_specs(tmp_path: Path, tokenizer) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    assert resolve_tokenizer(str(tmp_path / "tok"), [], 0, tmp_path / "cache").get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ModelError, match="Unknown tokenizer"):
        resolve_tokenizer(str(tmp_path), [], 0, tmp_path / "cache")


def test_tokenize_corpus_writes_memmaps_once_and_reuses_them(tmp_path: Path, tokenizer) -> None:
    train, val, meta = tokenize_corpus(DOCS, tokenizer, tmp_path, 0.25, sources=["a.txt"] * len(DOCS))
    eos = tokenizer.eos_token_id
    expected = [i for doc in DOCS for i in (*tokenizer(doc, add_special_tokens=False)["input_ids"], eos)]
    n_val = round(len(expected) * 0.25)
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and val.dtype == np.uint16
    assert train.tolist() + val.tolist() == expected and len(val) == n_val
    assert meta["reused"] is False and meta["sources"] == ["a.txt"] and meta["documents"] == len(DOCS)
    assert (meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == (len(train), n_val, len(tokenizer))
    folder = Path(meta["path"])
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    train2, val2, meta2 = tokenize_corpus(DOCS, tokenizer, tmp_path, 0.25)
    assert meta2["reused"] is True and meta2["path"] == meta["path"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert np.array_equal(train2, train) and np.array_equal(val2, val)
    _, _, other = tokenize_corpus(DOCS, tokenizer, tmp_path, 0.1)
    assert other["reused"] is False and other["path"] != meta["path"]


class _BigVocab:
    """Just enough of a tokenizer for a vocabulary that needs 32-bit ids."""

    eos_token_id, name_or_path = 70_000, "big"

    def __len__(self) -> int:
        return 70_001

    def get_vocab(self) -> dict[str, int]:
        return {"<eos>": 70_000}

    def __call__(self, texts: list[str], **kwargs: object) -> dict[str, list[list[int]]]:
        return {"input_ids": [[66_000 + len(text)] for text in texts]}


def test_a_vocabulary_over_65536_uses_uint32(tmp_path: Path) -> None:
    train, val, meta = tokenize_corpus(["ab", "abc"], _BigVocab(), tmp_path, 0.5)
    assert meta["dtype"] == "uint32" and train.tolist() == [66_002, 70_000] and val.tolist() == [66_003, 70_000]


def test_a_too_short_corpus_names_the_file_and_sizes(tmp_path: Path, tokenizer) -> None:
    train, val, _ = tokenize_corpus(DOCS[:1], tokenizer, tmp_path)
    with pytest.raises(DataError, match=rf"short\.txt: too short for --block-size 64: {len(train)} training and "
                                        rf"{len(val)} validation tokens") as info:
        check_length(train, val, 64, "short.txt")
    assert "--block-size" in info.value.hint
    check_length(train, val, len(val) - 1, "short.txt")
