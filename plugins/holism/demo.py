"""`lmlab demo` step: evaluate smollm2-135m on the bundled holism items (arguments judged by keywords)."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.console import err
from lmlab.core.eval_run import EvalOptions, run_evaluation
from lmlab.core.report import accuracy_table


def run_demo(output_dir: str, quick: bool) -> None:
    summary = run_evaluation(EvalOptions(benchmark="holism", model="smollm2-135m",
                                         output_dir=Path(output_dir) / "eval-holism"))
    err.print(accuracy_table("Holism (bundled seed set), smollm2-135m", summary))
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")
