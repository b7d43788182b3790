"""The reranking commands of the `lmlab retrieve` group; each imports its module when it runs."""

from __future__ import annotations

from typing import Any

import typer

from lmlab.core.commands.builder import options_command
from lmlab.core.kernel.console import err
from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.rerank.options import CalibrateOptions, ExplainOptions, RerankOptions, RerankTrainOptions


def _run_rerank(opts: RerankOptions) -> dict[str, Any]:
    from lmlab.plugins.rerank.rerank import run_rerank

    return run_rerank(opts)


def _run_calibrate(opts: CalibrateOptions) -> dict[str, Any]:
    from lmlab.plugins.rerank.calibrate import run_calibrate

    return run_calibrate(opts)


def _run_explain(opts: ExplainOptions) -> dict[str, Any]:
    from lmlab.plugins.rerank.explain_run import run_explain

    return run_explain(opts)


def show_rerank(summary: dict[str, Any]) -> None:
    err.print(f"{summary['variant']} reranker over {summary['retriever']}: {summary['queries']} queries, "
              f"{summary['pairs']} pairs ({summary['pairs_per_s']} pairs/s), top-1 changed for "
              f"{summary['top1_changed']}, mean uncertainty {summary['mean_uncertainty']:.4f} → {summary['output']}")
    if "after" in summary:
        ks = [key for key in summary["after"] if key.startswith("recall@")]
        err.print("  " + ", ".join(f"{k} {summary['before'][k]:.3f} → {summary['after'][k]:.3f}" for k in ks)
                  + f", MRR {summary['before']['mrr']:.3f} → {summary['after']['mrr']:.3f}")


def show_calibrate(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"retrieve calibrate · {summary['judged_pairs']} pairs · {summary['bins']} bins")
    table.add_column("variant", no_wrap=True)
    for name in ("ECE width", "ECE mass", "Brier", "NLL", "acc", "mean std"):
        table.add_column(name, justify="right")
    for variant, r in summary["results"].items():
        rows = [(variant, r)] + ([(f"{variant} · T={r['temperature']:.2f}", r["scaled"])] if "scaled" in r else [])
        for name, values in rows:
            table.add_row(name, *(f"{values[k]:.4f}" for k in ("ece_width", "ece_mass", "brier", "nll", "accuracy")),
                          f"{r['mean_uncertainty']:.4f}", style="bold" if name == summary["best"] else None)
    err.print(table)
    if "temperatures_saved_to" in summary:
        err.print(f"temperatures saved to {summary['temperatures_saved_to']} (used by rerank, search and eval)")
    err.print(f"reliability diagram: {summary['chart']}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def show_explain(summary: dict[str, Any]) -> None:
    from lmlab.plugins.rerank.explain import Explanation, rich_text

    err.print(f"[bold]query:[/bold] {summary['query']}")
    err.print(f"P(relevant) = {summary['probability']:.4f} ({summary['variant']})")
    for method, found in summary["methods"].items():
        err.rule(f"{method} · {found['seconds']} s")
        err.print(rich_text(Explanation(method, found["words"], found["importances"], found["probability"],
                                        found["base"])))
        err.print("top words: " + ", ".join(f"{w} ({v:+.3f})" for w, v in found["top"]))
        err.print(f"view: {found['html']}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def add_rerank_commands(app: typer.Typer) -> None:
    app.command("train-reranker")(trainer_command(
        RerankTrainOptions, "lmlab.plugins.rerank.train:RerankTrainer", extra="rerank",
        doc="Train the cross-encoder context reranker on gold contexts and BM25 hard negatives: a deep ensemble, "
            "SWA and MC dropout (--bayes)."))
    app.command("rerank")(options_command(
        RerankOptions, _run_rerank, show=show_rerank,
        doc="Rerank a retriever's candidates: P(relevant), its uncertainty and the explanation score per "
            "candidate (JSONL on stdout, or --output)."))
    app.command("calibrate")(options_command(
        CalibrateOptions, _run_calibrate, show=show_calibrate,
        doc="ECE (equal-width and equal-mass bins) and reliability diagrams of the reranker's variants on a "
            "labelled set; optional temperature scaling."))
    app.command("explain")(options_command(
        ExplainOptions, _run_explain, show=show_explain,
        doc="LIME and SHAP word importances of the reranker's decision for a (query, context) pair."))
