"""Command-line options, declared once: a command's options are a dataclass whose fields (`option(...)`) carry their
flag, help text, bounds and `--help` panel, shared by subclassing or nesting (`group(...)`); the builder turns the
dataclass into the Typer command (docs/options.md). `--config` and `--resume` fill click's default_map, so flags typed
on the command line win and `--resume RUN` alone continues with the settings in the run's config.json."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tomllib
import typer
import yaml

from lmlab.core.kernel.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.core.training.loop import TrainConfig

MODEL_AND_DATA = "Model and data"
TRAINING = "Training"
METHOD = "Method"
RUN_AND_OUTPUT = "Run and output"
BACKEND = "Backend"
#: The order of the `--help` panels; a panel not listed (a plugin's own) comes just before "Run and output".
PANEL_ORDER = (MODEL_AND_DATA, TRAINING, METHOD, BACKEND, RUN_AND_OUTPUT)


def panel_rank(panel: str) -> float:
    return PANEL_ORDER.index(panel) if panel in PANEL_ORDER else PANEL_ORDER.index(RUN_AND_OUTPUT) - 0.5


def option(default: Any, help_text: str, *, flags: Sequence[str] = (), min: float | None = None,
           max: float | None = None, panel: str = METHOD, envvar: str | None = None, negatable: bool = True,
           cli: bool = True, deprecated: Sequence[str] = (), repeatable: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    `flags`: the long flag and short aliases (default `--field-name`); `min`/`max`: bounds checked by the CLI;
    `panel`: the `--help` section; `negatable`: a bool gets `--x/--no-x` (else only `--x`); `cli=False` keeps a
    field off the command line (set by the command itself); a list default makes a repeatable option. `deprecated`:
    old spellings, kept for one release as hidden aliases that print a notice. `repeatable`: a single-valued field
    whose flag is repeatable where a command takes several values (`--retriever`) parses the same way here, and the
    command refuses a second value (docs/options.md: one flag, one type)."""
    metadata = {"help": help_text, "flags": tuple(flags), "min": min, "max": max, "panel": panel,
                "envvar": envvar, "negatable": negatable, "cli": cli, "deprecated": tuple(deprecated),
                "repeatable": repeatable}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(factory: Callable[[], Any]) -> Any:
    """A nested options dataclass whose fields appear on the command line as if they were the parent's
    (e.g. the backend options inside the eval options); `factory` gives its defaults."""
    return dataclasses.field(default_factory=factory, metadata={"group": True})


def field_metadata(cls: type, name: str) -> dict[str, Any]:
    """The option metadata of field `name`, from the nearest class in the MRO that declared it with `option`."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and declared.metadata:
            return dict(declared.metadata)
    return {}


#: --device's meaning, on every command (the inference fields and Typer types are in lmlab.core.commands.devices).
DEVICE_HELP = "Where the model runs: auto (the first CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."
#: `--index-kind`: the FAISS index of a vector store (lmlab.core.retrieval.vector_store.INDEX_KINDS).
IndexKind = Literal["flat", "ivf", "hnsw"]


def data_option(help_text: str, *, deprecated: Sequence[str] = ()) -> Any:
    """`--data/-d`: the command's main input, one dataset (docs/options.md: the main-input rule)."""
    return option(None, help_text, flags=("--data", "-d"), panel=MODEL_AND_DATA, deprecated=deprecated)


def output_dir_option(help_text: str, default: Path | None = None, *, deprecated: Sequence[str] = ()) -> Any:
    """`--output-dir/-o`: the folder the command creates (a run directory, an index, a store)."""
    return option(default, help_text, flags=("--output-dir", "-o"), panel=RUN_AND_OUTPUT, deprecated=deprecated)


def index_kind_option(help_text: str, *, deprecated: Sequence[str] = ()) -> Any:
    """`--index-kind flat|ivf|hnsw`: the FAISS index a new vector store is built with."""
    return option("flat", help_text, deprecated=deprecated)


