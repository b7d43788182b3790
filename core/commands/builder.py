"""Typer commands built from options dataclasses (`lmlab.core.commands.options`): `options_command` gives a command
whose flags, help, bounds, defaults and `--help` panels come from the fields (`group` dataclasses flattened), plus
`--config`, `--json` and `--quiet`. Old spellings of a flag (`option(deprecated=...)`, or `deprecated_aliases` on a
plain Typer function) stay accepted as hidden options that print "note: OLD is deprecated; use NEW" on stderr."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.commands import options as o
from lmlab.core.kernel.console import print_json, set_json, set_quiet
from lmlab.core.kernel.errors import LmlabError

# The options every built command adds: name → (default, type, typer.Option).
CLI_ONLY = {"config": (None, Path | None, o.CONFIG), "json_output": (False, bool, o.JSON),
            "quiet": (False, bool, o.QUIET)}


@dataclass
class CliField:
    """One dataclass field as a command-line option; `path` is the chain of group fields above it."""

    name: str
    annotation: Any
    default: Any
    metadata: dict[str, Any]
    path: tuple[str, ...] = ()


def _default(field: dataclasses.Field, instance: Any | None) -> Any:
    if instance is not None:
        return getattr(instance, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def cli_fields(cls: type, instance: Any | None = None, path: tuple[str, ...] = ()) -> Iterator[CliField]:
    """The command-line fields of an options dataclass, groups flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = o.field_metadata(cls, field.name)
        if meta.get("group"):
            yield from cli_fields(hints[field.name], _default(field, instance), (*path, field.name))
        elif meta and meta.get("cli", True):
            yield CliField(field.name, hints[field.name], _default(field, instance), meta, path)


def build_options(cls: type, values: dict[str, Any], fixed: dict[str, Any] | None = None) -> Any:
    """The options dataclass from flat command-line values (groups rebuilt; a repeatable option not given keeps
    its dataclass default)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = dict(fixed or {})
    for field in dataclasses.fields(cls):
        meta = o.field_metadata(cls, field.name)
        if meta.get("group"):
            base = _default(field, None)
            nested = {f.name: _given(f.annotation, f.metadata, f.name, values[f.name], f.default)
                      for f in cli_fields(hints[field.name], base) if f.name in values}
            kwargs[field.name] = dataclasses.replace(base, **nested)
        elif field.name in values:
            kwargs[field.name] = _given(hints[field.name], meta, field.name, values[field.name],
                                        _default(field, None))
    return cls(**kwargs)


def _flag(name: str, meta: dict[str, Any]) -> str:
    """The long flag of the field `name`: its first declared flag, else `--name`."""
    return (meta["flags"] or ("--" + name.replace("_", "-"),))[0]


def _given(annotation: Any, meta: dict[str, Any], name: str, value: Any, default: Any) -> Any:
    """A repeatable option that was not given (None or empty) keeps its default; a single-valued `repeatable`
    one takes its only value and refuses several; other values pass through."""
    if _is_list(annotation):
        return list(value) if value else list(default)
    if meta["repeatable"]:
        if not value:
            return default
        if len(value) > 1:
            raise LmlabError(f"{_flag(name, meta)} takes one value in this command, got {len(value)}: "
                             f"{', '.join(map(str, value))}.", hint=f"give {_flag(name, meta)} once")
        return value[0]
    return value


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _scalar(annotation: Any) -> Any:
    """`X` of `X | None`; other annotations as they are."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 \
        else annotation


def _parameter(field: CliField) -> inspect.Parameter:
    meta, annotation, default = field.metadata, field.annotation, field.default
    flag = "--" + field.name.replace("_", "-")
    decls = list(meta["flags"]) or [flag]
    extra: dict[str, Any] = {}
    if annotation is bool:
        extra["metavar"] = ""  # a flag takes no value: no "<bool>" in --help
        if meta["negatable"] and not meta["flags"]:
            decls = [f"{flag}/--no-{flag[2:]}"]
    if meta["repeatable"] and not _is_list(annotation):  # parsed as the repeatable flag it is elsewhere
        extra["show_default"] = False if default is None else str(default)
        extra["metavar"] = f"<{_scalar(annotation).__name__}>"
        annotation, default = list[_scalar(annotation)] | None, None
    elif _is_list(annotation):
        extra["show_default"] = ", ".join(map(str, default)) if default else False
        extra["metavar"] = f"<{typing.get_args(annotation)[0].__name__}>"  # repeatable: not "<list[str]>"
        annotation, default = annotation | None, None
    if default is None:
        extra.setdefault("show_default", False)
    info = typer.Option(*decls, help=meta["help"], min=meta["min"], max=meta["max"], envvar=meta["envvar"],
                        rich_help_panel=meta["panel"], callback=o.EAGER_CALLBACKS.get(field.name),
                        is_eager=field.name in o.EAGER_CALLBACKS, **extra)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def options_command(cls: type, run: Callable[[Any], dict[str, Any]], *, doc: str,
                    show: Callable[[dict[str, Any]], None], fixed: dict[str, Any] | None = None,
                    defaults: Any | None = None) -> Callable[..., None]:
    """A Typer command function for the options dataclass `cls`: it builds the dataclass from what was typed, calls
    `run(options)` and prints the summary as JSON (`--json`) or through `show(summary)`. `fixed`: values of non-CLI
    fields the command sets itself; `defaults`: an instance whose values replace the dataclass defaults."""
    declared = sorted(cli_fields(cls, defaults), key=lambda f: o.panel_rank(f.metadata["panel"]))

    def command(**values: Any) -> None:
        set_quiet(values["quiet"])
        set_json(values["json_output"])
        summary = run(build_options(cls, {k: v for k, v in values.items() if k not in CLI_ONLY}, fixed))
        if values["json_output"]:
            print_json(summary)
        elif not values["quiet"]:
            show(summary)

    params = [_parameter(field) for field in declared]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Annotated[kind, info]) for name, (default, kind, info) in CLI_ONLY.items()]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return deprecated_aliases(command, [Alias(old, field.name) for field in declared
                                        for old in field.metadata["deprecated"]])


