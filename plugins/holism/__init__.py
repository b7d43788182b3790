"""Holism (Kim and Thorne, Findings of ACL 2024): does a model keep core knowledge and revise peripheral
beliefs when an observation clashes with its web of belief? `lmlab eval holism`, format in docs/holism.md."""

from __future__ import annotations

from typing import Any

from lmlab.core.evaluation.scoring import BenchmarkOption, BenchmarkSpec, parse_letter
from lmlab.core.files.records import example
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_benchmarks(register: Any) -> None:
    from lmlab.plugins.holism.data import judge, load_holism

    register(BenchmarkSpec(
        name="holism", description="Holistic knowledge: abduction and revision (which belief gives way, core or "
        "peripheral?) and argument writing (judged by rubric); accuracy per task, split by focus.",
        load=load_holism, default_data=lambda: str(example("holism/items.jsonl")),
        breakdowns=("task", "focus", "task_focus"),
        options=(BenchmarkOption("judge", "keywords", "Judge for argument items: 'keywords' (rubric keywords) or "
                                 "a judge model (alias, folder or Hub id; server model name with openai)."),
                 BenchmarkOption("judge_backend", "hf", "Backend of the judge model (hf, openai, ...).")),
        parse=parse_letter, judge=judge, normalize=True, cot_max_tokens=256,
        stop=("\n\nBackground knowledge:",)))


@hookimpl
def register_demo_steps(register: Any) -> None:
    from lmlab.core.evaluation.run import demo_step

    register(demo_step("holism", "Holism evaluation: smollm2-135m on the bundled seed items", 42))
