"""BEnQA (Shafayat et al., ACL Findings 2024): parallel Bengali-English science exam questions, `lmlab eval
benqa`: accuracy per language, subject, grade and (where labelled) question type, and the en-bn gap."""

from __future__ import annotations

from typing import Any

from lmlab.core.evaluation.scoring import BenchmarkOption, BenchmarkSpec
from lmlab.core.files.records import example
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_benchmarks(register: Any) -> None:
    from lmlab.plugins.benqa.data import en_bn_gap, load_benqa, parse_answer

    register(BenchmarkSpec(
        name="benqa", description="BEnQA: 5,087 parallel Bengali-English science questions (grades 8, 10, 12; "
        "options a-d), accuracy per language, subject, grade and question type, and the en-bn gap.",
        load=load_benqa, default_data=lambda: str(example("eval/benqa")),
        breakdowns=("language", "subject", "grade", "question_type"),
        options=(
            BenchmarkOption("lang", "en,bn", "Languages to evaluate, comma-separated (en, bn): each question "
                            "becomes one item per language."),
            BenchmarkOption("append_translation", False, "Bengali items: append the English question after the "
                            "Bengali one (the paper found this helps)."),
        ),
        parse=parse_answer, extra=en_bn_gap, stop=("\n\nQuestion:", "\n\nপ্রশ্ন:")))


@hookimpl
def register_demo_steps(register: Any) -> None:
    from lmlab.core.evaluation.run import demo_step

    register(demo_step("benqa", "BEnQA evaluation: smollm2-135m on the bundled Bengali/English questions", 41,
                       lang="en,bn"))
