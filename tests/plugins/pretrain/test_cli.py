"""`lmlab pretrain` / `generate` / `tokenizer train` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli, straight_and_resumed

SMALL = ("--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--block-size", "32", "--batch-size", "8",
         "--vocab-size", "512", "--eval-every", "5")


def test_default_pretrain_writes_loss_perplexity_and_tev(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("pretrain", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["attn"] == "mha" and summary["steps"] == 100
    assert summary["val_ppl"] < 4096 / 4  # well below a uniform guess over the vocabulary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("tev_mean" in r and "tev_std" in r for r in rows)
    assert sum("val_loss" in r for r in rows) == 2
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert (out / "training.png").exists() and (out / "model" / "model.safetensors").exists()
    text = run_cli("generate", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--json")
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout)["completion"]


def test_mlra_run_and_grad_variance(tmp_path: Path, corpus: Path) -> None:
    result = run_cli("pretrain", "--attn", "mlra", "--data", str(corpus), *SMALL, "--max-steps", "10",
                     "--grad-var-every", "5", "--json", "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["attn"] == "mlra" and summary["attn_options"] == {"rank": 21, "targets": ["q", "k", "v"]}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "emb_grad_var" in r] == [5, 10]
    assert all(r["emb_grad_var"] > 0 for r in rows if "emb_grad_var" in r)


@pytest.mark.parametrize(("content", "args", "expected"), [
    (b"", (), ["corpus.txt", "empty"]),
    (b"\x00\x01\x02binary\xff\xfe" * 40, (), ["corpus.txt", "binary"]),
    (b"too short a text", ("--block-size", "64"), ["corpus.txt", "block"]),
])
def test_bad_corpora_are_exit_2(tmp_path: Path, content: bytes, args: tuple[str, ...], expected: list[str]) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    result = run_cli("pretrain", "--data", str(path), "--vocab-size", "300", *args, "-o", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr.lower() or fragment in result.stderr, result.stderr


def test_bad_attention_options_are_exit_2(tmp_path: Path, corpus: Path) -> None:
    result = run_cli("pretrain", "--attn", "mlra", "--attn-opt", "rank=zero", "--data", str(corpus), *SMALL,
                     "-o", str(tmp_path / "r"))
    assert result.returncode == 2 and "rank" in result.stderr
    result = run_cli("pretrain", "--attn", "nope", "--data", str(corpus), "-o", str(tmp_path / "r2"))
    assert result.returncode == 2 and "mlra" in result.stderr  # the hint lists what is registered


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path: Path, corpus: Path) -> None:
    common = ("pretrain", "--attn", "mlra", "--data", str(corpus), *SMALL, "--max-steps", "16", "--save-every", "2")
    a, b, killed, _ = straight_and_resumed(common, tmp_path, 4, "model/model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))


def test_tokenizer_train_command(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "tok"
    result = run_cli("tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--output-dir", str(out),
                     "--json")
    assert result.returncode == 0, result.stderr
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("the king")["input_ids"]) == "the king"


def test_bf16_autocast_trains_like_fp32(tmp_path: Path, corpus: Path) -> None:
    import torch

    runs = {}
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            result = run_cli("pretrain", "--data", str(corpus), *SMALL, "--precision", "bf16")
            assert result.returncode == 2 and "bfloat16" in result.stderr
            return
        result = run_cli("pretrain", "--data", str(corpus), *SMALL, "--max-steps", "10", "--precision", precision,
                         "--json", "-o", str(tmp_path / precision))
        assert result.returncode == 0, result.stderr
        runs[precision] = json.loads(result.stdout)
        config = json.loads((tmp_path / precision / "config.json").read_text())
        assert config["options"]["precision"] == precision
    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast computes in bf16, stores fp32
    assert runs["bf16"]["val_loss"] == pytest.approx(runs["fp32"]["val_loss"], abs=0.05)
    bad = run_cli("pretrain", "--precision", "fp8")
    assert bad.returncode == 2 and "--precision" in bad.stderr
