"""The `lmlab augment` group: the augmentation run itself (`lmlab augment [OPTIONS]`), `augment index`, `augment
eval`, their options (one field per flag) and RADA's part of `lmlab demo`. Light imports, so `--help` stays fast:
the modules that import torch are imported only when a command runs."""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import options_command
from lmlab.core.commands.devices import DeviceOptions
from lmlab.core.evaluation.backends import BackendOptions
from lmlab.core.files.records import example
from lmlab.core.kernel import plugins
from lmlab.core.kernel.console import Progress, err, log
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER, Embedder
from lmlab.plugins.augment.records import Instance, embed_text, load_instances

if TYPE_CHECKING:
    from lmlab.core.retrieval.vector_store import VectorStore

DEFAULT_TRAIN = "augment/seeds.jsonl"
DEFAULT_TEST = "augment/heldout.jsonl"
QA_ROWS = "QA rows with input (or question), output (or answer) and context (or passage)"
OUTCOMES = ("planned", "kept", "filtered", "duplicate", "malformed", "error")
STORE_HINT = ("A vector store folder (`lmlab augment index`), or instance files to index on the fly "
              "(default: the bundled examples/augment/store.jsonl).")


@dataclass
class IndexOptions:
    data: str | None = o.data_option("Instances to index: a JSONL/JSON/CSV/Parquet file, a folder of them or a saved "
                                     "dataset (fields input, output, optional context, id, source; default: the "
                                     "bundled examples/augment/store.jsonl). Index more files into the same "
                                     "--output-dir to add them.", deprecated=("--store",))
    output_dir: Path = o.output_dir_option("The vector store folder; indexing into an existing store adds only the "
                                           "rows whose id is new.", Path("runs/augment-store"),
                                           deprecated=("--output",))
    embedder: str = o.option(DEFAULT_EMBEDDER, "sentence-transformers model: the packaged all-minilm-l6-v2 "
                             "(offline), a model folder, or a cached Hub name.", panel=o.MODEL_AND_DATA)
    index_kind: o.IndexKind = o.index_kind_option("flat (exact search), ivf or hnsw (approximate; for stores of "
                                                  "~10^5 rows or more). Fixed when the store is created.",
                                                  deprecated=("--index",))
    nlist: int | None = o.option(None, "ivf: k-means cells (default: about 4·sqrt(rows)).", min=1)
    batch_size: int = o.option(32, "Texts per embedding batch.", min=1)
    save_every: int = o.option(2048, "Save the store after this many new rows (an interrupted index resumes).",
                               min=1, panel=o.RUN_AND_OUTPUT)
    placement: DeviceOptions = o.group(DeviceOptions)  # the embedder


@dataclass
class AugmentOptions:
    model: BackendOptions = o.group(lambda: BackendOptions(batch_size=8))
    backend: str = o.option("hf", "hf (local transformers) or openai (an OpenAI-compatible server such as vLLM or "
                            "`lmlab serve-block`); plugins may add more.", panel=o.MODEL_AND_DATA)
    data: str | None = o.data_option("Seed instances (fields input, output, context, optional id; default: the "
                                     "bundled examples/augment/seeds.jsonl).", deprecated=("--seeds",))
    store: str | None = o.option(None, STORE_HINT, panel=o.MODEL_AND_DATA)
    retrieval: str = o.option("both", "demos: retrieved demonstrations; context: a retrieved target context; both "
                              "(RADA); none: the seed-only baseline.")
    template: str = o.option("extractive-qa", "Prompt template: extractive-qa, multiple-choice, or a TOML/YAML/JSON "
                             "file (instruction, demo, target, check).")
    multiplier: int = o.option(30, "Items to generate per seed (the paper: 30×).", min=1)
    demos: int = o.option(3, "Demonstrations per prompt.", min=0)
    pool: int = o.option(10, "Nearest store items a seed's demonstrations are drawn from.", min=1)
    temperature: float = o.option(0.9, "Sampling temperature (0: greedy).", min=0.0)
    top_p: float = o.option(0.95, "Nucleus sampling: smallest token set with this probability.", min=0.01, max=1.0)
    max_new_tokens: int = o.option(64, "Tokens to generate per item.", min=1)
    filter: bool = o.option(True, "Keep a pair only if its answer occurs in its context (the template's check).")
    dedupe: bool = o.option(True, "Drop near-duplicates of kept rows and of the seeds.")
    dedupe_threshold: float = o.option(0.8, "Word-bigram Jaccard similarity from which two rows are duplicates.",
                                       min=0.0, max=1.0)
    compare: str | None = o.option(None, "Another run's augmented.jsonl (e.g. --retrieval none) to compare "
                                   "diversity with in the report.", panel=o.RUN_AND_OUTPUT, deprecated=("--baseline",))
    max_failures: int = o.option(20, "Stop after this many items in a row fail on backend errors (each is retried "
                                 "with backoff first); a rerun resumes.", min=1, panel=o.BACKEND)
    output_dir: Path | None = o.output_dir_option("Run directory (default: runs/augment-<timestamp>); rerunning into "
                                                  "it continues where it stopped.")
    resume: Path | None = o.option(None, "Continue a stopped run in its run directory, with its options.",
                                   panel=o.RUN_AND_OUTPUT)
    limit: int | None = o.option(None, "Use only the first N seeds.", min=1, panel=o.MODEL_AND_DATA)


