"""The `lmlab` command: the core's commands (plugins, generate, serve, doctor, demo, eval NAME) plus everything plugins
register. An LmlabError prints one red line and its hint and exits 2 (130 when interrupted); anything else prints a
short trace and exits 1 (`--debug` or LMLAB_DEBUG=1 for the full one)."""

from __future__ import annotations

import atexit
import dataclasses
import functools
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

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import options_command
from lmlab.core.commands.devices import DeviceOpt, PrecisionOpt, describe, resolve_device
from lmlab.core.commands.doctor import PEAK_MEMORY_DIR, SIZES, Outcome, demo_steps, record_peak_memory, run_smoke
from lmlab.core.evaluation.backends import backends
from lmlab.core.evaluation.run import EvalOptions, print_summary, run_evaluation
from lmlab.core.evaluation.scoring import BenchmarkSpec, benchmarks
from lmlab.core.kernel.console import err, print_json
from lmlab.core.kernel.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, LmlabError
from lmlab.core.kernel.plugins import call_each, left_out_error, left_out_plugins, left_out_registrant, plugin_infos
from lmlab.core.models.architectures import architectures, attention_types
from lmlab.core.retrieval.rerankers import rerankers
from lmlab.core.retrieval.retrievers import retrievers
from lmlab.core.serving.command import serve_command

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
            path = (*o.command_name(ctx).split(), args[0])
            plugin = _left_out_provider(path)
            if plugin is None:
                raise
            raise left_out_error(f"The command `lmlab {' '.join(path)}`", plugin) from None


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

    for registry in (model_aliases, demo_steps, attention_types, architectures, backends, benchmarks, retrievers,
                     rerankers):
        registry()  # collecting each registry notes what each plugin registered
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


@app.command("generate")
def generate(
    model_dir: Annotated[Path, typer.Argument(help="A run directory of `lmlab pretrain` (any registered "
                                              "architecture) or its model/ folder.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.", show_default="a newline")] = "\n",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 means greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens.",
                     show_default=False)] = 50,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Sample from the smallest set of "
                     "tokens whose probability reaches p (1: all).")] = 1.0,
    stop: Annotated[list[str], typer.Option("--stop", help="Stop before this text, repeatable.",
                    show_default=False)] = [],  # noqa: B006 (typer reads the default; it is never mutated)
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep generating past the end-of-text token.")]
    = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the sampling.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_output: o.JsonOpt = False,
) -> None:
    """Continue a prompt with a saved model (KV-cached where its architecture has the generation interface): a
    run of any registered architecture (`lmlab plugins` lists them)."""
    from lmlab.core.commands.devices import inference_dtype
    from lmlab.core.serving.generation import generate_text

    where = resolve_device(device)
    done = generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, stop=stop, ignore_eos=ignore_eos, seed=seed, device=where,
                         dtype=inference_dtype(precision, where))
    if json_output:
        print_json({"prompt": prompt, "completion": done.text, "finish_reason": done.finish_reason,
                    "tokens": len(done.tokens)})
    else:
        typer.echo(prompt + done.text)


app.command("serve")(serve_command)
app.command("serve-block", help="Another name for `lmlab serve` (its name from when it served only `lmlab pretrain` "
            "runs).")(serve_command)


