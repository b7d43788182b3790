"""Typer commands built from options dataclasses (`lmlab.core.commands.options`): one declaration per option.

`options_command(Options, run, doc=...)` gives a command whose flags, help texts, bounds, defaults and
`--help` panels come from the dataclass's fields (nested `group` dataclasses flattened), plus `--config`,
`--json` and `--quiet`. The command builds the dataclass from what was typed, calls `run(options)`, and
prints the returned summary as JSON (`--json`) or through `show(summary)`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.commands import options as o
from lmlab.core.kernel.console import print_json, set_json, set_quiet

CLI_ONLY = ("config", "json_output", "quiet")


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
            nested = {f.name: _given(f.annotation, values[f.name], f.default)
                      for f in cli_fields(hints[field.name], base) if f.name in values}
            kwargs[field.name] = dataclasses.replace(base, **nested)
        elif field.name in values:
            kwargs[field.name] = _given(hints[field.name], values[field.name], _default(field, None))
    return cls(**kwargs)


def _given(annotation: Any, value: Any, default: Any) -> Any:
    """A repeatable option that was not given (None or empty) keeps its default; other values pass through."""
    if _is_list(annotation):
        return list(value) if value else list(default)
    return value


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _parameter(field: CliField) -> inspect.Parameter:
    meta, annotation, default = field.metadata, field.annotation, field.default
    flag = "--" + field.name.replace("_", "-")
    decls = list(meta["flags"]) or [flag]
    extra: dict[str, Any] = {}
    if annotation is bool:
        extra["metavar"] = ""  # a flag takes no value: no "<bool>" in --help
        if meta["negatable"] and not meta["flags"]:
            decls = [f"{flag}/--no-{flag[2:]}"]
    if _is_list(annotation):
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
    """A Typer command function for the options dataclass `cls` (see the module docstring).

    `fixed`: values of non-CLI fields the command sets itself; `defaults`: an instance whose values replace the
    dataclass defaults (e.g. a group's defaults chosen by the parent)."""
    declared = sorted(cli_fields(cls, defaults), key=lambda f: o.panel_rank(f.metadata["panel"]))

    def command(**values: Any) -> None:
        set_quiet(values["quiet"])
        json_output = values["json_output"]
        set_json(json_output)
        summary = run(build_options(cls, {k: v for k, v in values.items() if k not in CLI_ONLY}, fixed))
        if json_output:
            print_json(summary)
        elif not values["quiet"]:
            show(summary)

    params = [_parameter(field) for field in declared]
    params += [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Path | None,
                          o.CONFIG]),
        inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, o.JSON]),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[bool, o.QUIET]),
    ]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command


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
