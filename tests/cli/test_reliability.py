"""Bad options and early Ctrl-C end a run cleanly: exit 2 (or 130) with one message, no traceback, and nothing
slow (reading, tokenising, loading, retrying) done first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize(("args", "words"), [
    (("--attn-opt", "rank=0"), ["--attn-opt", "rank", "--attn mha takes no options"]),
    (("--attn", "nonsense"), ["nonsense", "registered: mha, mlra"]),
    (("--attn", "mlra", "--attn-opt", "rank=0"), ["MLRA rank", "'0'", "rank=INT"]),
    (("--attn", "mlra", "--attn-opt", "size=3"), ["size", "rank=INT", "targets=q,k,v,o"]),
    (("--lr", "inf"), ["--lr", "inf"]),
    (("--lr", "0"), ["--lr", "above 0"]),
    (("--max-grad-norm", "inf"), ["--max-grad-norm", "inf"]),
    (("--weight-decay", "inf"), ["--weight-decay", "inf"]),
])
def test_bad_model_and_optimizer_options_stop_before_the_corpus_is_read(tmp_path: Path, args: tuple[str, ...],
                                                                         words: list[str]) -> None:
    corpus = tmp_path / "fresh.txt"
    corpus.write_text("A corpus no run has tokenised yet, so any token cache would be this run's.\n" * 200)
    home = tmp_path / "home"
    start = time.monotonic()
    proc = run_cli("pretrain", "--data", str(corpus), "-o", str(tmp_path / "run"), *args,
                   env={"LMLAB_HOME": str(home)})
    assert_usage_error(proc, *words)
    assert not (home / "tokens").exists() and not (home / "tokenizers").exists()
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - start < 30  # a fresh interpreter on a busy machine, but no tokenising or training


def test_val_fraction_zero_is_refused_by_the_option_bound(tmp_path: Path) -> None:
    proc = run_cli("pretrain", "--val-fraction", "0", "-o", str(tmp_path / "run"),
                   env={"LMLAB_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    assert "--val-fraction" in proc.stderr and "0.01" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(("name", "content", "words"), [
    ("bad.yaml", b"max-steps: 3\nlr: \xff\xfe\n", ["bad.yaml", "not UTF-8", "line 2"]),
    ("bad.yaml", b"max-steps: 3\nlr: [1e-5\nseed: 1\n", ["bad.yaml", "line 3, column 5"]),
    ("bad.json", b'{"max-steps": 3,\n "lr": }', ["bad.json", "line 2, column 8"]),
    ("bad.toml", b"max-steps = 3\nlr = \n", ["bad.toml", "line 2, column 6"]),
])
def test_unreadable_config_files_name_the_file_and_the_place(tmp_path: Path, name: str, content: bytes,
                                                             words: list[str]) -> None:
    config = tmp_path / name
    config.write_bytes(content)
    proc = run_cli("train-orpo", "--config", str(config), "-o", str(tmp_path / "run"))
    assert_usage_error(proc, *words)


def test_an_unknown_plugin_name_in_lmlab_plugins_is_warned_about(tmp_path: Path) -> None:
    proc = run_cli("plugins", "--json", env={"LMLAB_PLUGINS": "orpo,typo"})
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    assert "'typo'" in warnings[0] and "orpo" in warnings[0] and "pretrain" in warnings[0]


def test_a_base_url_that_is_not_a_url_is_refused_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run_cli("eval", "holism", "--backend", "openai", "--model", "m", "--base-url", "notaurl",
                   "-o", str(tmp_path / "run"))
    assert_usage_error(proc, "--base-url 'notaurl'", "http://127.0.0.1:8000/v1")
    assert time.monotonic() - start < 30  # five retries with backoff would be the bug


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(tmp_path: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "train-orpo", "-o", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LMLAB_HOME": str(tmp_path / "home")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as at a terminal
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr


def test_ctrl_c_during_training_still_saves_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "train-orpo", "--max-steps", "400",
                             "--save-every", "1000", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LMLAB_HOME": str(tmp_path / "home")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Interrupted at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert list((out / "checkpoints").glob("step-*/state.json"))
