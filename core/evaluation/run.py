"""One evaluation run: load a benchmark, score it through a backend with the request cache, write the run
directory (config.json, results.json, samples.jsonl, accuracy.png, cache.sqlite) and return the summary. A rerun
into the same folder (or `--resume RUN`) reuses every cached answer; an unreachable backend leaves no folder."""

from __future__ import annotations

import functools
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lmlab.core.commands.doctor import DemoStep
from lmlab.core.commands.options import MODEL_AND_DATA, RUN_AND_OUTPUT, group, option
from lmlab.core.evaluation.backends import BackendOptions, load_backend
from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.evaluation.scoring import (
    MODES,
    EvalContext,
    EvalSettings,
    benchmarks,
    limit_items,
    score_items,
    summarize,
)
from lmlab.core.files.atomic import write_json_atomic, write_jsonl_atomic
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.console import Progress, err, log
from lmlab.core.kernel.errors import Interrupted, LmlabError
from lmlab.core.kernel.plugins import not_registered
from lmlab.core.training.report import accuracy_table, plot_accuracy


@dataclass
class EvalOptions:
    """One field per `lmlab eval NAME` option; the backend's fields (`model`) appear on the command line too."""

    benchmark: str
    model: BackendOptions = group(BackendOptions)
    backend: str = option("hf", "hf (local transformers) or openai (OpenAI-compatible server); plugins may add "
                          "more.", panel=MODEL_AND_DATA)
    data: str | None = option(None, "The benchmark's files in the official layout, or a Hub id (default: the "
                              "bundled examples).", flags=("--data", "-d"), panel=MODEL_AND_DATA)
    mode: str = option("loglik", "loglik: score each option; generate: generate and parse the answer.")
    num_fewshot: int = option(0, "Worked examples before each question.", min=0)
    cot: bool = option(False, "Chain of thought (generate mode): reason, then answer.")
    limit: int | None = option(None, "Evaluate N items, taken round-robin across categories.", min=1)
    max_new_tokens: int | None = option(None, "Tokens to generate (default: 16, or 512 with --cot).", min=1,
                                        deprecated=("--max-tokens",))
    output_dir: Path | None = option(None, "Run directory (default: runs/eval-<benchmark>-<timestamp>); "
                                     "rerunning into it reuses every answer already computed.",
                                     flags=("--output-dir", "-o"), panel=RUN_AND_OUTPUT)
    log_samples: bool = option(False, "Write every prompt, answer and score to samples.jsonl.", negatable=False,
                               panel=RUN_AND_OUTPUT)
    resume: Path | None = option(None, "Finish an interrupted evaluation in its run directory, with its options; "
                                 "answers already computed are reused.", panel=RUN_AND_OUTPUT)
    options: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Every option by its command-line name, as config.json records it for `--resume` (no API key)."""
        own = {k: v for k, v in asdict(self).items() if k not in ("model", "options")}
        backend = {k: v for k, v in asdict(self.model).items() if k != "api_key"}
        return {**own, **backend, **self.options}


def run_evaluation(opts: EvalOptions) -> dict[str, Any]:
    found = benchmarks()
    if opts.benchmark not in found:
        raise not_registered("register_benchmarks", opts.benchmark, f"Unknown benchmark '{opts.benchmark}'.",
                             hint=f"available: {', '.join(sorted(found))}")
    if opts.mode not in MODES:
        raise LmlabError(f"Unknown --mode '{opts.mode}'.", hint=f"use one of: {', '.join(MODES)}")
    spec = found[opts.benchmark]
    options = {**{option.name: option.default for option in spec.options}, **opts.options}
    settings = EvalSettings(mode=opts.mode, num_fewshot=opts.num_fewshot, cot=opts.cot,
                            max_tokens=opts.max_new_tokens, seed=opts.model.seed, options=options)
    data = opts.data or spec.default_data()
    loaded = spec.load(data, settings)
    skipped = f" ({loaded.skipped.summary()})" if loaded.skipped.total else ""
    log(f"{spec.name}: {len(loaded.items)} items from {loaded.source or data}{skipped}")
    items = limit_items(loaded.items, opts.limit)

    command = f"eval {spec.name}"
    if opts.resume is None and opts.output_dir is not None:
        check_run_folder(opts.output_dir, command, reusable=True)
    backend = load_backend(opts.backend, opts.model)  # before the run directory: a bad model leaves none behind
    run_path = new_run_path(f"eval-{spec.name}", opts.resume or opts.output_dir)
    fresh = not run_path.exists()
    run = RunDir(run_path, checkpoints=False)
    run.write_config(command, {**replace(opts, options=options).flat(), "data": str(data)})
    cache = RequestCache(run.path / "cache.sqlite")

    @functools.cache
    def backend_for(name: str, model: str) -> Any:  # a judge model, built once
        return load_backend(name, replace(opts.model, model=model))

    started = time.perf_counter()
    try:
        with Progress(f"eval {spec.name}", len(items), line="{label}: {completed}/{total} requests",
                      transient=True) as progress:
            ctx = EvalContext(settings, cache, backend_for, progress.advance)
            results = score_items(spec, items, backend, ctx)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"Interrupted; {cache.computed} new answers are saved in {cache.path}.",
                          hint=f"rerun with --resume {run.path} to continue where it stopped") from exc
    except LmlabError:
        if fresh and cache.computed == 0:  # e.g. an unreachable server: the run never started, leave no folder
            cache.close()
            shutil.rmtree(run.path)
        raise
    finally:
        cache.close()
    seconds = time.perf_counter() - started
    summary = {"benchmark": spec.name, "model": opts.model.model, "backend": opts.backend, "mode": opts.mode,
               "data": str(data), **summarize(spec, results), "loaded": len(loaded.items),
               "loaded_by": {key: dict(sorted(Counter(i.groups[key] for i in loaded.items if key in i.groups).items()))
                             for key in spec.breakdowns},
               "skipped": loaded.skipped.as_dict(), "cached_answers": cache.hits, "new_answers": cache.computed,
               "seconds": round(seconds, 2), "items_per_s": round(len(items) / seconds, 3) if seconds else None,
               "run_dir": str(run.path)}
    write_json_atomic(run.path / "results.json", summary)
    if opts.log_samples:
        _write_samples(run.path / "samples.jsonl", items, results)
    chart = plot_accuracy(summary["by"], run.path / "accuracy.png", f"{spec.name}: {opts.model.model} ({opts.mode})")
    if chart is not None:
        summary["chart"] = str(chart)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The accuracy table and the figures under it, on stderr."""
    err.print(accuracy_table(f"eval {summary['benchmark']}: {summary['model']} ({summary['mode']})", summary))
    for key in ("unparsed", "cached_answers", "new_answers", "items_per_s"):
        err.print(f"{key}: {summary[key]}")
    for key, value in summary.items():
        if key.startswith("gap"):
            err.print(f"{key}: {value:+.4f}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def demo_step(benchmark: str, title: str, order: int, **options: Any) -> DemoStep:
    """A `lmlab demo` step that evaluates smollm2-135m on the benchmark's bundled examples."""
    def run(output_dir: str, quick: bool) -> None:
        print_summary(run_evaluation(EvalOptions(benchmark=benchmark, output_dir=Path(output_dir) / f"eval-{benchmark}",
                                                 options=options)))

    return DemoStep(benchmark, title, order, run, quick=False)


def _write_samples(path: Path, items: list[Any], results: list[dict[str, Any]]) -> None:
    write_jsonl_atomic(path, ({**row, "prompt": item.generate_prompt or item.prompt if "response" in row
                               else item.prompt, "choices": list(item.choices)}
                              for item, row in zip(items, results, strict=True)))
