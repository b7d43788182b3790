"""`lmlab pretrain --arch block` and `lmlab generate` on its run, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.cli.app import main
from tests.conftest import run_cli, straight_and_resumed

SMALL = ("--arch", "block", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--block-size", "32",
         "--batch-size", "8", "--vocab-size", "512", "--eval-every", "3")


@pytest.mark.parametrize(("args", "message", "hint"), [
    (("--arch-opt", "block_len=3"), "block_len must be one of 1, 2, 4, 8, got 3", "block_len=4"),
    (("--arch-opt", "block_len=8", "--block-size", "100"), "block_len=8 does not divide the context (--block-size "
     "100)", "multiple of 8, e.g. 96"),
    (("--arch-opt", "prefix=0"), "prefix must be at least 1, got 0", "prefix=2"),
    (("--arch-opt", "split=4", "--n-layer", "4"), "split=4 leaves no layer for the token decoder", "1 to 3"),
    (("--arch-opt", "split=0"), "split=0 leaves no layer for the block decoder", "1 to 3"),
    (("--arch-opt", "blocklen=4"), "Unknown --arch-opt key(s) for --arch block: blocklen", "block_len, prefix"),
])
def test_bad_block_options_are_exit_2_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  args: tuple[str, ...], message: str, hint: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--arch", "block", *args, "-o", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())  # Rich may wrap the line
    assert info.value.code == 2 and message in err and hint in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_kill_and_resume_a_block_run_reproduces_the_uninterrupted_weights(tmp_path: Path, corpus: Path) -> None:
    common = ("pretrain", "--data", str(corpus), *SMALL, "--max-steps", "8", "--save-every", "4")
    a, b, killed, _ = straight_and_resumed(common, tmp_path, 4, "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((killed / "model" / "config.json").read_text())
    assert config["arch"] == "block" and config["arch_options"] == {"block_len": 4, "prefix": 2, "split": 1}
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["arch"] == "block" and summary["val_ppl"] < 512
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert all("tev_mean" in r for r in rows) and any("val_loss" in r for r in rows)
    text = run_cli("generate", str(killed), "--prompt", "The king", "--max-new-tokens", "9", "--temperature", "0",
                   "--ignore-eos", "--json")
    assert text.returncode == 0, text.stderr
    out = json.loads(text.stdout)
    assert out["tokens"] == 9 and out["finish_reason"] == "length" and out["completion"]