@dataclass(frozen=True)
class Alias:
    """`flag`, an old spelling of the option that fills the parameter `target`, kept for one release."""

    flag: str
    target: str


def _option_info(parameter: inspect.Parameter) -> tuple[Any, Any]:
    """(type, typer OptionInfo) of a parameter annotated `Annotated[type, typer.Option(...)]`."""
    return typing.get_args(parameter.annotation)[:2]


def _declarations(info: Any) -> list[str]:
    """An OptionInfo's flags: inside Annotated, typer keeps the first one in `default`."""
    return [info.default, *info.param_decls] if isinstance(info.default, str) else list(info.param_decls)


def _alias_parameter(alias: Alias, target: inspect.Parameter) -> inspect.Parameter:
    annotation, info = _option_info(target)
    negatable = annotation is bool and "/" in _declarations(info)[0]
    declaration = f"{alias.flag}/--no-{alias.flag[2:]}" if negatable else alias.flag
    hidden = typer.Option(declaration, hidden=True, show_default=False, min=info.min, max=info.max)
    return inspect.Parameter(o.deprecated_param(alias.flag), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[annotation | None, hidden])


def _source(ctx: typer.Context, name: str) -> str:
    """Where click took the parameter's value from: COMMANDLINE, ENVIRONMENT, DEFAULT_MAP or DEFAULT."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else "DEFAULT"


def deprecated_aliases(command: Callable[..., None], aliases: list[Alias]) -> Callable[..., None]:
    """`command` (an `options_command` or a plain Typer function) taking the Typer context first, plus one hidden
    option per alias. An alias typed on the command line fills its target and prints "note: OLD is deprecated; use
    NEW" on stderr; typed together with NEW it is refused. The old option name as a key of --config or of a resumed
    run's config.json fills the target too, unless the new name is there or typed."""
    signature = inspect.signature(command, eval_str=True)
    targets = {p.name: p for p in signature.parameters.values()}
    new_flags = {alias.flag: _declarations(_option_info(targets[alias.target])[1])[0].split("/")[0]
                 for alias in aliases}

    def wrapper(ctx: typer.Context, **values: Any) -> None:
        for alias in aliases:
            name, new = o.deprecated_param(alias.flag), new_flags[alias.flag]
            value = values.pop(name)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            if _source(ctx, name) == "COMMANDLINE":
                if _source(ctx, alias.target) == "COMMANDLINE":
                    raise LmlabError(f"{alias.flag} is the old spelling of {new}: give one of them.",
                                     hint=f"use {new}")
                typer.echo(f"note: {alias.flag} is deprecated; use {new}", err=True)
            elif _source(ctx, alias.target) in ("COMMANDLINE", "DEFAULT_MAP"):
                continue
            else:
                typer.echo(f"note: the option name {name.removeprefix('deprecated_')} (in --config or a resumed "
                           f"run's config.json) is deprecated; use {alias.target}", err=True)
            values[alias.target] = value
        command(**values)

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
              *signature.parameters.values(), *(_alias_parameter(a, targets[a.target]) for a in aliases)]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    wrapper.__doc__ = command.__doc__
    return wrapper


def command_group(app: typer.Typer, name: str, help_text: str | None = None) -> typer.Typer:
    """The `name` sub-app of `app`, made on first use: plugins that add commands to one group (`retrieve` gets
    `index` from one plugin and `rerank` from another) each call this, in any order, and never import each other.
    The first help text given is the group's."""
    for info in app.registered_groups:
        if info.name == name:
            if help_text and not info.typer_instance.info.help:
                info.typer_instance.info.help = help_text
            return info.typer_instance
    group = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(group, name=name)
    return group
