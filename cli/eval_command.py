"""`lmlab eval NAME`: one subcommand per benchmark registered through `register_benchmarks`.

Every subcommand has the shared options below plus the benchmark's own (BenchmarkSpec.options, e.g.
BEnQA's --lang); the signature is built per benchmark so `--help` and shell completion show them all.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core import options as o
from lmlab.core.backends import BackendOptions
from lmlab.core.console import print_json, set_quiet
from lmlab.core.eval_run import EvalOptions
from lmlab.core.evaluation import BenchmarkSpec, benchmarks

COMMON: list[tuple[str, Any, Any]] = [
    ("model", str, typer.Option("--model", "-m", help="Model: alias, local HF folder or Hub id (hf backend), or "
                                "the server's model name (openai backend).")),
    ("backend", str, typer.Option("--backend", help="hf (local transformers) or openai (OpenAI-compatible "
                                  "server); plugins may add more.")),
    ("data", str | None, typer.Option("--data", "-d", help="The benchmark's files in the official layout, or a "
                                      "Hub id (default: the bundled examples).", show_default=False)),
    ("mode", str, typer.Option("--mode", help="loglik: score each option; generate: generate and parse the "
                               "answer.")),
    ("num_fewshot", int, typer.Option("--num-fewshot", min=0, help="Worked examples before each question.")),
    ("cot", bool, typer.Option("--cot/--no-cot", help="Chain of thought (generate mode): reason, then answer.")),
    ("limit", int | None, typer.Option("--limit", min=1, help="Evaluate N items, taken round-robin across "
                                       "categories.", show_default=False)),
    ("output_dir", Path | None, o.OutputDirOpt.__metadata__[0]),
    ("log_samples", bool, typer.Option("--log-samples", help="Write every prompt, answer and score to "
                                       "samples.jsonl.")),
    ("batch_size", int, typer.Option("--batch-size", min=1, help="Prompts per generate call, and per scoring "
                                     "pass on a GPU (on CPU, scoring runs prompt by prompt, reusing shared "
                                     "prefixes).")),
    ("max_length", int | None, typer.Option("--max-length", min=2, help="Context length in tokens (default: "
                                            "the model's); longer prompts lose their start.", show_default=False)),
    ("max_tokens", int | None, typer.Option("--max-tokens", min=1, help="Tokens to generate (default: 16, or "
                                            "512 with --cot).", show_default=False)),
    ("chat_template", bool, typer.Option("--chat-template/--no-chat-template", help="hf backend: send each prompt "
                                         "as a user turn in the model's chat template (instruct models; with "
                                         "openai use --api chat).")),
    ("seed", int, o.SeedOpt.__metadata__[0]),
    ("base_url", str, typer.Option("--base-url", help="OpenAI-compatible server (openai backend).")),
    ("api_key", str | None, typer.Option("--api-key", envvar="LMLAB_API_KEY", help="API key for the server "
                                         "(or LMLAB_API_KEY / OPENAI_API_KEY).", show_default=False)),
    ("api", str, typer.Option("--api", help="openai backend generation endpoint: auto, completions or chat.")),
    ("concurrency", int, typer.Option("--concurrency", min=1, help="Requests in flight (openai backend).")),
    ("timeout", float, typer.Option("--timeout", min=0.1, help="Seconds per HTTP request (openai backend).")),
    ("max_retries", int, typer.Option("--max-retries", min=0, help="Retries with backoff on errors (openai).")),
    ("resume", Path | None, o.ResumeOpt.__metadata__[0]),
    ("config", Path | None, o.ConfigOpt.__metadata__[0]),
    ("json_output", bool, o.JsonOpt.__metadata__[0]),
    ("quiet", bool, o.QuietOpt.__metadata__[0]),
]
BACKEND_FIELDS = [f.name for f in fields(BackendOptions)]
CLI_ONLY = ["resume", "config", "json_output", "quiet"]
# One source for every default: the dataclasses the options fill.
DEFAULTS: dict[str, Any] = {
    **asdict(BackendOptions(EvalOptions.default_model)),
    **{f.name: f.default for f in fields(EvalOptions) if f.name not in ("benchmark", "model", "options")},
    **dict.fromkeys(CLI_ONLY), "json_output": False, "quiet": False,
}


def _benchmark_param(name: str, default: Any, help_text: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    decls = (f"{flag}/--no-{flag[2:]}",) if isinstance(default, bool) else (flag,)
    kind = type(default) if default is not None else str | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, typer.Option(*decls, help=help_text)])


def make_command(spec: BenchmarkSpec) -> Any:
    own = {option.name for option in spec.options}

    def command(**values: Any) -> None:
        from lmlab.core.eval_run import print_summary, run_evaluation

        set_quiet(values["quiet"])
        if values["resume"] is not None:
            values["output_dir"] = values["resume"]
        model = BackendOptions(**{k: values[k] for k in BACKEND_FIELDS})
        shared = {k: values[k] for k in DEFAULTS if k not in BACKEND_FIELDS + CLI_ONLY}
        summary = run_evaluation(EvalOptions(benchmark=spec.name, model=model, **shared,
                                             options={k: values[k] for k in own}))
        if values["json_output"]:
            print_json(summary)
        elif not values["quiet"]:
            print_summary(summary)

    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=DEFAULTS[name],
                                annotation=Annotated[kind, info]) for name, kind, info in COMMON]
    params += [_benchmark_param(option.name, option.default, option.help) for option in spec.options]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.description
    return command


def eval_app() -> typer.Typer:
    app = typer.Typer(help="Evaluate a model on a benchmark (CLIcK, BEnQA, holism, and plugins' own).",
                      no_args_is_help=True)
    for name, spec in sorted(benchmarks().items()):
        app.command(name)(make_command(spec))
    return app