@app.command("doctor")
def doctor(
    device: DeviceOpt = "auto",
    size: Annotated[str, typer.Option("--size", help="tiny (fewest steps, smallest models: what the test suite runs "
                                      "on the CPU) or small (a few more steps, SmolLM2-135M for eval).")] = "small",
    step: Annotated[list[str], typer.Option("--step", help="Run only this step (repeatable; a step whose input "
                                            "step is not run is skipped).", show_default=False, metavar="<str>")] = [],  # noqa: B006
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds one step may take.")] = 600.0,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the steps' runs and logs.")]
    = Path("runs/doctor"),
    json_output: o.JsonOpt = False,
) -> None:
    """Run every lmlab command once at toy size on --device (trainers with bf16 on a GPU, resume, LoRA, gradient
    checkpointing, FSDP2 on one rank, generate, serve-block under concurrent requests, eval, retrieve,
    train-reranker, augment eval) and print each step's exit code, seconds and peak memory. Exits 1 if any failed."""
    if size not in SIZES:
        raise LmlabError(f"Unknown --size '{size}'.", hint=f"use one of: {', '.join(SIZES)}")
    where = resolve_device(device)
    err.print(f"lmlab doctor on [bold]{describe(where)}[/bold], size {size}; logs in {escape(str(output_dir))}")

    def show(outcome: Outcome) -> None:
        status = "skipped" if outcome.exit_code is None else f"exit {outcome.exit_code}"
        peak = f"{outcome.peak_mb:.0f} MiB ({outcome.memory_source})" if outcome.peak_mb is not None else "-"
        err.print(f"{outcome.name}: {status} · {outcome.seconds:.1f} s · peak {peak} {outcome.note}".rstrip())

    outcomes = run_smoke(output_dir, str(where), size, step, timeout, on_outcome=show)
    failed = [x.name for x in outcomes if x.exit_code not in (0, None)]
    if json_output:
        print_json({"device": describe(where), "size": size, "failed": failed,
                    "steps": [vars(x) for x in outcomes]})
    else:
        table = Table(title=f"lmlab doctor · {describe(where)}")
        for column in ("step", "exit", "seconds", "peak MiB", "memory source"):
            table.add_column(column)
        for x in outcomes:
            table.add_row(x.name, "skipped" if x.exit_code is None else str(x.exit_code), f"{x.seconds:.1f}",
                          "-" if x.peak_mb is None else f"{x.peak_mb:.0f}", x.memory_source or x.note)
        err.print(table)
        err.print(f"[bold]{len(outcomes) - len(failed)}/{len(outcomes)} steps passed[/bold]" +
                  (f"; failed: {escape(', '.join(failed))} (see their .log in {escape(str(output_dir))})"
                   if failed else ""))
    if failed:
        raise typer.Exit(1)


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


def eval_command(spec: BenchmarkSpec) -> Any:
    """`lmlab eval NAME`: the EvalOptions plus the benchmark's own options, as fields of a dataclass made for it (so
    `--help` and shell completion show them all)."""
    own = [(b.name, type(b.default) if b.default is not None else str | None,
            o.option(b.default, b.help, panel="Benchmark")) for b in spec.options]
    options = dataclasses.make_dataclass(f"{spec.name.title()}EvalOptions", own, bases=(EvalOptions,))

    def run(opts: Any) -> dict[str, Any]:
        shared = {f.name: getattr(opts, f.name) for f in dataclasses.fields(EvalOptions) if f.name != "options"}
        return run_evaluation(EvalOptions(**shared, options={b.name: getattr(opts, b.name) for b in spec.options}))

    return options_command(options, run, doc=spec.description, show=print_summary, fixed={"benchmark": spec.name})


@functools.cache  # once per process: the app is built once
def _register_plugin_commands() -> None:
    """Call each plugin's register_commands, noting what it added; a plugin that raises is skipped. Then add
    `lmlab eval`, one subcommand per registered benchmark."""
    for info, thunk in call_each("register_commands", app=app, bench=bench):
        seen = len(app.registered_commands), len(app.registered_groups), len(bench.registered_commands)
        in_groups = {group.name: len(group.typer_instance.registered_commands) for group in app.registered_groups}
        try:
            thunk()
        except Exception as exc:  # drop whatever the broken plugin managed to add (bench is one of the groups)
            info.error = f"register_commands: {type(exc).__name__}: {exc}"
            del app.registered_commands[seen[0]:], app.registered_groups[seen[1]:]
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
    eval_app = typer.Typer(help="Evaluate a model on a benchmark (CLIcK, BEnQA, holism, and plugins' own).",
                           no_args_is_help=True)
    for name, spec in sorted(benchmarks().items()):
        eval_app.command(name)(eval_command(spec))
    app.add_typer(eval_app, name="eval")
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
