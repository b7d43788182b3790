"""Old spellings of renamed flags keep working for one release (docs/options.md): hidden from `--help`, they fill
the new option and print one notice on stderr; typed beside the new spelling they are refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import Alias, deprecated_aliases, options_command
from lmlab.core.kernel.errors import LmlabError
from tests.conftest import refused, run_cli, write_jsonl


@dataclass
class _Renamed:
    max_steps: int = o.option(20, "Steps.", min=1, deprecated=("--steps",))
    fast: bool = o.option(False, "Go fast.", deprecated=("--quick",))
    output: Path | None = o.option(None, "A file it writes.", deprecated=("-o",))
    retriever: str = o.option("bm25", "The retriever.", flags=("--retriever", "-r"), repeatable=True)


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()
    app.command("toy")(options_command(_Renamed, lambda opts: seen.append(opts) or {}, doc="Toy.",
                                       show=lambda summary: None))
    app.command("other")(lambda: None)
    return app


def test_an_old_spelling_fills_the_new_option_and_prints_one_notice() -> None:
    seen: list = []
    result = CliRunner().invoke(_app(seen), ["toy", "--steps", "3", "--no-quick", "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == _Renamed(max_steps=3, fast=False, output=Path("out.jsonl"))
    assert result.stderr.splitlines() == ["note: --steps is deprecated; use --max-steps",
                                          "note: --quick is deprecated; use --fast",
                                          "note: -o is deprecated; use --output"]
    result = CliRunner().invoke(_app(seen), ["toy", "--quick"])
    assert result.exit_code == 0 and seen[-1].fast is True


def test_old_spellings_are_hidden_and_refused_beside_the_new_one() -> None:
    seen: list = []
    shown = CliRunner().invoke(_app(seen), ["toy", "--help"], terminal_width=200).output.split()
    assert {"--max-steps", "--fast", "--output"} <= set(shown) and not {"--steps", "--quick", "-o"} & set(shown)
    result = CliRunner().invoke(_app(seen), ["toy", "--steps", "3", "--max-steps", "4"])
    assert isinstance(result.exception, LmlabError) and "--steps is the old spelling of --max-steps" in str(
        result.exception)
    assert not seen


def test_an_old_key_in_a_config_file_still_counts(tmp_path: Path) -> None:
    seen: list = []
    config = tmp_path / "c.yaml"
    config.write_text("steps: 5\n")
    result = CliRunner().invoke(_app(seen), ["toy", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert seen[-1].max_steps == 5 and "option name steps" in result.stderr
    config.write_text("steps: 5\nmax-steps: 6\n")  # the new name wins
    assert CliRunner().invoke(_app(seen), ["toy", "--config", str(config)]).exit_code == 0
    assert seen[-1].max_steps == 6


def test_a_single_valued_flag_that_is_repeatable_elsewhere_takes_one_value() -> None:
    seen: list = []
    assert CliRunner().invoke(_app(seen), ["toy", "-r", "dense"]).exit_code == 0
    assert seen[-1].retriever == "dense"
    assert CliRunner().invoke(_app(seen), ["toy"]).exit_code == 0 and seen[-1].retriever == "bm25"
    result = CliRunner().invoke(_app(seen), ["toy", "-r", "dense", "-r", "bm25"])
    assert isinstance(result.exception, LmlabError) and "--retriever takes one value" in str(result.exception)


def _plain(new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens.")] = 8) -> None:
    typer.echo(f"tokens {new_tokens}")


def test_a_plain_typer_function_gets_the_same_aliases() -> None:
    app = typer.Typer()
    app.command("plain")(deprecated_aliases(_plain, [Alias("--max-tokens", "new_tokens")]))
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["plain", "--max-tokens", "3"])
    assert result.exit_code == 0 and result.stdout == "tokens 3\n"
    assert result.stderr == "note: --max-tokens is deprecated; use --max-new-tokens\n"
    assert CliRunner().invoke(app, ["plain", "--max-tokens", "0"]).exit_code == 2  # the bound holds for the alias
    assert "--max-tokens" not in CliRunner().invoke(app, ["plain", "--help"]).output


@pytest.mark.slow
def test_the_old_retrieve_spellings_still_build_and_search_an_index(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "1", "title": "Mercury", "text": "Mercury is the closest planet to the Sun."},
        {"id": "2", "title": "Neptune", "text": "Neptune is the farthest planet from the Sun."}])
    built = run_cli("retrieve", "index", "--corpus", str(corpus), "--output", str(tmp_path / "index"),
                    "--index", "flat", "-r", "bm25", "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["documents"] == 2 and (tmp_path / "index" / "index.json").is_file()
    for old, new in (("--corpus", "--data"), ("--output", "--output-dir"), ("--index", "--index-kind")):
        assert f"note: {old} is deprecated; use {new}" in built.stderr
    queries = tmp_path / "queries.txt"
    queries.write_text("closest planet\n")
    found = run_cli("retrieve", "search", "--index", str(tmp_path / "index"), "-r", "bm25", "--queries",
                    str(queries), "-o", str(tmp_path / "found.jsonl"), "--quiet")
    assert found.returncode == 0, found.stderr
    assert json.loads((tmp_path / "found.jsonl").read_text())["results"][0]["id"] == "1"
    assert "note: --queries is deprecated; use --data" in found.stderr
    assert "note: -o is deprecated; use --output" in found.stderr


@pytest.mark.parametrize(("args", "notice"), [
    (("bench", "serve", "--max-tokens", "8", "--concurrency", "0"),
     "note: --max-tokens is deprecated; use --max-new-tokens"),
    (("bench", "block", "--decode-heavy-tokens", "8", "--block-len", "3"),
     "note: --decode-heavy-tokens is deprecated; use --decode-heavy-max-new-tokens"),
    (("bench", "orpo", "--steps", "1", "--systems", "vllm"), "note: --steps is deprecated; use --max-steps"),
])
def test_a_bench_flag_renamed_to_the_vocabulary_keeps_its_old_spelling(capsys: pytest.CaptureFixture[str],
                                                                       args: tuple[str, ...], notice: str) -> None:
    err = refused(capsys, *args)  # refused for another reason, after the old flag was taken and noticed
    assert notice in err and "No such option" not in err
