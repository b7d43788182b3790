"""Options declared once: the dataclass field is the flag, its help, bounds, default and --help panel."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import cli_fields, options_command
from lmlab.core.evaluation.run import EvalOptions
from lmlab.plugins.mapo.options import MapoOptions
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.pretrain.options import PretrainOptions
from tests.conftest import run_cli


def _flat(text: str) -> str:
    """Help text with the table borders gone and whitespace collapsed, so wrapped help reads as one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _has_flag(text: str, flag: str) -> bool:
    return re.search(rf"(^| |,){re.escape(flag)}( |,|$)", text) is not None


def _help(*command: str) -> str:
    result = run_cli(*command, "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("command", "options"), [
    (("train-orpo",), OrpoOptions), (("train-mapo",), MapoOptions), (("pretrain",), PretrainOptions),
    (("eval", "click"), EvalOptions)])
def test_every_dataclass_field_is_in_the_commands_help_with_its_help_text(command: tuple[str, ...],
                                                                         options: type) -> None:
    shown = _flat(_help(*command))
    fields = list(cli_fields(options))
    assert len(fields) >= 10
    for field in fields:
        flag = (field.metadata["flags"] or ("--" + field.name.replace("_", "-"),))[0]
        assert _has_flag(shown, flag), f"{flag} missing from `{' '.join(command)} --help`"
        assert _flat(field.metadata["help"]) in shown, f"help of {flag} missing"
    assert "<bool>" not in shown


def test_help_groups_options_in_panels_in_order() -> None:
    text = _help("train-orpo")
    panels = [name for name in (o.MODEL_AND_DATA, o.TRAINING, o.METHOD, o.RUN_AND_OUTPUT) if f"─ {name} " in text]
    assert panels == [o.MODEL_AND_DATA, o.TRAINING, o.METHOD, o.RUN_AND_OUTPUT]
    assert sorted(panels, key=text.index) == panels
    assert "─ Options " not in text  # --help sits in the last panel, not alone


def test_every_trainer_has_precision_and_the_shared_run_options() -> None:
    text_model = ("--max-length",)  # the README's list: every trainer but train-mapo (images) has it
    for command, own in (("train-orpo", ("--model", *text_model)), ("train-mapo", ("--model",)),
                         ("pretrain", text_model)):
        shown = _flat(_help(command))
        for flag in ("--precision", "--max-steps", "--batch-size", "--grad-accum", "--lr", "--seed", "--resume",
                     "--config", "--json", "--quiet", "--output-dir", "--data", *own):
            assert _has_flag(shown, flag), f"{command} lacks {flag}"


@dataclass
class _Toy(o.TrainOptions):
    lr: float = 0.5
    name: str = o.option("x", "A name.", flags=("--name", "-n"), panel=o.MODEL_AND_DATA)
    tags: list[str] = o.option([], "Repeatable tag.")
    fast: bool = o.option(False, "Go fast.", negatable=False)


def _app(cls: type, seen: list) -> typer.Typer:
    app = typer.Typer()
    app.command("toy")(options_command(cls, lambda opts: seen.append(opts) or {"ok": True}, doc="Toy.",
                                       show=lambda summary: None))
    app.command("other")(lambda: None)
    return app


def test_adding_an_option_is_one_field(tmp_path: Path) -> None:
    @dataclass
    class Extended(OrpoOptions):
        gamma: float = o.option(0.25, "The new knob.", min=0.0)

    seen: list = []
    runner = CliRunner()
    help_text = _flat(runner.invoke(_app(Extended, seen), ["toy", "--help"], terminal_width=200).output)
    assert "--gamma" in help_text and "The new knob." in help_text
    result = runner.invoke(_app(Extended, seen), ["toy", "--gamma", "0.5", "--beta", "0.2"])
    assert result.exit_code == 0, result.output
    assert seen[-1].gamma == 0.5 and seen[-1].beta == 0.2 and seen[-1].model == "tiny-llama"
    assert runner.invoke(_app(Extended, seen), ["toy", "--gamma", "-1"]).exit_code == 2  # the bound is enforced


def test_values_defaults_lists_flags_and_config_reach_the_dataclass(tmp_path: Path) -> None:
    seen: list = []
    runner = CliRunner()
    assert runner.invoke(_app(_Toy, seen), ["toy"]).exit_code == 0
    device = os.environ.get("LMLAB_DEVICE", "auto")  # --device's default when set (the suite pins cpu)
    assert seen[-1] == _Toy(device=device)  # no flags: every dataclass default, the subclass's lr included
    config = tmp_path / "c.yaml"
    config.write_text("max-steps: 7\nname: from-config\n")
    result = runner.invoke(_app(_Toy, seen), ["toy", "-n", "typed", "--tags", "a", "--tags", "b", "--fast",
                                              "--config", str(config), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert dataclasses.asdict(seen[-1]) == dataclasses.asdict(_Toy(
        name="typed", tags=["a", "b"], fast=True, max_steps=7, output_dir=tmp_path / "run", device=device))
    help_text = _flat(runner.invoke(_app(_Toy, seen), ["toy", "--help"], terminal_width=200).output)
    assert "[default: 0.5]" in help_text and "Peak learning rate." in help_text  # redeclared default, base's help
    assert "--no-fast" not in help_text and "--fast <bool>" not in help_text and "--fast Go fast." in help_text


def test_nested_group_fields_are_flat_on_the_command_line() -> None:
    names = [f.name for f in cli_fields(EvalOptions)]
    assert {"model", "base_url", "concurrency", "chat_template", "mode", "limit"} <= set(names)
    assert "benchmark" not in names and "options" not in names
