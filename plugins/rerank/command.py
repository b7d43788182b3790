"""The reranking commands of the `lmlab retrieve` group: their options, each command importing its module when it
runs (light imports: `--help` stays fast), and reranking's part of `lmlab demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lmlab.core.commands import options as o
from lmlab.core.commands.builder import options_command
from lmlab.core.commands.devices import DeviceOptions
from lmlab.core.files.records import example
from lmlab.core.kernel.console import err
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER as DEFAULT_ENCODER
from lmlab.core.retrieval.rerankers import LAST, RerankSettings
from lmlab.core.retrieval.retrievers import DEFAULT_INDEX, Corpus, RetrievalIndex
from lmlab.core.training.trainer import trainer_command
from lmlab.plugins.rerank import lazy

BAYES = "Bayesian"
MODEL_HELP = ("The reranker: a `retrieve train-reranker` run (or its model/ folder), a registered reranker's name, "
              "or last (the one last trained on --index).")


@dataclass
class RerankTrainOptions(o.TrainOptions):
    data: str | None = o.option(None, "Training pairs: KILT queries (their gold pages, on a --passages index the gold "
                                "pages' passages that hold the answer, and BM25 hard negatives; default: the bundled "
                                "examples/retrieve/train.jsonl) or {query, context, label} rows.",
                                flags=("--data", "-d"), panel=o.MODEL_AND_DATA)
    model: str = o.option(DEFAULT_ENCODER, "Encoder to train as the cross-encoder: the packaged all-minilm-l6-v2 or a "
                          "local Hugging Face encoder folder.", flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    index: Path = o.option(DEFAULT_INDEX, "The retrieval index (its corpus gives the contexts, its BM25 the hard "
                           "negatives); the trained reranker is recorded there.", panel=o.MODEL_AND_DATA)
    eval_data: str | None = o.option(None, "Held-out pairs scored before and after training, KILT queries or {query, "
                                     "context, label} rows (default: the bundled examples/retrieve/dev.jsonl, or with "
                                     "--data a held-out --eval-share of its queries; 'none' to skip).",
                                     panel=o.MODEL_AND_DATA)
    eval_share: float = o.option(0.1, "With --data and no --eval-data: the share of its queries held out (not "
                                 "trained on) for the before/after check; 0 trains on all.", min=0.0, max=0.5,
                                 panel=o.MODEL_AND_DATA)
    negatives: int = o.option(3, "BM25 hard negatives per query (the best-ranked pages, or passages, not from a "
                              "gold page).", min=0)
    negative_depth: int = o.option(10, "Pages (passages) of BM25 the hard negatives are taken from.", min=1)
    max_length: int = o.option(128, "Longest query + context in tokens (longer contexts are cut; the title comes "
                               "first).", min=8, panel=o.MODEL_AND_DATA)
    bayes: str = o.option("all", "What to train for: ensemble (M members), swa (averaged checkpoints of member 0), "
                          "mc-dropout (one member, dropout kept for inference), or all three.", panel=BAYES)
    members: int = o.option(3, "ensemble: members M (each its own head init and data order).", min=1, panel=BAYES)
    swa_window: int = o.option(20, "swa: the last N steps whose checkpoints are averaged.", min=1, panel=BAYES)
    swa_every: int = o.option(5, "swa: a checkpoint every N steps inside the window (and the last step).", min=1,
                              panel=BAYES)
    mc_passes: int = o.option(8, "mc-dropout: passes T recorded as the model's default.", min=1, panel=BAYES)
    dropout: float = o.option(0.1, "Dropout of the encoder (hidden and attention), in training and MC dropout.",
                              min=0.0, max=0.9, panel=BAYES)
    loss: str = o.option("bce+listwise", "bce (the relevance classifier's binary cross-entropy) or bce+listwise "
                         "(plus the softmax cross-entropy of the gold page among its query's candidates: ranks far "
                         "better after the same steps).", panel=o.TRAINING)
    max_steps: int = o.option(80, "Optimizer steps to train.", min=1, panel=o.TRAINING)
    batch_size: int = o.option(8, "Queries per micro-batch per process (per member), each with all its pairs: its "
                               "gold pages and --negatives.", min=1, panel=o.TRAINING)
    lr: float = o.option(1e-4, "Peak learning rate.", min=0.0, panel=o.TRAINING)
    warmup_steps: int = o.option(10, "Linear warmup steps.", min=0, panel=o.TRAINING)


@dataclass
class RerankOptions:
    data: str | None = o.data_option("KILT/JSONL queries with `input` (default: the bundled "
                                     "examples/retrieve/dev.jsonl); or --candidates.", deprecated=("--queries",))
    candidates: str | None = o.option(None, "Rerank a `retrieve search` JSONL output instead of searching.",
                                      panel=o.MODEL_AND_DATA)
    index: Path = o.option(DEFAULT_INDEX, "The retrieval index (corpus and retrievers).", panel=o.MODEL_AND_DATA)
    model: str = o.option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    retriever: str = o.option("bm25", "The retriever whose candidates are reranked.", flags=("--retriever", "-r"),
                              panel=o.MODEL_AND_DATA, repeatable=True)
    rerank: RerankSettings = o.group(RerankSettings)
    top_k: int = o.option(10, "Documents per query in the output.", min=1)
    limit: int | None = o.option(None, "Only the first N queries.", min=1, panel=o.MODEL_AND_DATA)
    output: Path | None = o.option(None, "Write the JSONL here instead of stdout.", panel=o.RUN_AND_OUTPUT,
                                   deprecated=("-o",))
    placement: DeviceOptions = o.group(DeviceOptions)  # the reranker and a dense retriever


@dataclass
class CalibrateOptions:
    data: str | None = o.data_option("Labelled set: KILT queries (gold pages and BM25 negatives, default: the bundled "
                                     "examples/retrieve/dev.jsonl) or {query, context, label} rows.")
    index: Path = o.option(DEFAULT_INDEX, "The retrieval index (for KILT queries).", panel=o.MODEL_AND_DATA)
    model: str = o.option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    variant: list[str] = o.option([], "Variants to compare (repeatable; default: every one the model offers).")
    negatives: int = o.option(3, "BM25 hard negatives per KILT query.", min=0)
    bins: int = o.option(10, "Bins of the ECE and the reliability diagram.", min=2)
    fit_temperature: bool = o.option(False, "Fit a temperature per variant on the first --fit-fraction of the "
                                     "queries, report ECE on the rest before and after, and save it into the model.",
                                     deprecated=("--temperature",))
    fit_fraction: float = o.option(0.5, "Share of the queries the temperature is fitted on.", min=0.05, max=0.95)
    mc_passes: int = o.option(8, "mc-dropout: passes T per pair.", min=1)
    risk: float = o.option(0.0, "Also judge the risk-aware confidence of each variant that samples: P(relevant) moved "
                           "toward 1/2 by κ·std (the top label's confidence minus κ·std, as --risk ranks).", min=0.0)
    batch_size: int = o.option(32, "Pairs per reranker batch.", min=1)
    output_dir: Path | None = o.output_dir_option("Run directory for results.json and reliability.png (default: "
                                                  "runs/retrieve-calibrate-<timestamp>).")
    placement: DeviceOptions = o.group(DeviceOptions)  # the reranker


@dataclass
class ExplainOptions:
    query: str | None = o.option(None, "The query (default: the first bundled dev query).", panel=o.MODEL_AND_DATA,
                                 repeatable=True)
    context: str | None = o.option(None, "The context (default: the query's best BM25 page).", panel=o.MODEL_AND_DATA)
    index: Path = o.option(DEFAULT_INDEX, "The retrieval index (for the default context).", panel=o.MODEL_AND_DATA)
    model: str = o.option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    explainer: list[str] = o.option(["lime", "shap"], "Explainers (repeatable): lime, shap.", deprecated=("--method",))
    variant: str = o.option("plain", "The reranker variant explained (plain is one deterministic pass).",
                            repeatable=True)
    explain_samples: int = o.option(200, "Perturbed contexts scored per explanation, at least: more when the words "
                                    "the reranker reads need them (shap 3/4·words² + 8, lime 4·words + 32), up to "
                                    "1024.", min=8, deprecated=("--samples",))
    top: int = o.option(10, "Words listed per explainer.", min=1)
    seed: int = o.option(0, "Seed of the perturbations.")
    output_dir: Path | None = o.output_dir_option("Folder for explanation.json and one HTML view per explainer "
                                                  "(default: runs/retrieve-explain-<timestamp>).")
    placement: DeviceOptions = o.group(DeviceOptions)  # the reranker


def show_rerank(summary: dict[str, Any]) -> None:
    err.print(f"{summary['variant']} reranker over {summary['retriever']}: {summary['queries']} queries, "
              f"{summary['pairs']} pairs ({summary['pairs_per_s']} pairs/s), top-1 changed for "
              f"{summary['top1_changed']}, mean uncertainty {summary['mean_uncertainty']:.4f} → {summary['output']}")
    if "after" in summary:
        ks = [key for key in summary["after"] if key.startswith("recall@")]
        err.print("  " + ", ".join(f"{k} {summary['before'][k]:.3f} → {summary['after'][k]:.3f}" for k in ks)
                  + f", MRR {summary['before']['mrr']:.3f} → {summary['after']['mrr']:.3f}")


def show_calibrate(summary: dict[str, Any]) -> None:
    table = Table(title=f"retrieve calibrate · {summary['judged_pairs']} pairs · {summary['bins']} bins")
    table.add_column("variant", no_wrap=True)
    for name in ("ECE width", "ECE mass", "top-label ECE", "Brier", "NLL", "acc", "mean std"):
        table.add_column(name, justify="right")
    keys = ("ece_width", "ece_mass", "top_label_ece_width", "brier", "nll", "accuracy")
    for variant, r in summary["results"].items():
        rows = [(variant, r)] + ([(f"{variant} · T={r['temperature']:.2f}", r["scaled"])] if "scaled" in r else [])
        rows += [(f"{variant} · κ={r['risk_aware']['risk']:g}", r["risk_aware"])] if "risk_aware" in r else []
        for name, values in rows:
            table.add_row(name, *(f"{values[k]:.4f}" for k in keys),
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
                                        found["base"], found.get("unseen_words", 0))))
        if found.get("unseen_words"):
            err.print(f"{found['unseen_words']} words past the reranker's token cut (grey): not read, importance 0")
        err.print("top words: " + ", ".join(f"{w} ({v:+.3f})" for w, v in found["top"]))
        err.print(f"view: {found['html']}")
    err.print(f"run directory: [bold]{summary['run_dir']}[/bold]")


def add_rerank_commands(app: typer.Typer) -> None:
    app.command("train-reranker")(trainer_command(
        RerankTrainOptions, "lmlab.plugins.rerank.train:RerankTrainer", extra="rerank",
        doc="Train the cross-encoder context reranker on gold contexts and BM25 hard negatives: a deep ensemble, "
            "SWA and MC dropout (--bayes)."))
    app.command("rerank")(options_command(
        RerankOptions, lazy("rerank", "run_rerank"), show=show_rerank,
        doc="Rerank a retriever's candidates: P(relevant), its uncertainty and the explanation score per "
            "candidate (JSONL on stdout, or --output)."))
    app.command("calibrate")(options_command(
        CalibrateOptions, lazy("calibrate", "run_calibrate"), show=show_calibrate,
        doc="ECE (equal-width and equal-mass bins) and reliability diagrams of the reranker's variants on a "
            "labelled set; optional temperature scaling."))
    app.command("explain")(options_command(
        ExplainOptions, lazy("explain", "run_explain"), show=show_explain,
        doc="LIME and SHAP word importances of the reranker's decision for a (query, context) pair."))


def run_demo(output_dir: str, quick: bool) -> None:
    """Full demo only (it fine-tunes MiniLM): train-reranker for 30 steps (2 members and SWA) on the retrieve step's
    index (built here if that step did not run), then calibrate, rerank and explain; the README uses the defaults."""
    from lmlab.plugins.rerank.calibrate import run_calibrate
    from lmlab.plugins.rerank.explain import run_explain
    from lmlab.plugins.rerank.rerank import run_rerank
    from lmlab.plugins.rerank.train import RerankTrainer

    root = Path(output_dir)
    index = root / "retrieve-index"
    retrieval = RetrievalIndex.create(index, Corpus.load(example("retrieve/corpus.jsonl")))
    if "bm25" not in retrieval.built:
        retrieval.build("bm25", {})
    trained = RerankTrainer(RerankTrainOptions(index=index, members=2, max_steps=30, batch_size=4, max_length=64,
                                               swa_window=10, swa_every=5, save_every=30, overwrite=True,
                                               output_dir=root / "retrieve-train-reranker")).run()
    before, after = trained["heldout_before"], trained["heldout_after"]
    err.print(f"reranker: MiniLM cross-encoder × {trained['members']} + SWA, {trained['steps']} steps on "
              f"{trained['pairs']} pairs ({trained['train_seconds']} s); held-out pair AUC {before['auc']:.3f} → "
              f"{after['auc']:.3f}, loss {before['loss']:.3f} → {after['loss']:.3f}")
    model = trained["model_dir"]
    calibrated = run_calibrate(CalibrateOptions(index=index, model=model, mc_passes=4,
                                                output_dir=root / "retrieve-calibrate"))
    eces = ", ".join(f"{v} {r['ece_width']:.3f} / {r['ece_mass']:.3f}" for v, r in calibrated["results"].items())
    err.print(f"calibration on {calibrated['judged_pairs']} held-out pairs, ECE (equal width / equal mass): {eces}")
    ranked = run_rerank(RerankOptions(index=index, model=model, limit=1, top_k=3, output=root / "rerank.jsonl"))
    err.print(f"reranked BM25's top {ranked['pairs']} for one query: recall@1 {ranked['before']['recall@1']:.2f} → "
              f"{ranked['after']['recall@1']:.2f} ({ranked['variant']}, mean uncertainty "
              f"{ranked['mean_uncertainty']:.4f})")
    explained = run_explain(ExplainOptions(index=index, model=model, explainer=["shap"], explain_samples=64,
                                           output_dir=root / "retrieve-explain"))
    top = ", ".join(f"{w} ({v:+.3f})" for w, v in explained["methods"]["shap"]["top"][:5])
    err.print(f"SHAP, '{explained['query']}': P(relevant) {explained['probability']:.3f}; top words {top}")
