"""Options every command shares (names, help texts) and the `--config FILE` layer under the command line.

`--config` and `--resume` fill click's default_map, so values typed on the command line always win; a
resumed run re-reads its own config.json so `--resume RUN` alone continues with the same settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import tomllib
import typer
import yaml

from lmlab.core.errors import LmlabError


def _normalise(data: dict[str, Any], path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: a config file must map option names to values.",
                         hint="e.g. `lr: 1e-5` in YAML or `lr = 1e-5` in TOML")
    return {key.lstrip("-").replace("-", "_"): value for key, value in data.items()}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read YAML, TOML or JSON whose keys are option names (`max-steps` or `max_steps`)."""
    if not path.is_file():
        raise LmlabError(f"{path}: config file not found.", hint="pass a YAML, TOML or JSON file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise LmlabError(f"{path}: cannot parse config file ({str(exc).splitlines()[0]}).",
                         hint="check the syntax; keys are option names such as max-steps") from exc
    return _normalise(data, path)


def _merge(ctx: typer.Context, values: dict[str, Any], *, override: bool) -> None:
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LmlabError(f"Unknown option(s) in config: {', '.join(unknown)}.",
                         hint=f"`lmlab {ctx.command.name} --help` lists the options")
    current = dict(ctx.default_map or {})
    ctx.default_map = {**current, **values} if override else {**values, **current}


def config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        _merge(ctx, read_config_file(value), override=True)
    return value


def resume_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        config = Path(value) / "config.json"
        if not config.is_file():
            raise LmlabError(f"{value}: not a run directory (no config.json).",
                             hint="pass the run folder printed at the end of the run, e.g. runs/train-orpo-...")
        options = json.loads(config.read_text()).get("options", {})
        skip = {"resume", "config", "output_dir", "json_output", "quiet"}
        known = {p.name for p in ctx.command.params}
        _merge(ctx, {k: v for k, v in options.items() if k in known and k not in skip}, override=False)
    return value


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="YAML/TOML/JSON file whose keys are option names; command-line flags win.",
    is_eager=True, callback=config_callback, show_default=False)]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", help="Continue a run from its latest checkpoint (the run directory); options default to the run's.",
    is_eager=True, callback=resume_callback, show_default=False)]
OutputDirOpt = Annotated[Path | None, typer.Option(
    "--output-dir", "-o", help="Run directory (default: runs/<command>-<timestamp>).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout (logs go to stderr).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data order, init, sampling).")]
MaxStepsOpt = Annotated[int, typer.Option("--max-steps", min=1, help="Optimizer steps to train.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Examples per micro-batch per process.")]
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate.")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", min=2, help="Longest sequence in tokens.")]
ScheduleOpt = Annotated[str, typer.Option(
    "--schedule", help="LR schedule: constant, linear, cosine or inverse_sqrt (after linear warmup).")]
WarmupOpt = Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear warmup steps.")]
MaxGradNormOpt = Annotated[float, typer.Option("--max-grad-norm", min=0.0, help="Clip gradients to this norm (0: off).")
                           ]
SaveEveryOpt = Annotated[int, typer.Option("--save-every", min=1, help="Checkpoint every N steps.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 autocast on GPUs that have it, else fp32), fp32, or bf16 (autocast on any device "
    "with native bf16, e.g. CPUs with AVX512-BF16/AMX; weights and optimizer stay fp32).")]
