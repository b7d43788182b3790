"""`--device` and `--precision`: one meaning and one type on every command that runs a model, and a GPU asked for
on a machine without one is a clear exit 2 (the suite pins the CPU, so CUDA is never visible here)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from lmlab.cli.app import build_command
from lmlab.core.commands.devices import DEVICE_HELP, PRECISION_HELP
from tests.conftest import run_cli

#: Commands that run a model outside the training loop: each takes --device and --precision.
INFERENCE = ("generate", "serve-block", "eval click", "eval benqa", "eval holism", "augment", "augment index",
             "augment eval", "retrieve index", "retrieve search", "retrieve eval", "retrieve rerank",
             "retrieve calibrate", "retrieve explain", "retrieve questions")


def _commands(command: click.Command, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, sub in getattr(command, "commands", {}).items():
        path = f"{prefix} {name}".strip()
        if hasattr(sub, "commands"):  # a group (typer >= 0.22 vendors its own click: no isinstance)
            yield from _commands(sub, path)
        if not hasattr(sub, "commands") or sub.invoke_without_command:  # `lmlab augment` runs by itself too
            yield path, sub


ALL = dict(_commands(build_command()))


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if p.param_type_name == "option" and flag in p.opts), None)


@pytest.mark.parametrize("name", INFERENCE)
def test_every_command_that_runs_a_model_takes_device_and_precision(name: str) -> None:
    command = ALL[name]
    device, precision = _option(command, "--device"), _option(command, "--precision")
    assert device is not None, f"lmlab {name} has no --device"
    assert precision is not None, f"lmlab {name} has no --precision"


def test_every_benchmark_and_the_doctor_take_device() -> None:
    missing = [name for name in ALL if (name.startswith("bench ") or name == "doctor")
               and _option(ALL[name], "--device") is None]
    assert not missing


@pytest.mark.parametrize("name", sorted(n for n, c in ALL.items() if _option(c, "--device") is not None))
def test_device_means_the_same_everywhere(name: str) -> None:
    device = _option(ALL[name], "--device")
    assert device.type_descriptor.annotation is str and not device.multiple
    assert device.help.startswith(DEVICE_HELP) and device.envvar == "LMLAB_DEVICE"
    assert device.default == "auto"


@pytest.mark.parametrize("name", sorted(n for n, c in ALL.items() if _option(c, "--precision") is not None))
def test_precision_takes_the_same_three_values_everywhere(name: str) -> None:
    precision = _option(ALL[name], "--precision")
    assert precision.type_descriptor.annotation is str and precision.default == "auto"
    assert precision.help.startswith(PRECISION_HELP) or precision.help.startswith("auto (bf16 autocast")


@pytest.mark.parametrize("args", [("generate", "no-such-run", "--device", "cuda"),
                                  ("eval", "click", "--device", "cuda:0", "--limit", "1"),
                                  ("retrieve", "search", "--device", "cuda", "--query", "x"),
                                  ("doctor", "--device", "cuda")])
def test_a_gpu_that_is_not_there_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert "no CUDA GPU is visible" in done.stderr and "--device cpu" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_device_names_the_choices() -> None:
    done = run_cli("eval", "click", "--device", "gpu0", "--limit", "1")
    assert done.returncode == 2 and "Unknown --device 'gpu0'" in done.stderr and "cuda:N" in done.stderr


TRAINERS = ("train-orpo", "train-mapo", "pretrain", "retrieve train", "retrieve train-reranker", "augment eval")


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_takes_device(name: str) -> None:
    assert _option(ALL[name], "--device") is not None, f"lmlab {name} has no --device"


@pytest.mark.parametrize("args", [("train-orpo", "--device", "cuda", "--max-steps", "1"),
                                  ("augment", "index", "--device", "cuda")])
def test_a_trainer_or_indexer_asked_for_a_missing_gpu_writes_nothing(args: tuple[str, ...], tmp_path) -> None:
    done = run_cli(*args, "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "no CUDA GPU is visible" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_one_gpu_index_under_several_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmlab.core.kernel.errors import LmlabError
    from lmlab.core.training.loop import make_accelerator

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LmlabError, match="each one trains on its own GPU") as refused:
        make_accelerator("fp32", "cuda:1")
    assert "CUDA_VISIBLE_DEVICES" in refused.value.hint


def test_the_embedder_runs_where_and_in_the_dtype_it_is_told() -> None:
    import numpy as np
    import torch

    from lmlab.core.retrieval.embeddings import Embedder

    texts = ["the closest planet to the sun", "a bowed string instrument"]
    full, half = Embedder(device="cpu"), Embedder(device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in full.model.parameters()} == {"cpu"}
    a, b = full.encode(texts), half.encode(texts)
    assert a.dtype == b.dtype == np.float32 and np.allclose(a, b, atol=2e-2) and not np.array_equal(a, b)
