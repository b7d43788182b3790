"""One option vocabulary across every command (docs/options.md): the walk covers every command of the real app,
groups and `bench` included, and checks that a flag has one type and one short form everywhere, that `-o` is only
ever `--output-dir`, and the named rules (`--max-steps`, `--max-new-tokens`, `--index` / `--index-kind`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from lmlab.cli.app import build_command

#: The bench subcommands' own flags that break the vocabulary today. They are being moved onto the options
#: dataclasses (`lmlab.core.bench.benchmark.BenchOptions`); each pair leaves this set when its bench does.

INDEX_KINDS = ("flat", "ivf", "hnsw")
RETIRED = {"--steps": "--max-steps", "--max-tokens": "--max-new-tokens", "--new-tokens": "--max-new-tokens"}


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    yield " ".join(path), command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


def _choices(param: Any) -> tuple[str, ...]:
    described = getattr(param, "type_descriptor", None)  # typer >= 0.22 (its own click) describes the type
    found = described.choices if described is not None else getattr(param.type, "choices", None)
    return tuple(str(getattr(c, "value", c)) for c in found or ())


def _type(param: Any) -> str:
    described = getattr(param, "type_descriptor", None)
    if described is None:  # plain click
        return type(param.type).__name__
    annotation = described.annotation
    return "choice" if described.choices else annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _kind(param: Any) -> tuple[Any, ...]:
    """What a flag is, beyond its help text: type, choices, flag or not, repeatable or not, and its --no- form."""
    return _type(param), _choices(param), bool(param.is_flag), bool(param.multiple), tuple(param.secondary_opts)


def _long(param: Any) -> str:
    return next(flag for flag in param.opts if flag.startswith("--"))


def _options() -> list[tuple[str, Any]]:
    """(command, option) for every option `--help` shows, on every command and group."""
    return [(name, param) for name, command in _walk(build_command()) for param in command.params
            if param.param_type_name == "option" and not getattr(param, "hidden", False)]


@pytest.fixture(scope="module")
def options() -> list[tuple[str, Any]]:
    return _options()


def test_the_walk_reaches_every_group_and_the_benchmarks(options: list[tuple[str, Any]]) -> None:
    commands = {name for name, _ in _walk(build_command())}
    assert {"train-orpo", "augment", "augment index", "retrieve index", "retrieve search", "eval click",
            "serve-block", "generate", "doctor", "demo", "tokenizer train"} <= commands
    assert any(name.startswith("bench ") for name in commands)
    assert len({name for name, _ in options}) >= 30


def test_a_flag_has_one_type_everywhere(options: list[tuple[str, Any]]) -> None:
    kinds: dict[str, dict[tuple[Any, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, param in options:
        for flag in (f for f in param.opts if f.startswith("--")):
            kinds[flag][_kind(param)].append(name or "lmlab")
    clashes = {flag: dict(found) for flag, found in kinds.items() if len(found) > 1}
    assert not clashes, "\n".join(f"{flag}: {found}" for flag, found in sorted(clashes.items()))


def test_a_short_flag_means_one_long_flag_everywhere(options: list[tuple[str, Any]]) -> None:
    longs: dict[str, set[str]] = defaultdict(set)
    shorts: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for _, param in options:
        short = tuple(sorted(f for f in param.opts if not f.startswith("--")))
        for flag in short:
            longs[flag].add(_long(param))
        shorts[_long(param)].add(short)
    assert {flag: found for flag, found in longs.items() if len(found) > 1} == {}
    assert longs["-o"] == {"--output-dir"}
    mixed = {flag: found for flag, found in shorts.items() if len(found) > 1}
    assert mixed == {}, f"a flag with a short form somewhere has it everywhere: {mixed}"


def test_the_named_rules(options: list[tuple[str, Any]]) -> None:
    by_flag: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for name, param in options:
        for flag in param.opts:
            by_flag[flag].append((name, param))
    broken = [f"{name}: {old} (use {new})" for old, new in RETIRED.items() for name, _ in by_flag[old]]
    broken += [f"{name}: --index has choices" for name, p in by_flag["--index"] if _choices(p) or _type(p) != "Path"]
    broken += [f"{name}: --index-kind is not {'|'.join(INDEX_KINDS)}" for name, p in by_flag["--index-kind"]
               if _choices(p) != INDEX_KINDS]
    broken += [f"{name}: --output-dir is not a path" for name, p in by_flag["--output-dir"] if _type(p) != "Path"]
    broken += [f"{name}: --output (a file) has a short form" for name, p in by_flag["--output"] if len(p.opts) > 1]
    assert by_flag["--index"] and by_flag["--index-kind"] and by_flag["--output"]
    assert broken == []