@dataclass
class TrainOptions:
    """The run and training options of every trainer; a trainer's options subclass this, add their own fields
    and redeclare the defaults their method wants."""

    data: str | None = data_option("Training data (default: the method's bundled example).")
    output_dir: Path | None = output_dir_option("Run directory (default: runs/<command>-<timestamp>).")
    max_steps: int = option(20, "Optimizer steps to train.", min=1, panel=TRAINING)
    batch_size: int = option(4, "Examples per micro-batch per process.", min=1, panel=TRAINING)
    grad_accum: int = option(1, "Micro-batches per optimizer step.", min=1, panel=TRAINING)
    lr: float = option(5e-6, "Peak learning rate.", min=0.0, panel=TRAINING)
    schedule: str = option("constant", "LR schedule: constant, linear, cosine or inverse_sqrt (after linear "
                           "warmup).", panel=TRAINING)
    warmup_steps: int = option(0, "Linear warmup steps.", min=0, panel=TRAINING)
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only, not norms and biases).", min=0.0,
                                 panel=TRAINING)
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0: off).", min=0.0, panel=TRAINING)
    precision: str = option("auto", "auto (bf16 autocast on GPUs that have it, else fp32), fp32, or bf16 (autocast "
                            "on any device with native bf16, e.g. CPUs with AVX512-BF16/AMX; weights and optimizer "
                            "stay fp32).", panel=TRAINING)
    device: str = option("auto", f"{DEVICE_HELP} Under several processes (accelerate launch, torchrun) each takes "
                         "its own GPU: use auto or cuda.", panel=TRAINING, envvar="LMLAB_DEVICE")
    save_every: int = option(50, "Checkpoint every N steps.", min=1, panel=RUN_AND_OUTPUT)
    seed: int = option(42, "Random seed (data order, init, sampling).", panel=RUN_AND_OUTPUT)
    resume: Path | None = option(None, "Continue a run from its latest checkpoint (the run directory); options "
                                 "default to the run's.", panel=RUN_AND_OUTPUT)
    overwrite: bool = option(False, "Replace what an earlier run left in --output-dir (without it, a folder that "
                             "is not empty is refused).", negatable=False, panel=RUN_AND_OUTPUT)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The loop's TrainConfig from these options (`overrides`: the method's fixed settings, e.g. Adam β2)."""
        from lmlab.core.training.loop import TrainConfig

        return TrainConfig(max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
                           lr=self.lr, schedule=self.schedule, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, seed=self.seed,
                           save_every=self.save_every, **overrides)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read YAML, TOML or JSON whose keys are option names (`max-steps` or `max_steps`)."""
    if not path.is_file():
        raise LmlabError(f"{path}: config file not found.", hint="pass a YAML, TOML or JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise LmlabError(f"{path}: config file is not UTF-8 text (line {line} has a byte that cannot be decoded).",
                         hint="save it as UTF-8 YAML, TOML or JSON") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise LmlabError(f"{path}: cannot parse config file ({_parse_problem(exc)}).",
                         hint="check the syntax; keys are option names such as max-steps") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: a config file must map option names to values.",
                         hint="e.g. `lr: 1e-5` in YAML or `lr = 1e-5` in TOML")
    return {key.lstrip("-").replace("-", "_"): value for key, value in data.items()}


def _parse_problem(exc: Exception) -> str:
    """What the parser objects to, with the line and column where it gives them (counted from 1)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    return str(exc).splitlines()[0]  # tomllib's message ends with "(at line L, column C)"


def deprecated_param(spelling: str) -> str:
    """The hidden parameter of an old spelling (`option(deprecated=...)`): `deprecated_` + its name, so that the old
    key in a --config file or in a resumed run's config.json reaches it too."""
    return "deprecated_" + spelling.lstrip("-").replace("-", "_")


def _current_keys(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with each old option name that only a deprecated alias still takes renamed to that alias."""
    known = {p.name for p in ctx.command.params}
    return {deprecated_param(k) if k not in known and deprecated_param(k) in known else k: v for k, v in values.items()}


def _merge(ctx: typer.Context, values: dict[str, Any], *, override: bool) -> None:
    known = {p.name for p in ctx.command.params}
    values = _current_keys(ctx, values)
    unknown = sorted(set(values) - known)
    if unknown:
        raise LmlabError(f"Unknown option(s) in config: {', '.join(unknown)}.",
                         hint=f"`lmlab {ctx.command.name} --help` lists the options")
    repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
    values = {k: [v] if k in repeatable and not isinstance(v, list) else v for k, v in values.items()}
    current = dict(ctx.default_map or {})
    ctx.default_map = {**current, **values} if override else {**values, **current}


def config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        _merge(ctx, read_config_file(value), override=True)
    return value


def command_name(ctx: typer.Context) -> str:
    """The command as typed after `lmlab` (e.g. "train-orpo", "eval click")."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def resume_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        config = Path(value) / "config.json"
        if not config.is_file():
            raise LmlabError(f"{value}: not a run directory (no config.json).",
                             hint="pass the run folder printed at the end of the run, e.g. runs/train-orpo-...")
        try:
            recorded = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LmlabError(f"{config}: the run's config.json is damaged ({exc}).",
                             hint="it is written once when the run starts; restore it or start a new run") from exc
        if not isinstance(recorded, dict):
            raise LmlabError(f"{config}: the run's config.json is not an lmlab run config.",
                             hint="pass the run folder printed at the end of the run")
        made_by, name = recorded.get("cli_command"), command_name(ctx)
        if made_by is not None and made_by != name:
            raise LmlabError(f"{value} is a run of `lmlab {made_by}`, not of `lmlab {name}`.",
                             hint=f"lmlab {made_by} --resume {value}")
        options = _current_keys(ctx, recorded.get("options", {}))
        skip = {"resume", "config", "output_dir", "overwrite", "json_output", "quiet"}
        known = {p.name for p in ctx.command.params}
        _merge(ctx, {k: v for k, v in options.items() if k in known and k not in skip}, override=False)
    return value


EAGER_CALLBACKS = {"resume": resume_callback}
CONFIG = typer.Option("--config", help="YAML/TOML/JSON file whose keys are option names; command-line flags win.",
                      is_eager=True, callback=config_callback, show_default=False, rich_help_panel=RUN_AND_OUTPUT)
JSON_HELP = "Print the summary as JSON on stdout (logs go to stderr)."
QUIET_HELP = "Only errors and the final summary."
JSON = typer.Option("--json", help=JSON_HELP, metavar="", rich_help_panel=RUN_AND_OUTPUT)
QUIET = typer.Option("--quiet", "-q", help=QUIET_HELP, metavar="", rich_help_panel=RUN_AND_OUTPUT)
# For commands whose options are a plain Typer signature (benchmarks, small tools).
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)]
OutputDirOpt = Annotated[Path | None, typer.Option("--output-dir", "-o", show_default=False,
                                                  help="Run directory (default: runs/<command>-<timestamp>).")]
