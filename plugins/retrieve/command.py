"""The `lmlab retrieve` group: index (here), search, eval, train and questions (each imports its module when run)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import typer

from lmlab.core.commands.builder import options_command
from lmlab.core.files.records import example
from lmlab.core.kernel.console import err, log
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex, retriever_spec
from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.retrieve import lazy
from lmlab.plugins.retrieve.options import (
    AnswerOptions,
    EvalOptions,
    IndexOptions,
    QuestionOptions,
    ReaderTrainOptions,
    RetrieveTrainOptions,
    SearchOptions,
)


def run_index(opts: IndexOptions) -> dict[str, Any]:
    """`lmlab retrieve index`: the corpus and every retriever's files in one index folder, settings recorded."""
    names = list(dict.fromkeys(opts.retriever))
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    options = {**asdict(opts), "device": device, "dtype": dtype}
    for name in names:  # unknown names and bad options are refused before anything is read or written
        spec = retriever_spec(name)
        if spec.check is not None:
            spec.check(options)
    corpus = Corpus.load(opts.data or example("retrieve/corpus.jsonl"))
    started = time.perf_counter()
    index = RetrievalIndex.create(opts.output_dir, corpus, opts.passages)
    for name in names:
        settings = index.build(name, options)
        log(f"{name}: built in {settings['seconds']} s")
    return {"index": str(index.folder), "corpus": corpus.source, "documents": len(corpus),
            "passages": len(index.passages), "passage_words": index.passage_words,
            "built": {name: index.built[name] for name in names}, "retrievers": sorted(index.built),
            "seconds": round(time.perf_counter() - started, 2)}


def show_index(summary: dict[str, Any]) -> None:
    built = ", ".join(f"{name} ({settings['seconds']} s)" for name, settings in summary["built"].items())
    cut = f" cut into {summary['passages']} passages of {summary['passage_words']} words" if summary["passages"] else ""
    err.print(f"{summary['index']}: {summary['documents']} documents from {summary['corpus']}{cut}; built {built}; "
              f"holds {', '.join(summary['retrievers'])}")


def show_search(summary: dict[str, Any]) -> None:
    err.print(f"{summary['retriever']}: {summary['queries']} queries, top {summary['top_k']} → {summary['output']} "
              f"({summary['queries_per_s']} queries/s)")


def show_eval(summary: dict[str, Any]) -> None:
    from rich.table import Table

    ks = summary["ks"]
    table = Table(title=f"retrieve eval · {summary['queries']} queries · KILT page-level metrics")
    table.add_column("retriever")
    for name in ("R-prec", *(f"recall@{k}" for k in ks), "MRR", "queries/s"):
        table.add_column(name, justify="right")
    for name, values in summary["results"].items():
        style = "bold" if name == summary["best"] else None
        table.add_row(name, f"{values['r_precision']:.3f}", *(f"{values[f'recall@{k}']:.3f}" for k in ks),
                      f"{values['mrr']:.3f}", str(values["queries_per_s"]), style=style)
    err.print(table)
    err.print(f"recall@k plot: {summary['chart']}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def show_answer(summary: dict[str, Any]) -> None:
    """The first answers with the titles they rest on, then KILT's retrieval and downstream scores."""
    from rich.markup import escape
    from rich.table import Table

    for row in summary["answers"][:SHOWN]:
        err.print(f"[dim]{escape(row['id'])}[/dim] {escape(row['input'])} → [bold]{escape(row['answer'] or '∅')}"
                  f"[/bold] [dim]({escape(', '.join(dict.fromkeys(row['titles'])))})[/dim]")
    retrieval, downstream = summary["retrieval"], summary["downstream"] or {}
    table = Table(title=f"retrieve answer · {summary['queries']} queries · {summary['retriever']}"
                        + (f" + rerank {summary['rerank']}" if summary["rerank"] else "") + f" → {summary['reader']}")
    recall = f"recall@{summary['top_k']}"
    read = summary["contexts"]
    columns = {"read R@1": read["recall@1"], f"read R@{summary['top_k']}": read[recall],
               "R-prec": retrieval["r_precision"],
               **{name: downstream.get(key) for name, key in (("EM", "em"), ("F1", "f1"), ("KILT-EM", "kilt_em"),
                                                               ("KILT-F1", "kilt_f1"), ("KILT-AC", "kilt_accuracy"))}}
    for name in columns:
        table.add_column(name, justify="right")
    table.add_row(*("-" if value is None else f"{value:.3f}" for value in columns.values()))
    err.print(table)
    err.print("[dim]read R@k: recall of the contexts read, in rank order; R-prec: of the answer's provenance (the "
              "context it came from first), which KILT-EM/F1 require to be right[/dim]")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def show_questions(summary: dict[str, Any]) -> None:
    err.print(f"{summary['output']}: {summary['written']} questions written for {summary['documents']} documents "
              f"({summary['already_done']} done before, {summary['malformed']} malformed generations dropped)")


SHOWN = 10  # answers printed; every one is in answers.jsonl
HELP = ("Sparse, dense and generative retrieval (Re3val) with KILT metrics: index a corpus, search it, train the "
        "title generator, evaluate.")


def add_retrieve_commands(app: typer.Typer) -> None:
    app.command("index")(options_command(
        IndexOptions, run_index, show=show_index,
        doc="Index a corpus {id, title, text} for BM25, dense and generative retrieval, into one folder."))
    app.command("search")(options_command(
        SearchOptions, lazy("search", "run_search"), show=show_search,
        doc="Rank the index's documents for queries (JSONL or TSV on stdout, or --output)."))
    app.command("eval")(options_command(
        EvalOptions, lazy("evaluate", "run_eval"), show=show_eval,
        doc="KILT retrieval metrics (R-precision, recall@k, MRR) of each retriever and their fusion."))
    app.command("answer")(options_command(
        AnswerOptions, lazy("answer", "run_answer"), show=show_answer,
        doc="Answer queries from retrieved contexts (Re3val's pipeline: retrieve, optionally rerank the contexts, "
            "read) with their provenance, scored by KILT's retrieval and downstream metrics."))
    app.command("train")(trainer_command(
        RetrieveTrainOptions, "lmlab.plugins.retrieve.train:RetrieveTrainer",
        doc="Train the title generator of generative retrieval (title-gen), or fine-tune it with REINFORCE on "
            "titles decoded under the trie (reinforce)."))
    app.command("train-reader")(trainer_command(
        ReaderTrainOptions, "lmlab.plugins.retrieve.reader_train:ReaderTrainer",
        doc="Train the extractive span reader of `retrieve answer --reader span` on each query's gold contexts "
            "(the passages of its gold pages that hold the answer)."))
    app.command("questions")(options_command(
        QuestionOptions, lazy("questions", "run_questions"), show=show_questions,
        doc="Write questions about the index's documents with an LLM, as extra training pairs for `retrieve train`."))
