"""`lmlab demo` step: evaluate smollm2-135m on the bundled BEnQA-format questions in English and Bengali."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.console import err
from lmlab.core.eval_run import EvalOptions, run_evaluation
from lmlab.core.report import accuracy_table


def run_demo(output_dir: str, quick: bool) -> None:
    summary = run_evaluation(EvalOptions(benchmark="benqa", model="smollm2-135m",
                                         output_dir=Path(output_dir) / "eval-benqa",
                                         options={"lang": "en,bn", "append_translation": False}))
    err.print(accuracy_table("BEnQA (bundled examples), smollm2-135m", summary))
    if "gap_en_minus_bn" in summary:
        err.print(f"gap_en_minus_bn: {summary['gap_en_minus_bn']:+.4f}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")
