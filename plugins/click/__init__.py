"""CLIcK (Kim et al., LREC-COLING 2024): Korean cultural and linguistic multiple choice, `lmlab eval click`."""

from __future__ import annotations

from typing import Any

from lmlab.core.evaluation.scoring import BenchmarkSpec
from lmlab.core.files.records import example
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_benchmarks(register: Any) -> None:
    from lmlab.plugins.click.data import load_click

    register(BenchmarkSpec(
        name="click", description="CLIcK: 1,995 Korean culture and language questions (A-D, or A-E for CSAT), "
        "accuracy per category, per group (Culture / Language) and overall.",
        load=load_click, default_data=lambda: str(example("eval/click")),
        breakdowns=("category", "group", "source"), stop=("\n\n주어진", "\n\n질문:", "\n\n맥락:")))


@hookimpl
def register_demo_steps(register: Any) -> None:
    from lmlab.core.evaluation.run import demo_step

    register(demo_step("click", "CLIcK evaluation: smollm2-135m on the bundled Korean questions", 40))


@hookimpl
def register_commands(app: Any, bench: Any) -> None:
    from lmlab.plugins.click.bench import bench_click

    bench.command("click")(bench_click)