@dataclass
class AugmentEvalOptions(o.TrainOptions):
    data: str | None = o.data_option(f"Seed {QA_ROWS}: JSONL/JSON/CSV/Parquet, a saved HF dataset, or a Hub id "
                                     f"(default: bundled examples/{DEFAULT_TRAIN}).", deprecated=("--train",))
    augmented: list[str] = o.option([], "An augmented file to measure: one reader is trained on the seeds plus its "
                                    "rows, named by the file's stem. Repeat for several.", flags=("--augmented", "-a"),
                                    panel=o.MODEL_AND_DATA)
    eval_data: str | None = o.option(None, f"Held-out {QA_ROWS} scored with SQuAD EM/F1 (default: bundled "
                                     f"examples/{DEFAULT_TEST}).", panel=o.MODEL_AND_DATA, deprecated=("--test",))
    model: str = o.option("all-minilm-l6-v2", "Encoder of the reader: all-minilm-l6-v2 (offline), an HF encoder "
                          "folder, or a Hub id.", flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    max_length: int = o.option(256, "Tokens per (question, context) window; training rows whose answer lies past it "
                               "are skipped and counted.", min=16, panel=o.MODEL_AND_DATA)
    max_answer_tokens: int = o.option(30, "Longest predicted answer span, in tokens.", min=1)
    eval_batch_size: int = o.option(32, "Windows per batch when predicting on --eval-data.", min=1)
    max_steps: int = 60
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "linear"
    warmup_steps: int = 6
    save_every: int = 100
    resume: Path | None = o.option(None, "Continue an eval folder: finished systems are kept, an interrupted one "
                                   "resumes from its checkpoint, the rest are trained.", panel=o.RUN_AND_OUTPUT)


def add_instances(store: VectorStore, folder: Path, items: list[Instance], embedder: Embedder, *,
                  save_every: int) -> int:
    """Embed and add the items the store does not hold yet, saving after every `save_every`; returns how many."""
    from lmlab.core.retrieval.vector_store import add_missing

    todo = [item for item in items if item.id not in store.ids]
    with Progress("index", len(todo), line="{label}: {completed}/{total} rows embedded") as progress:
        return add_missing(store, folder, [item.as_row() for item in todo], [embed_text(item) for item in todo],
                           embedder, save_every=save_every, progress=progress.advance)


def run_index(opts: IndexOptions) -> dict[str, Any]:
    """`lmlab augment index`: embed instances into a vector store folder in chunks saved as they are done, so an
    interrupted index resumes and re-indexing the same files adds only what is new."""
    from lmlab.core.retrieval.vector_store import open_store

    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    files = [opts.data or str(example("augment/store.jsonl"))]
    items = load_instances(files)
    folder = Path(opts.output_dir)
    store = open_store(folder, opts.embedder, opts.index_kind, opts.nlist)
    before, started = len(store), time.perf_counter()
    added = 0
    if any(item.id not in store.ids for item in items):  # the model loads only when there is something to embed
        embedder = Embedder(opts.embedder, batch_size=opts.batch_size, device=device, dtype=dtype)
        added = add_instances(store, folder, items, embedder, save_every=opts.save_every)
    if not added:
        log(f"{folder}: already holds all {len(items)} rows")
    return {"store": str(folder), "files": files, "rows_read": len(items), "added": added, "already_there": before,
            "total": len(store), "embedder": store.info.embedder, "dim": store.info.dim, "index": store.info.index,
            "seconds": round(time.perf_counter() - started, 2)}


_lazy = functools.partial(plugins.lazy, __package__)


def show_augment(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"augment · {summary['retrieval']} · {summary['model']}")
    for name in OUTCOMES:
        table.add_column(name, justify="right")
    table.add_row(*(str(summary[k]) for k in OUTCOMES))
    err.print(table)
    diversity = Table(title="diversity of the questions (distinct-n)")
    diversity.add_column("rows")
    for n in (1, 2, 3):
        diversity.add_column(f"distinct-{n}", justify="right")
    for name, values in summary["diversity"].items():
        diversity.add_row(name, *(f"{values[f'distinct_{n}']:.3f}" for n in (1, 2, 3)))
    err.print(diversity)
    if summary["error"]:
        err.print(f"[yellow]{summary['error']} items failed on backend errors; rerun with --resume "
                  f"{summary['run_dir']} to retry them[/yellow]")
    err.print(f"augmented rows: [bold]{summary['augmented']}[/bold]")


def show_index(summary: dict[str, Any]) -> None:
    err.print(f"{summary['store']}: {summary['added']} rows added ({summary['already_there']} already there), "
              f"{summary['total']} in all · {summary['embedder']} ({summary['dim']} dims, {summary['index']} index) · "
              f"{summary['seconds']} s")


def _group_callback(command: Callable[..., None]) -> Callable[..., None]:
    """`command` (an `options_command`) as the group's own callback, run when no subcommand is given."""
    def callback(ctx: typer.Context, **values: Any) -> None:
        if ctx.invoked_subcommand is None:
            command(ctx, **values)

    callback.__signature__ = inspect.signature(command)  # type: ignore[attr-defined]
    callback.__doc__ = command.__doc__
    return callback


def augment_app() -> typer.Typer:
    app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    app.callback()(_group_callback(options_command(
        AugmentOptions, _lazy("run", "run_augment"), show=show_augment,
        doc="RADA data augmentation: retrieve related instances and contexts from a store, prompt an LLM to write "
            "new (question, answer) pairs, keep those whose answer is in the context, drop near-duplicates. "
            "Subcommands: index (build the store), eval (does the augmented data help a QA reader?).")))
    app.command("index")(options_command(
        IndexOptions, run_index, show=show_index,
        doc="Embed external instances (input, output, optional context) into a vector store folder."))
    app.command("eval")(options_command(
        AugmentEvalOptions, _lazy("evaluate", "run_eval"), show=_lazy("evaluate", "show_report"),
        doc="Measure augmented QA data as RADA does: train an extractive reader on the seeds alone and on seeds + "
            "each --augmented file, and compare SQuAD EM/F1 on --eval-data."))
    return app


def run_demo(output_dir: str, quick: bool) -> None:
    """RADA's part of `lmlab demo`: index the bundled store, augment three bundled seeds (two items each) with
    smollm2-135m twice, with retrieval of demonstrations and contexts and as the seed-only baseline, and show what
    each kept, its diversity and a few generated pairs."""
    from lmlab.plugins.augment.run import run_augment

    root = Path(output_dir)
    store = run_index(IndexOptions(output_dir=root / "augment-store"))
    err.print(f"store: {store['total']} instances from {len(store['files'])} file(s), {store['dim']}-dim "
              f"{store['embedder']} ({store['seconds']} s)")
    summaries = {}
    for retrieval in ("both", "none"):
        summaries[retrieval] = run_augment(AugmentOptions(
            model=BackendOptions(batch_size=8), store=str(root / "augment-store"), retrieval=retrieval,
            multiplier=2, limit=3, max_new_tokens=40, output_dir=root / f"augment-{retrieval}"))
    for retrieval, s in summaries.items():
        d = s["diversity"]["augmented"]
        err.print(f"--retrieval {retrieval:<4}: {s['kept']}/{s['planned']} kept ({s['filtered']} answers not in "
                  f"their context, {s['duplicate']} duplicates, {s['malformed']} malformed) · distinct-2 "
                  f"{d['distinct_2']:.2f} · {s['seconds']} s")
    rows = [json.loads(line) for line in Path(summaries["both"]["augmented"]).read_text().splitlines()]
    for row in rows[:2]:
        err.print(f"  [dim]{row['id']} (demos {', '.join(row['demos'])}; context from {row['context_id']})[/dim]\n"
                  f"  Q: {row['input']}\n  A: {row['output']}")
    err.print("[dim]does it help a reader? `lmlab augment eval --augmented "
              f"{summaries['both']['augmented']}`[/dim]")
