"""The `lmlab` command: core commands (plugins, generate, demo) plus everything plugins register.

Errors: an LmlabError prints one red line and its hint and exits 2 (130 when interrupted); anything else
prints a short trace and exits 1 (`--debug` or LMLAB_DEBUG=1 for the full one).
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.models import DefaultPlaceholder

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress and logs only
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from lmlab.cli.commands import doctor, eval_app, generate
from lmlab.core.commands.doctor import PEAK_MEMORY_DIR, demo_steps, record_peak_memory
from lmlab.core.evaluation.backends import backends
from lmlab.core.evaluation.scoring import benchmarks
from lmlab.core.kernel.console import err, print_json
from lmlab.core.kernel.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, LmlabError
from lmlab.core.kernel.plugins import call_each, left_out_error, left_out_plugins, left_out_registrant, plugin_infos
from lmlab.core.models.architectures import architectures, attention_types
from lmlab.core.retrieval.rerankers import rerankers
from lmlab.core.retrieval.retrievers import retrievers

# typer >= 0.22 vendors its own copy of click; usage errors and exits may come from either copy.
_VENDORED = getattr(typer, "_click", None)
USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException,) + (
    (_VENDORED.exceptions.ClickException,) if _VENDORED else ())


class PluginGroup(TyperGroup):
    """A command group in which a command that a plugin left out by LMLAB_PLUGINS would add is an LmlabError
    naming that plugin (exit 2), not click's "No such command"."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except USAGE_ERRORS:
            if not args or self.get_command(ctx, args[0]) is not None:
                raise
            path = (*_group_path(ctx), args[0])
            plugin = _left_out_provider(path)
            if plugin is None:
                raise
            raise left_out_error(f"The command `lmlab {' '.join(path)}`", plugin) from None


def _group_path(ctx: Any) -> tuple[str, ...]:
    """The command words from `lmlab` down to this context's group (none for `lmlab` itself)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return tuple(names)


def _left_out_provider(path: tuple[str, ...]) -> str | None:
    """The plugin that LMLAB_PLUGINS leaves out that would add the command `lmlab PATH` (None: none would): its
    `register_commands` runs on a scratch app; `eval NAME` is its benchmark NAME."""
    if len(path) == 2 and path[0] == "eval":
        return left_out_registrant("register_benchmarks", path[1])
    for plugin, impl in left_out_plugins("register_commands"):
        scratch, scratch_bench = typer.Typer(), typer.Typer()
        scratch.add_typer(scratch_bench, name="bench")
        wanted = inspect.signature(impl).parameters
        try:
            impl(**{k: v for k, v in {"app": scratch, "bench": scratch_bench}.items() if k in wanted})
        except Exception:  # it cannot say what it adds, so it is not the plugin to name
            continue
        if path in _command_paths(scratch):
            return plugin
    return None


def _command_paths(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command and group of `typer_app`, as the words that call it."""
    paths = {(*prefix, command.name or command.callback.__name__.replace("_", "-"))
             for command in typer_app.registered_commands}
    for group in typer_app.registered_groups:
        paths |= {(*prefix, group.name)} | _command_paths(group.typer_instance, (*prefix, group.name))
    return paths


def _name_left_out_plugins(typer_app: typer.Typer) -> None:
    """Make every group under `typer_app` that has no class of its own a PluginGroup."""
    for group in typer_app.registered_groups:
        if isinstance(group.cls, DefaultPlaceholder) and isinstance(group.typer_instance.info.cls, DefaultPlaceholder):
            group.cls = PluginGroup
        _name_left_out_plugins(group.typer_instance)


