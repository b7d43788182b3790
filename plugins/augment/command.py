"""The `lmlab augment` group: the augmentation run itself (`lmlab augment [OPTIONS]`), `augment index` and
`augment eval`. Each imports its module only when it runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from lmlab.core.commands.builder import options_command
from lmlab.core.kernel.console import err
from lmlab.plugins.augment.options import AugmentOptions, IndexOptions


def _run_augment(opts: AugmentOptions) -> dict[str, Any]:
    from lmlab.plugins.augment.run import run_augment

    return run_augment(opts)


def _run_index(opts: IndexOptions) -> dict[str, Any]:
    from lmlab.plugins.augment.index import run_index

    return run_index(opts)


def show_augment(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"augment · {summary['retrieval']} · {summary['model']}")
    for name in ("planned", "kept", "filtered", "duplicate", "malformed", "error"):
        table.add_column(name, justify="right")
    table.add_row(*(str(summary[k]) for k in ("planned", "kept", "filtered", "duplicate", "malformed", "error")))
    err.print(table)
    diversity = Table(title="diversity of the questions (distinct-n)")
    diversity.add_column("rows")
    for n in (1, 2, 3):
        diversity.add_column(f"distinct-{n}", justify="right")
    for name, values in summary["diversity"].items():
        diversity.add_row(name, *(f"{values[f'distinct_{n}']:.3f}" for n in (1, 2, 3)))
    err.print(diversity)
    if summary["error"]:
        err.print(f"[yellow]{summary['error']} items failed on backend errors; rerun with --resume "
                  f"{summary['run_dir']} to retry them[/yellow]")
    err.print(f"augmented rows: [bold]{summary['augmented']}[/bold]")


def show_index(summary: dict[str, Any]) -> None:
    err.print(f"{summary['store']}: {summary['added']} rows added ({summary['already_there']} already there), "
              f"{summary['total']} in all · {summary['embedder']} ({summary['dim']} dims, {summary['index']} index) · "
              f"{summary['seconds']} s")


def _group_callback(command: Callable[..., None]) -> Callable[..., None]:
    """`command` (an `options_command`, which takes the Typer context first) as the group's own callback: it runs
    when no subcommand is given."""
    def callback(ctx: typer.Context, **values: Any) -> None:
        if ctx.invoked_subcommand is None:
            command(ctx, **values)

    callback.__signature__ = inspect.signature(command)  # type: ignore[attr-defined]
    callback.__doc__ = command.__doc__
    return callback


def augment_app() -> typer.Typer:
    from lmlab.plugins.augment.eval_options import augment_eval

    app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    app.callback()(_group_callback(options_command(
        AugmentOptions, _run_augment, show=show_augment,
        doc="RADA data augmentation: retrieve related instances and contexts from a store, prompt an LLM to write "
            "new (question, answer) pairs, keep those whose answer is in the context, drop near-duplicates. "
            "Subcommands: index (build the store), eval (does the augmented data help a QA reader?).")))
    app.command("index")(options_command(
        IndexOptions, _run_index, show=show_index,
        doc="Embed external instances (input, output, optional context) into a vector store folder."))
    app.command("eval")(augment_eval)
    return app
