"""`lmlab augment eval`: one reader per system on the shared trainer, scored with SQuAD EM/F1 on the held-out set.

    eval folder/  config.json, report.json
        seeds/              a reader trained on --data (the seeds) alone
        <augmented stem>/   one trained on --data + that file, per --augmented
                            (each a run folder: config.json, metrics.jsonl, model/ (encoder + span head),
                             predictions.jsonl, summary.json; checkpoints/ until it finishes)

Every system gets the same options and seed (same head initialisation, same number of optimizer steps), so the
F1 difference is the data's: RADA's comparison (Seo et al. 2024, Table 1). EM and F1 are those of the official
SQuAD v1.1 script (evaluate-v1.1.py, Rajpurkar et al. 2016), a prediction scoring its best match among the gold
answers; as in v1.1 (unlike v2.0), two answers that both normalise to nothing have EM 1 but F1 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lmlab.core.evaluation.answers import exact_match, f1, squad_scores
from lmlab.core.files import checkpoint
from lmlab.core.files.atomic import write_json_atomic, write_jsonl_atomic
from lmlab.core.files.records import SkipLog, example
from lmlab.core.files.runs import RunDir, absolute_paths, check_run_folder, clear_run_folder, new_run_path, run_config
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.reader import ReaderConfig, SpanTask, features, load_reader, load_tokenizer, predict
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.augment.command import DEFAULT_TEST, DEFAULT_TRAIN, AugmentEvalOptions
from lmlab.plugins.augment.records import Instance, load_instances

BASELINE = "seeds"
COMMAND = "augment eval"  # as typed after `lmlab` (config.json's cli_command, which --resume checks)
RUN_NAME = "augment-eval"  # the default eval folder's prefix and config.json's command
DUPLICATE = "duplicate of a training row"
#: Options that do not change what a system learns: a resumed eval may differ from the recorded ones in these.
UNRECORDED = ("resume", "output_dir", "overwrite")
RENAMED = {"train": "data", "test": "eval_data"}  # what evals recorded before --train/--test were renamed


class ReaderTrainer(Trainer):
    """Trains one span reader on `train` and scores it on `test` (summary: EM, F1, rows used and skipped)."""

    command = COMMAND
    plotted = ("loss", "span_accuracy")
    default_data = DEFAULT_TRAIN
    opts: AugmentEvalOptions

    def __init__(self, opts: AugmentEvalOptions, train: list[Instance], test: list[Instance], *, system: str,
                 files: list[str], skips: SkipLog) -> None:
        super().__init__(opts)
        self.train, self.test, self.system, self.files, self.skips = train, test, system, files, skips

    def run_name(self) -> str:
        return RUN_NAME

    def check(self) -> None:
        super().check()
        if self.opts.max_answer_tokens < 1 or self.opts.max_length < 16:
            raise LmlabError("--max-length must be at least 16 and --max-answer-tokens at least 1.",
                             hint="e.g. --max-length 256 --max-answer-tokens 30")

    def reader_config(self) -> ReaderConfig:
        return ReaderConfig(model=self.opts.model, max_length=self.opts.max_length,
                            max_answer_tokens=self.opts.max_answer_tokens)

    def setup(self, accelerator: Any) -> tuple[Any, SpanTask]:
        with accelerator.main_process_first():
            self.reader, self.tokenizer = load_reader(self.reader_config(), seed=self.opts.seed)
        self.feats = features(self.train, self.tokenizer, max_length=self.opts.max_length, skips=self.skips)
        if self.skips.total:
            log(f"[yellow]{self.system}: {self.skips.summary()}[/yellow]")
        if not self.feats:
            raise DataError(f"no usable training rows for the '{self.system}' reader ({self.skips.summary()}).",
                            path=", ".join(self.files), hint="each answer must occur verbatim in its context")
        log(f"{self.system}: training a reader on {len(self.feats)} rows from {', '.join(self.files)}")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return self.reader, SpanTask(self.feats, pad_id=pad_id, seed=self.opts.seed)

    def recorded_options(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.opts), "system": self.system, "train_files": self.files}

    def summarize(self, result: dict[str, Any], run: RunDir) -> dict[str, Any]:
        self.predictions = predict(result["model"], self.tokenizer, self.test, self.opts.eval_batch_size)
        scores = squad_scores(self.predictions, [[item.output] for item in self.test])
        return {"system": self.system, "exact_match": scores["exact_match"], "f1": scores["f1"],
                "n_train": len(self.feats), "n_rows": len(self.train), "n_test": len(self.test),
                "skipped": self.skips.as_dict(), "model_dir": str(run.path / "model")}

    def save(self, result: dict[str, Any], run: RunDir, summary: dict[str, Any]) -> None:
        from lmlab.core.models.loading import replace_dir

        replace_dir(run.path / "model", lambda tmp: result["model"].save(tmp, self.tokenizer))
        rows = [{"id": item.id, "question": item.input, "prediction": pred, "gold": item.output,
                 "exact_match": exact_match(pred, item.output), "f1": f1(pred, item.output)}
                for item, pred in zip(self.test, self.predictions, strict=True)]
        write_jsonl_atomic(run.path / "predictions.jsonl", rows)

    def title(self) -> str:
        return f"augment eval · {self.system} · {self.opts.model}"


def _key(item: Instance) -> tuple[str, str, str | None]:
    return item.input.strip(), item.output.strip(), item.context


def combine(seeds: list[Instance], extra: list[Instance], skips: SkipLog) -> list[Instance]:
    """Seeds, then the extra rows that are not already there (same question, answer and context): an
    augmented file that repeats the seeds must not weigh them twice."""
    seen = {_key(item) for item in seeds}
    kept = list(seeds)
    for item in extra:
        if _key(item) in seen:
            skips.add(DUPLICATE)
        else:
            seen.add(_key(item))
            kept.append(item)
    return kept


def system_names(augmented: list[str]) -> list[str]:
    """Each augmented file's stem ("augmented-rada"), checked unique and distinct from the baseline's name."""
    names = [Path(path).stem for path in augmented]
    for index, name in enumerate(names):
        if name == BASELINE or name in names[:index]:
            raise LmlabError(f"--augmented {augmented[index]}: the system name '{name}' is already taken "
                             f"({'the seeds-only reader' if name == BASELINE else augmented[names.index(name)]}).",
                             hint="rename the file: each system is named by its file's stem")
    return names


def _absolute(path: str) -> str:
    return os.path.abspath(path) if Path(path).exists() else path


def _eval_dir(opts: AugmentEvalOptions, recorded: dict[str, Any], main: bool) -> Path:
    """The eval folder: a new one (default runs/augment-eval-<timestamp>/), or --resume's, whose recorded
    options must match these (a finished system trained with other settings would make an unfair table)."""
    if opts.resume is None:
        if opts.output_dir is not None:
            check_run_folder(opts.output_dir, COMMAND, overwrite=opts.overwrite)
            if opts.overwrite and main:
                clear_run_folder(opts.output_dir)
        return new_run_path(RUN_NAME, opts.output_dir)
    if opts.overwrite:
        raise LmlabError("--overwrite replaces an --output-dir; it cannot be combined with --resume.",
                         hint=f"drop --overwrite to continue {opts.resume}")
    config = run_config(opts.resume)
    if config is None or config.get("cli_command") != COMMAND:
        raise LmlabError(f"{opts.resume}: not an eval folder of `lmlab {COMMAND}` (no matching config.json).",
                         hint="pass the eval folder printed at the end of the run, e.g. runs/augment-eval-...")
    saved = {RENAMED.get(k, k): v for k, v in config.get("options", {}).items()}
    if "system" in saved:
        raise LmlabError(f"{opts.resume} is the run of one system ({saved['system']}) of an eval.",
                         hint=f"resume the whole eval: lmlab {COMMAND} --resume {Path(opts.resume).parent}")
    now = json.loads(json.dumps(absolute_paths(recorded), default=str))
    changed = sorted(k for k in now if k not in UNRECORDED and saved.get(k) != now[k])
    if changed:
        raise LmlabError(f"{opts.resume}: this eval was started with other settings ({', '.join(changed)}).",
                         hint="resume with the same options, or start a new eval")
    return Path(opts.resume)


def _system_options(opts: AugmentEvalOptions, path: Path, resuming: bool) -> AugmentEvalOptions | None:
    """How to run one system in `path`: None when it already finished (resumed eval), a resume of its
    checkpoint when it was interrupted, else a fresh run (an unfinished folder without checkpoint is ours:
    the caller clears it)."""
    if resuming and (path / "summary.json").is_file():
        return None
    if resuming and checkpoint.latest(path / "checkpoints") is not None:
        return dataclasses.replace(opts, output_dir=None, resume=path, overwrite=False)
    return dataclasses.replace(opts, output_dir=path, resume=None, overwrite=False)


def run_eval(opts: AugmentEvalOptions) -> dict[str, Any]:
    """Train and score every system (see the module docstring); writes and returns report.json's content."""
    from lmlab.core.training.loop import make_accelerator, shared_run_path

    train = opts.data or str(example(DEFAULT_TRAIN))
    test = opts.eval_data or str(example(DEFAULT_TEST))
    opts = dataclasses.replace(opts, data=train)
    names = system_names(opts.augmented)
    checker = ReaderTrainer(opts, [], [], system=BASELINE, files=[], skips=SkipLog())
    checker.check()  # options and --model before anything is written
    load_tokenizer(checker.reader_config())
    seeds = load_instances(train, need_context=True)
    held_out = load_instances(test, need_context=True)
    systems = [(BASELINE, [train], []), *((name, [train, path], load_instances(path, need_context=True))
                                         for name, path in zip(names, opts.augmented, strict=True))]
    accelerator = make_accelerator(opts.precision, opts.device)
    recorded = {**dataclasses.asdict(opts), "data": _absolute(train), "eval_data": _absolute(test),
                "augmented": [_absolute(path) for path in opts.augmented]}  # config.json's, the data paths absolute
    eval_dir = shared_run_path(accelerator, _eval_dir(opts, recorded, accelerator.is_main_process))
    if opts.resume is None:
        RunDir(eval_dir, main=accelerator.is_main_process, checkpoints=False).write_config(
            RUN_NAME, recorded, cli_command=COMMAND)
    test_keys = {(item.input.strip(), item.context) for item in held_out}
    results: dict[str, dict[str, Any]] = {}
    for name, files, extra in systems:
        skips = SkipLog()
        rows = combine(seeds, extra, skips)
        overlap = sum((item.input.strip(), item.context) in test_keys for item in rows)
        if overlap:
            log(f"[yellow]warning:[/yellow] {name}: {overlap} training question(s) also in --eval-data {test}")
        path = eval_dir / name
        system_opts = _system_options(opts, path, resuming=opts.resume is not None)
        if system_opts is None:
            log(f"{name}: finished earlier, kept ({path})")
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        else:
            if system_opts.output_dir is not None and path.exists() and accelerator.is_main_process:
                shutil.rmtree(path)  # a resumed eval's system that stopped before its first checkpoint
            accelerator.wait_for_everyone()
            summary = ReaderTrainer(system_opts, rows, held_out, system=name, files=files, skips=skips).run()
            if accelerator.is_main_process:  # finished: model/ and summary.json are all a resume needs
                shutil.rmtree(path / "checkpoints", ignore_errors=True)
        results[name] = {**{k: summary[k] for k in ("exact_match", "f1", "n_train", "n_rows", "skipped")},
                         "test_overlap": overlap, "run_dir": str(path)}
    for result in results.values():
        result["f1_delta"] = result["f1"] - results[BASELINE]["f1"]
    report = {"command": COMMAND, "eval_dir": str(eval_dir), "model": opts.model, "test": recorded["eval_data"],
              "n_test": len(held_out), "seed": opts.seed, "max_steps": opts.max_steps, "systems": results}
    if accelerator.is_main_process:
        write_json_atomic(eval_dir / "report.json", report)
    return report


def show_report(report: dict[str, Any]) -> None:
    """The systems side by side: rows used, EM, F1 and the F1 change against the seeds-only reader."""
    from rich.table import Table

    from lmlab.core.kernel.console import err

    table = Table(title=f"augment eval · {report['model']} · {report['n_test']} held-out questions",
                  title_justify="left")
    for column in ("system", "train rows", "skipped", "EM", "F1", "ΔF1 vs seeds"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, result in report["systems"].items():
        delta = "" if name == BASELINE else f"{result['f1_delta']:+.2f}"
        table.add_row(name, str(result["n_train"]), str(sum(result["skipped"].values())),
                      f"{result['exact_match']:.2f}", f"{result['f1']:.2f}", delta)
    err.print(table)
    err.print(f"report: [bold]{Path(report['eval_dir']) / 'report.json'}[/bold]")