app = typer.Typer(name="lmlab", help="Recent research methods for language and diffusion models, one command each.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False, cls=PluginGroup)
bench = typer.Typer(help="Benchmarks: each method against the public system it replaces, side by side.",
                    no_args_is_help=True)
app.add_typer(bench, name="bench")


def _version(value: bool) -> None:
    if value:
        from lmlab.core.files.runs import versions

        typer.echo(" ".join(f"{k} {v}" for k, v in versions().items()))
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for internal errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print versions and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    """lmlab: ORPO and MaPO preference training, TEV/MLRA pre-training, the Block Transformer, and the CLIcK, BEnQA and
    holism evaluations."""
    if debug:
        os.environ["LMLAB_DEBUG"] = "1"


@app.command("plugins")
def plugins_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List loaded plugins: distribution, version, hooks and what each registered."""
    infos = plugin_infos()
    from lmlab.core.models.loading import model_aliases

    model_aliases()  # these calls fill in what each plugin registered
    demo_steps()
    attention_types()
    architectures()
    backends()
    benchmarks()
    retrievers()
    rerankers()
    if json_output:
        print_json([vars(info) for info in infos])
        return
    table = Table(title="lmlab plugins")
    for column in ("plugin", "distribution", "version", "registered", "status"):
        table.add_column(column)
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        status = f"[red]broken: {escape(info.error)}[/red]" if info.error else "[green]ok[/green]"
        status += "".join(f"\n[yellow]refused: {escape(clash)}[/yellow]" for clash in info.clashes)
        table.add_row(info.name, info.distribution or "", info.version or "", registered, status)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


app.command("generate")(generate)
app.command("doctor")(doctor)


@app.command("demo")
def demo_command(
    quick: Annotated[bool, typer.Option("--quick", help="Only the tiny-model steps (seconds, no real model).")] = False,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the demo's runs.")]
    = Path("runs/demo"),
) -> None:
    """Run every method's demo step on bundled data with offline models, then say where the runs are."""
    steps = demo_steps()
    if not steps:
        raise LmlabError("No demo steps are registered.", hint="check `lmlab plugins` and LMLAB_PLUGINS")
    for step in steps:
        if quick and not step.quick:
            continue
        err.rule(f"[bold]{step.title}")
        started = time.perf_counter()
        step.run(str(output_dir), quick)
        err.print(f"[dim]{step.name}: {time.perf_counter() - started:.1f} s[/dim]")
    err.rule("[bold]done")
    err.print(f"Every run directory (config.json, metrics.jsonl, plots, model) is under [bold]{output_dir}[/bold].")


_registered = False


def _register_plugin_commands() -> None:
    """Call each plugin's register_commands once, noting what it added; a plugin that raises is skipped."""
    global _registered
    if _registered:
        return
    _registered = True
    for info, thunk in call_each("register_commands", app=app, bench=bench):
        seen = len(app.registered_commands), len(app.registered_groups), len(bench.registered_commands)
        in_groups = {group.name: len(group.typer_instance.registered_commands) for group in app.registered_groups}
        try:
            thunk()
        except Exception as exc:  # drop whatever the broken plugin managed to add
            info.error = f"register_commands: {type(exc).__name__}: {exc}"
            del app.registered_commands[seen[0]:], app.registered_groups[seen[1]:]
            del bench.registered_commands[seen[2]:]
            for group in app.registered_groups:
                del group.typer_instance.registered_commands[in_groups[group.name]:]
            continue
        for command in app.registered_commands[seen[0]:]:
            info.add("commands", command.name or command.callback.__name__)
        for group in app.registered_groups[seen[1]:]:
            info.add("commands", group.name or "")
        for group in app.registered_groups[:seen[1]]:  # commands a plugin added to another's group
            for command in group.typer_instance.registered_commands[in_groups[group.name]:]:
                info.add("commands", f"{group.name} {command.name}")
        for command in bench.registered_commands[seen[2]:]:
            info.add("benchmarks", f"bench {command.name or command.callback.__name__}")
    app.add_typer(eval_app(), name="eval")
    _name_left_out_plugins(app)
    for info in plugin_infos():
        if info.error:
            err.print(f"[yellow]warning:[/yellow] plugin '{escape(info.name)}' failed to load and was skipped: "
                      f"{escape(info.error)}")


def _tidy_help(command: click.Command) -> None:
    """Flags take no value, so `--help` shows no "<bool>" beside them; a command whose options are grouped in
    panels gets its --help in the last one, not alone in an "Options" panel."""
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)
    help_option = command.get_help_option(command.context_class(command))
    flags = [p for p in command.params if getattr(p, "is_flag", False)] + ([help_option] if help_option else [])
    for param in flags:
        if param.metavar is None:
            param.metavar = ""
    panels = [p.rich_help_panel for p in command.params if getattr(p, "rich_help_panel", None)]
    if help_option is not None and panels:
        help_option.rich_help_panel = panels[-1]


def build_command() -> click.Command:  # typer's vendored click.Command on typer >= 0.22
    """The click command for the whole app (also used to generate shell completions)."""
    _register_plugin_commands()
    command = typer.main.get_command(app)
    _tidy_help(command)
    return command


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point with lmlab's exit-code contract."""
    if os.environ.get(PEAK_MEMORY_DIR):
        atexit.register(record_peak_memory)
    command = build_command()
    try:
        code = command.main(args=argv, prog_name="lmlab", standalone_mode=False)
    except LmlabError as exc:
        err.print(f"[bold red]error:[/bold red] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]hint: {escape(exc.hint)}[/dim]")
        sys.exit(exc.exit_code)
    except (typer.Exit, click.exceptions.Exit) as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        err.print("[yellow]interrupted[/yellow]")
        sys.exit(EXIT_INTERRUPTED)
    except USAGE_ERRORS as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # an lmlab bug: short trace unless --debug
        if os.environ.get("LMLAB_DEBUG"):
            traceback.print_exc()
        else:
            frames = traceback.extract_tb(exc.__traceback__)[-3:]
            err.print("".join(traceback.format_list(frames)).rstrip(), markup=False)
            err.print(f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))}")
            err.print("[dim]this is a bug in lmlab or a plugin; rerun with --debug for the full trace[/dim]")
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
