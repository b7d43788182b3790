"""lmlab.core.files.records: each format loads with the right line numbers; each bad input is a DataError naming it."""

from __future__ import annotations

import json

import pytest

from lmlab.core.files.records import Record, SkipLog, load_records
from lmlab.core.kernel.errors import DataError


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def where(records: list[Record]) -> list[tuple[str, int]]:
    return [(r.path.rsplit("/", 1)[-1], r.line) for r in records]


# ---- formats ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_line_numbers_skip_blank_lines(tmp_path, suffix):
    f = write(tmp_path / f"data{suffix}", '{"a": 1}\n\n  \n{"a": 2}\r\n{"a": 3}')
    records = load_records(f)
    assert [r.data["a"] for r in records] == [1, 2, 3]
    assert [r.line for r in records] == [1, 4, 5]
    assert all(r.path == str(f) for r in records)


def test_accepts_pathlike_and_utf8_bom(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes('\ufeff{"a": "é"}\n'.encode())
    assert load_records(f)[0].data == {"a": "é"}


@pytest.mark.parametrize(
    "content",
    [
        [{"a": 1}, {"a": 2}],
        {"data": [{"a": 1}, {"a": 2}]},
        {"version": "1.0", "rows": [{"a": 1}, {"a": 2}]},
    ],
)
def test_json_list_item_index(tmp_path, content):
    f = write(tmp_path / "data.json", json.dumps(content, indent=2))
    records = load_records(str(f))
    assert [(r.data["a"], r.line) for r in records] == [(1, 1), (2, 2)]


def test_csv_header_is_line_one_values_stay_strings(tmp_path):
    f = write(tmp_path / "data.csv", 'prompt,label\nhi,1\n\n"two\nlines",0\nbye,1\n')
    records = load_records(f)
    assert [r.data for r in records] == [
        {"prompt": "hi", "label": "1"},
        {"prompt": "two\nlines", "label": "0"},
        {"prompt": "bye", "label": "1"},
    ]
    assert [r.line for r in records] == [2, 4, 6]


def test_parquet_row_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "data.parquet"
    pq.write_table(pa.table({"a": [10, 20, 30], "b": ["x", "y", None]}), f)
    records = load_records(f)
    assert [(r.data["a"], r.line) for r in records] == [(10, 1), (20, 2), (30, 3)]
    assert records[2].data["b"] is None


def test_directory_concatenates_supported_files_by_name(tmp_path):
    write(tmp_path / "b.jsonl", '{"a": 3}\n')
    write(tmp_path / "a.csv", "a\n1\n2\n")
    write(tmp_path / "notes.txt", "ignored")
    (tmp_path / "sub").mkdir()
    records = load_records(tmp_path)
    assert [r.data["a"] for r in records] == ["1", "2", 3]
    assert where(records) == [("a.csv", 2), ("a.csv", 3), ("b.jsonl", 1)]


def test_directory_without_data_files(tmp_path):
    write(tmp_path / "notes.txt", "x")
    with pytest.raises(DataError, match="no supported data files") as info:
        load_records(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"a": 1}, {"a": 2}]).save_to_disk(tmp_path / "ds")
    records = load_records(tmp_path / "ds")
    assert [(r.data, r.line) for r in records] == [({"a": 1}, 1), ({"a": 2}, 2)]
    assert records[0].path == str(tmp_path / "ds")


