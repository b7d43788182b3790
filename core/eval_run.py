"""One evaluation run: load a benchmark, score it through a backend with the request cache, write the run
directory (config.json, results.json, samples.jsonl, accuracy.png, cache.sqlite) and return the summary.

Rerunning with the same --output-dir (or `--resume RUN`) reuses every answer already in the run's cache.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from lmlab.core.backends import BackendOptions, load_backend
from lmlab.core.console import err, is_quiet, log
from lmlab.core.demo import DemoStep
from lmlab.core.errors import Interrupted, LmlabError
from lmlab.core.evaluation import MODES, EvalContext, EvalSettings, benchmarks, limit_items, score_items, summarize
from lmlab.core.report import accuracy_table, plot_accuracy
from lmlab.core.request_cache import RequestCache
from lmlab.core.runs import RunDir, new_run_path, write_json_atomic


@dataclass
class EvalOptions:
    """What to evaluate and how; the model and everything its backend needs are in `model`."""

    default_model: ClassVar[str] = "smollm2-135m"

    benchmark: str
    model: BackendOptions = field(default_factory=lambda: BackendOptions(EvalOptions.default_model))
    backend: str = "hf"
    data: str | None = None
    mode: str = "loglik"
    num_fewshot: int = 0
    cot: bool = False
    limit: int | None = None
    output_dir: Path | None = None
    log_samples: bool = False
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Every option by its command-line name (what config.json records and `--resume` reads back);
        the API key is left out."""
        own = {k: v for k, v in asdict(self).items() if k not in ("model", "options")}
        backend = {k: v for k, v in asdict(self.model).items() if k != "api_key"}
        return {**own, **backend, **self.options}


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    """A Rich bar on a terminal; otherwise a log line at every 10%."""
    if err.is_terminal and not is_quiet():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    done = [0, 0]

    def advance(n: int) -> None:
        done[0] += n
        step = 10 * done[0] // max(1, total)
        if step > done[1]:
            done[1] = step
            log(f"{label}: {done[0]}/{total} requests")

    yield advance


def run_evaluation(opts: EvalOptions) -> dict[str, Any]:
    found = benchmarks()
    if opts.benchmark not in found:
        raise LmlabError(f"Unknown benchmark '{opts.benchmark}'.", hint=f"available: {', '.join(sorted(found))}")
    if opts.mode not in MODES:
        raise LmlabError(f"Unknown --mode '{opts.mode}'.", hint=f"use one of: {', '.join(MODES)}")
    spec = found[opts.benchmark]
    options = {**{option.name: option.default for option in spec.options}, **opts.options}
    settings = EvalSettings(mode=opts.mode, num_fewshot=opts.num_fewshot, cot=opts.cot, max_tokens=opts.max_tokens,
                            seed=opts.model.seed, options=options)
    data = opts.data or spec.default_data()
    loaded = spec.load(data, settings)
    skipped = f" ({loaded.skipped.summary()})" if loaded.skipped.total else ""
    log(f"{spec.name}: {len(loaded.items)} items from {loaded.source or data}{skipped}")
    items = limit_items(loaded.items, opts.limit)

    backend = load_backend(opts.backend, opts.model)  # before the run directory: a bad model leaves none behind
    run = RunDir(new_run_path(f"eval-{spec.name}", opts.output_dir), checkpoints=False)
    run.write_config(f"eval {spec.name}", {**replace(opts, options=options).flat(), "data": str(data)})
    cache = RequestCache(run.path / "cache.sqlite")
    judges: dict[tuple[str, str], Any] = {}

    def backend_for(name: str, model: str) -> Any:
        if (name, model) not in judges:
            judges[(name, model)] = load_backend(name, replace(opts.model, model=model))
        return judges[(name, model)]

    started = time.perf_counter()
    try:
        with _progress(len(items), f"eval {spec.name}") as advance:
            ctx = EvalContext(settings, cache, backend_for, advance)
            results = score_items(spec, items, backend, ctx)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"Interrupted; {cache.computed} new answers are saved in {cache.path}.",
                          hint=f"rerun with --resume {run.path} to continue where it stopped") from exc
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
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for item, row in zip(items, results, strict=True):
            f.write(json.dumps({**row, "prompt": item.generate_prompt or item.prompt if "response" in row
                                else item.prompt, "choices": list(item.choices)}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
