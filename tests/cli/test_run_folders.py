"""A run folder belongs to one run: reusing it without --resume is refused (--overwrite replaces it), --resume
checks which command made it and works from any working directory, and an eval that never reached its server
leaves no folder behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import kill_after_checkpoint, run_cli
from tests.plugins.click.test_click import write_click

SMALL = ("--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--block-size", "32", "--batch-size", "8",
         "--vocab-size", "512", "--eval-every", "5")
LINES = [f"The {w} of the {v} is {n} and the night is long." for w in ("king", "queen", "fool", "knight")
         for v in ("castle", "forest", "river", "field", "town") for n in ("bright", "dark", "quiet")]


def write_corpus(path: Path, lines: list[str] = LINES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines * 8))
    return path


def lmlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmlab.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_finished_runs_folder_is_refused_kept_and_replaced_only_with_overwrite(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    args = ("pretrain", "--data", str(corpus), *SMALL, "--max-steps", "5", "-o", str(out))
    assert (first := run_cli(*args)).returncode == 0, first.stderr
    before = snapshot(out)

    again = run_cli(*args)
    assert again.returncode == 2, again.stderr
    assert str(out) in error_line(again.stderr) and "config.json" in error_line(again.stderr)
    assert f"--resume {out}" in again.stderr and "--overwrite" in again.stderr
    assert snapshot(out) == before

    other = run_cli("train-orpo", "--resume", str(out))
    assert other.returncode == 2, other.stderr
    assert "`lmlab pretrain`" in error_line(other.stderr) and f"lmlab pretrain --resume {out}" in other.stderr
    assert snapshot(out) == before

    fresh = run_cli(*args, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_overwrite_never_deletes_a_folder_that_is_not_an_lmlab_run(tmp_path: Path) -> None:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        result = run_cli("pretrain", "--data", str(write_corpus(tmp_path / "c.txt")), *SMALL, "-o", str(folder), *extra)
        assert result.returncode == 2, result.stderr
        assert str(folder) in error_line(result.stderr) and "notes.txt" in error_line(result.stderr)
        assert "Traceback" not in result.stderr
    assert snapshot(folder) == {"notes.txt": b"mine"}


def test_resume_from_another_working_directory_reaches_the_same_weights(tmp_path: Path) -> None:
    first_cwd, other_cwd = tmp_path / "first", tmp_path / "other"
    write_corpus(first_cwd / "data" / "small.txt")
    write_corpus(other_cwd / "data" / "small.txt", LINES[::-1])  # the same relative name, other text
    common = ("pretrain", "--data", "data/small.txt", *SMALL, "--max-steps", "16", "--save-every", "2")
    straight = lmlab(*common, "-o", str(tmp_path / "a"), cwd=first_cwd)
    assert straight.returncode == 0, straight.stderr

    kill_after_checkpoint(common, Path("b"), 4, cwd=first_cwd)  # -o b, relative to the first folder
    killed = first_cwd / "b"
    options = json.loads((killed / "config.json").read_text())["options"]
    assert Path(options["data"]).resolve() == (first_cwd / "data" / "small.txt").resolve()
    assert Path(options["output_dir"]).resolve() == killed.resolve()

    resumed = lmlab("pretrain", "--resume", os.path.relpath(killed, other_cwd), cwd=other_cwd)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not (other_cwd / "b").exists()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_eval_against_an_unreachable_server_leaves_no_run_folder(tmp_path: Path) -> None:
    data = write_click(tmp_path / "data")
    run = tmp_path / "run"
    result = run_cli("eval", "click", "--data", str(data), "--backend", "openai", "--model", "x", "--max-retries",
                     "0", "--base-url", f"http://127.0.0.1:{closed_port()}/v1", "-o", str(run))
    assert result.returncode == 2, result.stderr
    assert "Cannot reach" in error_line(result.stderr)
    assert not run.exists()


def test_eval_refuses_a_folder_made_by_another_command(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"command": "pretrain-mha", "cli_command": "pretrain",
                                                    "options": {}}))
    before = snapshot(folder)
    result = run_cli("eval", "click", "--data", str(write_click(tmp_path / "data")), "--backend", "openai",
                     "--model", "x", "--max-retries", "0", "--base-url", f"http://127.0.0.1:{closed_port()}/v1",
                     "-o", str(folder))
    assert result.returncode == 2, result.stderr
    assert "`lmlab pretrain`" in error_line(result.stderr) and str(folder) in error_line(result.stderr)
    assert snapshot(folder) == before


def test_resume_of_a_damaged_config_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"command": "pretrain", ')
    result = run_cli("pretrain", "--resume", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.json is damaged" in result.stderr


def test_every_trainer_records_the_command_that_resumes_it() -> None:
    """config.json's cli_command is what `--resume` checks against the command typed: it must be one that exists
    (a trainer whose run name is "retrieve-train" is typed `lmlab retrieve train`)."""
    import importlib

    import lmlab.plugins
    from lmlab.cli.app import build_command
    from lmlab.core.training.trainer import Trainer

    for source in Path(lmlab.plugins.__file__).parent.rglob("*.py"):  # trainers are imported when their command runs
        if "(Trainer)" in source.read_text():
            importlib.import_module(f"lmlab.plugins.{source.parent.name}.{source.stem}")

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    root = build_command()
    trainers = [t for t in subclasses(Trainer) if "command" in vars(t)]
    assert {t.command for t in trainers} >= {"train-orpo", "pretrain", "retrieve-train", "retrieve-train-reader"}
    for trainer in trainers:
        group = root
        for word in (trainer.cli_command or trainer.command).split():
            group = group.get_command(group.context_class(group), word) if hasattr(group, "get_command") else None
            assert group is not None, f"{trainer.__name__} records `lmlab {trainer.cli_command or trainer.command}`"
        assert any(p.name == "resume" for p in group.params), trainer.__name__
