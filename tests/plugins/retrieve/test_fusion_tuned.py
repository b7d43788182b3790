"""`lmlab retrieve eval -r fused --tune-weights DEV`: the weights chosen on a dev split are the ones results.json
records, they rank the dev queries at least as well as each member alone, and bad combinations are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.cli.app import main
from tests.conftest import refused, write_jsonl
from tests.plugins.retrieve.conftest import kilt_rows

DEV = [  # other questions about the same pages than the fixture's eval queries
    ("v1", "element once used in thermometers", [["101"]]),
    ("v2", "planet where a year lasts 88 days", [["102"]]),
    ("v3", "programming language by Sun Microsystems", [["104"]]),
    ("v4", "instrument tuned in fifths with four strings", [["105"]]),
    ("v5", "mirrors and lenses to observe distant stars", [["110"]]),
    ("v6", "ice formed from compacted snow", [["109"]]),
]


def _eval(built_index: Path, data: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    with pytest.raises(SystemExit) as exited:
        main(["retrieve", "eval", "--index", str(built_index), "--data", str(data), "-o", str(out), "--json", *extra])
    assert exited.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((out / "results.json").read_text())["results"] == summary["results"]
    return summary["results"]


def test_eval_records_the_weights_tuned_on_the_dev_split(built_index: Path, retrieval_files: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = write_jsonl(tmp_path / "dev.jsonl", kilt_rows(DEV))
    fused = _eval(built_index, retrieval_files["queries"], tmp_path / "eval", capsys, "-r", "fused", "--fuse", "bm25",
                  "--fuse", "dense", "--tune-weights", str(dev))["fused"]
    weights = fused["weights"]
    assert list(weights) == ["bm25", "dense"] and sum(weights.values()) == pytest.approx(1.0)
    assert all(round(10 * w, 9).is_integer() for w in weights.values())  # steps of 0.1
    tuned = fused["tuned"]
    assert tuned["data"] == str(dev) and tuned["queries"] == len(DEV) and tuned["points"] == 11
    # the members alone on the dev split, as `retrieve eval` scores them: the tuned fusion is no worse than either
    alone = _eval(built_index, dev, tmp_path / "dev-eval", capsys, "-r", "bm25", "-r", "dense")
    for name in ("bm25", "dense"):
        assert tuned["alone_r_precision"][name] == pytest.approx(alone[name]["r_precision"])
        assert tuned["r_precision"] >= alone[name]["r_precision"]
    # fusing the dev split with the recorded weights scores what the tuning said
    again = _eval(built_index, dev, tmp_path / "dev-fused", capsys, "-r", "fused", "--fuse", "bm25", "--fuse",
                  "dense", *(arg for w in weights.values() for arg in ("--weights", str(w))))["fused"]
    assert again["r_precision"] == pytest.approx(tuned["r_precision"]) and again["weights"] == weights


def test_tune_weights_beside_weights_or_without_provenance_is_refused(built_index: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dev = write_jsonl(tmp_path / "dev.jsonl", kilt_rows(DEV))
    base = ["retrieve", "eval", "--index", str(built_index), "-r", "fused", "--fuse", "bm25", "--fuse", "dense",
            "-o", str(tmp_path / "eval")]
    err = refused(capsys, *base, "--tune-weights", str(dev), "--weights", "1", "--weights", "2")
    assert "--tune-weights chooses the fused weights itself, so --weights cannot be given with it." in err
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"id": "b1", "input": "closest planet to the sun"}])
    err = refused(capsys, *base, "--tune-weights", str(bare))
    assert f"{bare}: no query has provenance" in err and "gold pages" in err
    assert not (tmp_path / "eval").exists()
