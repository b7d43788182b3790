"""`lmlab augment eval`: RADA's downstream measure. It trains one extractive QA reader on the seeds alone and one
on seeds + each augmented file, with the same settings and seed, and reports SQuAD EM/F1 on a held-out set side
by side. The options are one dataclass (`lmlab.core.commands.options`); the reader and the trainer are imported only
when the command runs, so `lmlab --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.commands.builder import options_command
from lmlab.core.commands.options import MODEL_AND_DATA, RUN_AND_OUTPUT, TrainOptions, data_option, option

DEFAULT_TRAIN = "augment/seeds.jsonl"
DEFAULT_TEST = "augment/heldout.jsonl"
QA_ROWS = "QA rows with input (or question), output (or answer) and context (or passage)"


@dataclass
class AugmentEvalOptions(TrainOptions):
    data: str | None = data_option(f"Seed {QA_ROWS}: JSONL/JSON/CSV/Parquet, a saved HF dataset, or a Hub id "
                                   f"(default: bundled examples/{DEFAULT_TRAIN}).", deprecated=("--train",))
    augmented: list[str] = option([], "An augmented file to measure: one reader is trained on the seeds plus its "
                                  "rows, named by the file's stem. Repeat for several.", flags=("--augmented", "-a"),
                                  panel=MODEL_AND_DATA)
    eval_data: str | None = option(None, f"Held-out {QA_ROWS} scored with SQuAD EM/F1 (default: bundled "
                                   f"examples/{DEFAULT_TEST}).", panel=MODEL_AND_DATA, deprecated=("--test",))
    model: str = option("all-minilm-l6-v2", "Encoder of the reader: all-minilm-l6-v2 (offline), an HF encoder "
                        "folder, or a Hub id.", flags=("--model", "-m"), panel=MODEL_AND_DATA)
    max_length: int = option(256, "Tokens per (question, context) window; training rows whose answer lies past it "
                             "are skipped and counted.", min=16, panel=MODEL_AND_DATA)
    max_answer_tokens: int = option(30, "Longest predicted answer span, in tokens.", min=1)
    eval_batch_size: int = option(32, "Windows per batch when predicting on --eval-data.", min=1)
    max_steps: int = 60
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "linear"
    warmup_steps: int = 6
    save_every: int = 100
    resume: Path | None = option(None, "Continue an eval folder: finished systems are kept, an interrupted one "
                                 "resumes from its checkpoint, the rest are trained.", panel=RUN_AND_OUTPUT)


def _run(opts: AugmentEvalOptions) -> dict[str, Any]:
    from lmlab.plugins.augment.evaluate import run_eval

    return run_eval(opts)


def _show(report: dict[str, Any]) -> None:
    from lmlab.plugins.augment.evaluate import show_report

    show_report(report)


augment_eval = options_command(
    AugmentEvalOptions, _run, show=_show,
    doc="Measure augmented QA data as RADA does: train an extractive reader on the seeds alone and on seeds + "
        "each --augmented file, and compare SQuAD EM/F1 on --eval-data.")
