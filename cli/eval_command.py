"""`lmlab eval NAME`: one subcommand per benchmark registered through `register_benchmarks`.

Every subcommand's options come from `EvalOptions` (its nested `BackendOptions` included) plus the benchmark's
own (BenchmarkSpec.options, e.g. BEnQA's --lang), declared as fields of a dataclass made per benchmark, so
`--help` and shell completion show them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from lmlab.core.commands.builder import options_command
from lmlab.core.commands.options import option
from lmlab.core.evaluation.run import EvalOptions
from lmlab.core.evaluation.scoring import BenchmarkSpec, benchmarks

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
