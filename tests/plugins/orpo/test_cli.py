"""`lmlab train-orpo` as a user runs it: the run directory, --json, bad input, resume after SIGKILL, the NaN
guard, conversational rows, --config."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import PREFERENCES, run_cli, straight_and_resumed, write_jsonl

FAST = ("--max-length", "64", "--batch-size", "2")


def test_default_run_writes_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train-orpo", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 20 and summary["pairs"] == 80
    for key in ("loss", "nll", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
                "rewards/accuracies", "rewards/margins", "grad_norm", "lr"):
        assert key in summary["final"], key
    assert json.loads((out / "summary.json").read_text())["run_dir"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "train-orpo" and config["options"]["beta"] == 0.1
    assert "torch" in config["versions"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model").eos_token is not None
    assert model.config.hidden_size == 256


@pytest.mark.parametrize(("content", "args", "expected"), [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n', (),
     ["prefs.jsonl:2", "rejected"]),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": "b", "rejected": \n', (),
     ["prefs.jsonl:3", "JSON"]),
    ("", (), ["prefs.jsonl", "empty"]),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "' + "word " * 50 + '", "chosen": "b", '
     '"rejected": "c"}\n', ("--max-length", "16"), ["prefs.jsonl:2", "prompt", "--max-length"]),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', (), ["prefs.jsonl:1", "chosen"]),
])
def test_bad_input_is_one_clear_message_and_exit_2(tmp_path: Path, content: str, args: tuple[str, ...],
                                                    expected: list[str]) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(content)
    result = run_cli("train-orpo", "--data", str(data), "-o", str(tmp_path / "run"), "--max-steps", "1", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in expected:
        assert fragment in error_lines[0], result.stderr
    assert "hint:" in result.stderr


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path: Path, preferences: Path) -> None:
    common = ("train-orpo", "--data", str(preferences), *FAST, "--max-steps", "14", "--save-every", "2",
              "--lr", "1e-3", "--schedule", "cosine", "--warmup-steps", "2")
    a, b, killed, resumed = straight_and_resumed(common, tmp_path, 4, "model/model.safetensors")
    assert "resumed from" in resumed.stderr
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 15))


def test_divergence_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path: Path,
                                                                            preferences: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train-orpo", "--data", str(preferences), *FAST, "--max-steps", "6", "--save-every", "1",
                     "--lr", "1e30", "--schedule", "constant", "--warmup-steps", "0", "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert "diverged at step 2" in result.stderr and "step-000001" in result.stderr
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-000001"]
    weights = load_file(out / "checkpoints" / "step-000001" / "model.safetensors")
    assert all(t.isfinite().all() for t in weights.values())


def test_conversational_rows_use_the_chat_template(tmp_path: Path) -> None:
    rows = [{"chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["rejected"]}]} for r in PREFERENCES]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = run_cli("train-orpo", "--data", str(data), "--max-length", "96", "--max-steps", "2", "--json",
                     "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pairs"] == len(PREFERENCES)


def test_config_file_supplies_options_and_flags_win(tmp_path: Path, preferences: Path) -> None:
    config = tmp_path / "orpo.yaml"
    config.write_text(f"data: {preferences}\nmax-steps: 3\nbeta: 0.5\nmax_length: 64\n")
    result = run_cli("train-orpo", "--config", str(config), "--max-steps", "2", "--json", "-o", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    options = json.loads((tmp_path / "r" / "config.json").read_text())["options"]
    assert options["beta"] == 0.5 and options["max_steps"] == 2 and options["max_length"] == 64
    assert json.loads(result.stdout)["steps"] == 2


def test_sigterm_saves_and_exits_130_then_resumes(tmp_path: Path, preferences: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "train-orpo", "--data", str(preferences), *FAST,
                             "--max-steps", "400", "--save-every", "1000", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Interrupted at step" in stderr and "--resume" in stderr
    saved = json.loads((sorted((out / "checkpoints").glob("step-*"))[-1] / "state.json").read_text())
    resumed = run_cli("train-orpo", "--resume", str(out), "--max-steps", str(saved["step"] + 2), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == saved["step"] + 2


def test_lora_trains_adapters_only(tmp_path: Path, preferences: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train-orpo", "--data", str(preferences), *FAST, "--max-steps", "2", "--lora", "--lr", "1e-3",
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "adapter_config.json").exists()
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert adapter and all("lora" in name for name in adapter)
