"""The core's own commands: `lmlab generate` (continue a prompt with a saved model of any registered
architecture), `lmlab doctor` (the smoke check, every command once on one device: a GPU by default when there is
one) and `lmlab eval NAME` (one subcommand per benchmark registered through `register_benchmarks`; its options come
from `EvalOptions` plus the benchmark's own, declared as fields of a dataclass made per benchmark, so `--help` and
shell completion show them all)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import options_command
from lmlab.core.commands.devices import DeviceOpt, PrecisionOpt
from lmlab.core.commands.options import option
from lmlab.core.evaluation.run import EvalOptions
from lmlab.core.evaluation.scoring import BenchmarkSpec, benchmarks
from lmlab.core.kernel.console import print_json


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
    from rich.markup import escape
    from rich.table import Table

    from lmlab.core.commands.devices import describe, resolve_device
    from lmlab.core.commands.doctor import SIZES, Outcome, run_smoke
    from lmlab.core.kernel.console import err, print_json
    from lmlab.core.kernel.errors import LmlabError

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
    from lmlab.core.commands.devices import inference_dtype, resolve_device
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


BENCHMARK = "Benchmark"


def options_class(spec: BenchmarkSpec) -> type:
    """EvalOptions plus one field per option of the benchmark."""
    own = [(o.name, type(o.default) if o.default is not None else str | None,
            option(o.default, o.help, panel=BENCHMARK)) for o in spec.options]
    return dataclasses.make_dataclass(f"{spec.name.title()}EvalOptions", own, bases=(EvalOptions,))


def make_command(spec: BenchmarkSpec) -> Any:
    own = [o.name for o in spec.options]

    def run(opts: Any) -> dict[str, Any]:
        from lmlab.core.evaluation.run import run_evaluation

        shared = {f.name: getattr(opts, f.name) for f in dataclasses.fields(EvalOptions) if f.name != "options"}
        return run_evaluation(EvalOptions(**shared, options={name: getattr(opts, name) for name in own}))

    def show(summary: dict[str, Any]) -> None:
        from lmlab.core.evaluation.run import print_summary

        print_summary(summary)

    return options_command(options_class(spec), run, doc=spec.description, show=show,
                           fixed={"benchmark": spec.name})


def eval_app() -> typer.Typer:
    app = typer.Typer(help="Evaluate a model on a benchmark (CLIcK, BEnQA, holism, and plugins' own).",
                      no_args_is_help=True)
    for name, spec in sorted(benchmarks().items()):
        app.command(name)(make_command(spec))
    return app
