"""lmlab-plugin-hello: the smallest useful lmlab plugin, one `register_commands` hook adding `lmlab hello`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lmlab.core.kernel.console import print_json
from lmlab.core.kernel.hookspecs import hookimpl


def hello(
    name: Annotated[str, typer.Option("--name", help="Who to greet.")] = "world",
    json_output: Annotated[bool, typer.Option("--json", help='Print {"greeting": ...} as JSON.')] = False,
) -> None:
    """Greet someone: an example command added by a third-party plugin."""
    greeting = f"Hello, {name}!"
    if json_output:
        print_json({"greeting": greeting})
    else:
        typer.echo(greeting)


@hookimpl
def register_commands(app: Any) -> None:
    app.command("hello")(hello)
