"""The one trainer skeleton, what every trainer does around the shared loop (check → accelerator → run path →
setup → run directory and config.json → before_training → loop → summary → outputs, plot, summary.json), so that a
method keeps only its own data, model, task, loss and outputs; `trainer_command` makes its Typer command. The
learning-rate schedules (multipliers of the peak rate by optimizer step) and the length-grouped batches of a
method's task are here too."""

from __future__ import annotations

import importlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lmlab.core.commands.builder import options_command
from lmlab.core.commands.options import TrainOptions
from lmlab.core.files.records import example
from lmlab.core.kernel.console import err
from lmlab.core.kernel.errors import LmlabError

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from lmlab.core.files.runs import RunDir
    from lmlab.core.training.loop import TrainConfig, TrainTask


class Trainer(ABC):
    """A method's trainer: subclass, set `command` and `plotted`, implement `setup`, `summarize` and `save`."""

    command: ClassVar[str]  # the command name, also the default run-directory prefix
    cli_command: ClassVar[str | None] = None  # as typed after `lmlab`, where it is not `command` ("retrieve train")
    plotted: ClassVar[tuple[str, ...]]  # metrics drawn in the plot
    plot_name: ClassVar[str] = "loss.png"
    default_data: ClassVar[str]  # the bundled example (a path under examples/) used when --data is not given

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.data = opts.data or str(example(self.default_data))

    def run_name(self) -> str:
        """Prefix of the default run directory and the command recorded in config.json."""
        return self.command

    def check(self) -> None:
        """Validate options that need nothing loaded, before anything slow happens (extend, then call super)."""
        opts = self.opts
        check_schedule(opts.schedule)
        if not (math.isfinite(opts.lr) and opts.lr > 0):
            raise LmlabError(f"--lr must be a finite number above 0, got {opts.lr}.", hint="e.g. --lr 1e-5")
        for flag, value, example_value in (("--max-grad-norm", opts.max_grad_norm, "1.0"),
                                           ("--weight-decay", opts.weight_decay, "0.01")):
            if not math.isfinite(value):
                raise LmlabError(f"{flag} must be a finite number, got {value}.", hint=f"e.g. {flag} {example_value}")

    @abstractmethod
    def setup(self, accelerator: Accelerator) -> tuple[torch.nn.Module, TrainTask]:
        """Load the data and the model; return the module the loop trains and the method's task."""

    def recorded_options(self) -> dict[str, Any]:
        """What config.json records: every option, with the data path resolved (and made absolute when it is
        a file or folder, whatever it looks like; `RunDir.write_config` makes the other paths absolute)."""
        data = os.path.abspath(self.data) if Path(self.data).exists() else self.data
        return {**asdict(self.opts), "data": data}

    def before_training(self, run: RunDir, model: torch.nn.Module,  # noqa: B027 (an optional hook)
                        accelerator: Accelerator) -> None:
        """Anything measured before the first step (e.g. a held-out score or samples to compare with)."""

    def train_config(self) -> TrainConfig:
        return self.opts.train_config()

    @abstractmethod
    def summarize(self, result: dict[str, Any], run: RunDir) -> dict[str, Any]:
        """The method's own entries of summary.json, from the loop's result (`result["model"]` is trained)."""

    @abstractmethod
    def save(self, result: dict[str, Any], run: RunDir, summary: dict[str, Any]) -> None:
        """Write the final model and the method's outputs into the run directory (main process only)."""

    def title(self) -> str:
        return self.command

    def notes(self, summary: dict[str, Any]) -> list[str]:
        """Lines a method prints under the summary table (e.g. a before/after comparison)."""
        return []

    def show(self, summary: dict[str, Any]) -> None:
        """The human-readable end of the run on stderr: the summary table, the notes, the run directory."""
        from lmlab.core.training.report import summary_table

        err.print(summary_table(self.command, {k: v for k, v in summary.items() if not isinstance(v, dict)}))
        for line in self.notes(summary):
            err.print(line)
        err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")

    def run(self) -> dict[str, Any]:
        """Train and write the run directory; returns the summary."""
        from lmlab.core.files.runs import RunDir, check_run_folder, clear_run_folder, new_run_path
        from lmlab.core.training.loop import finish_run, make_accelerator, shared_run_path, train

        opts = self.opts
        self.check()
        if opts.resume is not None and opts.overwrite:
            raise LmlabError("--overwrite replaces an --output-dir; it cannot be combined with --resume.",
                             hint=f"drop --overwrite to continue {opts.resume}")
        if opts.resume is None and opts.output_dir is not None:
            check_run_folder(opts.output_dir, self.command, overwrite=opts.overwrite)
        accelerator = make_accelerator(opts.precision, opts.device)
        run_path = shared_run_path(accelerator, Path(opts.resume) if opts.resume else
                                   new_run_path(self.run_name(), opts.output_dir))
        if opts.overwrite and opts.output_dir is not None and accelerator.is_main_process:
            clear_run_folder(run_path)
        model, task = self.setup(accelerator)
        run = RunDir(run_path, main=accelerator.is_main_process)
        if not opts.resume:
            run.write_config(self.run_name(), self.recorded_options(), cli_command=self.cli_command or self.command)
        self.before_training(run, model, accelerator)
        result = train(model, task, self.train_config(), run, accelerator, resume=opts.resume is not None)
        summary = {"command": self.command, "run_dir": str(run.path), "steps": result["steps"],
                   "train_seconds": result["train_seconds"], **self.summarize(result, run),
                   "final": {k: v for k, v in result["last"].items() if k != "step"}}
        return finish_run(run, accelerator, summary, lambda: self.save(result, run, summary), self.plotted,
                          self.plot_name, self.title())


def trainer_command(options: type[TrainOptions], trainer: str, *, doc: str, extra: str | None = None) -> Any:
    """The Typer command of a trainer: `trainer` is "package.module:Class", imported when the command runs
    (so `lmlab --help` stays fast); `extra` names the pip extra whose absence the import error means."""
    made: list[Trainer] = []

    def run(opts: TrainOptions) -> dict[str, Any]:
        module, _, name = trainer.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            if extra is None or exc.name is None or exc.name.startswith("lmlab"):
                raise
            raise LmlabError(f"This command needs the {extra} extra ({exc.name} is missing).",
                             hint=f"pip install 'lmlab[{extra}]'") from exc
        made.append(cls(opts))
        return made[-1].run()

    return options_command(options, run, doc=doc, show=lambda summary: made[-1].show(summary))


SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")


def check_schedule(name: str) -> None:
    """Fail early, before any model is loaded, on an unknown --schedule."""
    if name not in SCHEDULES:
        raise LmlabError(f"Unknown --schedule '{name}'.", hint=f"choose one of {', '.join(SCHEDULES)}")


def lr_lambda(name: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps, then the named decay (inverse_sqrt is the ORPO authors' choice)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "inverse_sqrt":
            return math.sqrt(max(warmup, 1)) / math.sqrt(max(step, max(warmup, 1)))
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}")
    return factor


def length_grouped_batches(lengths: Sequence[int], global_batch: int, *, seed: int, epoch: int,
                           group: int = 64) -> list[list[int]]:
    """Deterministic batches, a function of (seed, epoch, global batch) only, so that resuming and changing the
    number of processes replay exactly the same data: shuffle, sort by length within groups of `group` batches
    (little padding), shuffle the batches. The last batch is filled by wrapping around the shuffled order, so no
    example is left out and every batch is full (each process always gets the same number of examples)."""
    import torch

    n = len(lengths)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    order += [order[i % n] for i in range((-n) % global_batch)]
    span = global_batch * group
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