def test_saved_dataset_dict_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = {"train": [{"a": 1}], "test": [{"a": 2}, {"a": 3}]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    dd.save_to_disk(tmp_path / "dd")
    assert [r.data["a"] for r in load_records(tmp_path / "dd")] == [1]
    assert [(r.data["a"], r.line) for r in load_records(tmp_path / "dd", split="test")] == [(2, 1), (3, 2)]
    with pytest.raises(DataError, match="no split 'validation'") as info:
        load_records(tmp_path / "dd", split="validation")
    assert "dd" in str(info.value) and "train" in info.value.hint and "test" in info.value.hint


def test_saved_dataset_with_no_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"a": []}).save_to_disk(tmp_path / "none")  # saved as 0 shards
    datasets.Dataset.from_dict({"a": []}).save_to_disk(tmp_path / "one", num_shards=1)
    for name in ["none", "one"]:
        with pytest.raises(DataError, match=f"{name}: is empty"):
            load_records(tmp_path / name)


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, line, message",
    [
        ("empty.jsonl", "", None, "is empty"),
        ("blank.jsonl", "\n  \n\t\n", None, "is empty"),
        ("empty.json", "[]", None, "is empty"),
        ("header.csv", "a,b\n", None, "is empty"),
        ("bad.jsonl", '{"a": 1}\n{"a": 2,,}\n', 2, "line is not valid JSON (Expecting"),
        ("list.jsonl", '{"a": 1}\n\n[1, 2]\n', 3, "expected a JSON object, got list"),
        ("bad.json", '[\n  {"a": 1},\n  {"a": 2\n]\n', 4, "is not valid JSON"),
        ("lines.json", '{"a": 1}\n{"a": 2}\n', 2, "is not valid JSON (Extra data"),
        ("items.json", '[{"a": 1}, "x"]', 2, "expected each list item to be a JSON object, got str"),
        ("scalar.json", "42", None, "expected a list of objects, got int"),
        ("object.json", '{"a": 1}', None, "an object holding one list"),
        ("cols.csv", "a,b\n1,2\n3\n", 3, "expected 2 columns (as in the header), got 1"),
        ("dup.csv", "a,a\n1,2\n", 1, "duplicate column name 'a'"),
        ("quote.csv", 'a,b\n1,2\n3,"open\n4,5\n', 3, "is not valid CSV (unexpected end of data)"),
        ("notes.txt", "hello", None, "unsupported file type '.txt'"),
    ],
)
def test_bad_files_raise_data_error_naming_file_and_line(tmp_path, name, text, line, message):
    f = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        load_records(f)
    err = info.value
    assert message in str(err)
    assert name in str(err) and err.path == str(f)
    assert err.line == line
    if line is not None:
        assert f"{name}:{line}:" in str(err)


def test_not_utf8(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: is not UTF-8"):
        load_records(f)


def test_empty_and_corrupt_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: is empty"):
        load_records(tmp_path / "none.parquet")
    write(tmp_path / "junk.parquet", "not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: is not a readable Parquet file"):
        load_records(tmp_path / "junk.parquet")


@pytest.mark.parametrize("row", ['{"prompt": "hi"}', '{"prompt": "hi", "chosen": null}'])
def test_missing_required_field(tmp_path, row):
    f = write(tmp_path / "pairs.jsonl", '{"prompt": "a", "chosen": "b"}\n' + row + "\n")
    with pytest.raises(DataError) as info:
        load_records(f, required=["prompt", "chosen"])
    err = info.value
    assert "pairs.jsonl:2: field 'chosen': missing required field" in str(err)
    assert (err.line, err.field) == (2, "chosen")
    assert err.hint == "fields present in this row: prompt"
    assert len(load_records(f, required="prompt")) == 2  # a bare string is one field, not its letters


def test_nonexistent_path(tmp_path):
    for missing in [str(tmp_path / "nope.jsonl"), "data/train.jsonl"]:
        with pytest.raises(DataError, match="no such file or directory") as info:
            load_records(missing)
        assert missing in str(info.value) and ".jsonl" in info.value.hint


def test_hub_id_offline_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read these variables at import time, which may already have happened
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_records("lmlab-test-nobody/no-such-dataset")
    err = info.value
    assert "lmlab-test-nobody/no-such-dataset: could not be loaded from the Hugging Face Hub (" in str(err)
    assert "no network?" in err.hint


# ---- Record.get ---------------------------------------------------------------------------------------


def test_record_get():
    r = Record({"text": "hi", "n": 3, "flag": True, "none": None}, "d.jsonl", 7)
    assert r.get("text") == "hi" and r.get("n", int) == 3 and r.get("n", (str, int)) == 3
    assert r.get("flag", bool) is True
    for field in ["absent", "none"]:
        with pytest.raises(DataError, match=f"d.jsonl:7: field '{field}': missing"):
            r.get(field)
    with pytest.raises(DataError, match="d.jsonl:7: field 'text': expected int or float, got str"):
        r.get("text", (int, float))
    with pytest.raises(DataError, match="field 'flag': expected int, got bool"):
        r.get("flag", int)


# ---- SkipLog ------------------------------------------------------------------------------------------


def test_skip_log():
    log = SkipLog()
    assert (log.total, log.summary(), log.as_dict()) == (0, "", {})
    log.add("empty response")
    log.add("tie (label_0 == label_1)", Record({}, "p.jsonl", 4))
    log.add("tie (label_0 == label_1)", Record({}, "p.jsonl", 9))
    assert log.total == 3
    assert log.as_dict() == {"empty response": 1, "tie (label_0 == label_1)": 2}
    assert log.summary() == (
        "skipped 3 rows: 2 × tie (label_0 == label_1) (first at p.jsonl:4), 1 × empty response"
    )
    one = SkipLog()
    one.add("x")
    assert one.summary() == "skipped 1 row: 1 × x"
