"""Options of the reranking commands: `retrieve train-reranker`, `rerank`, `calibrate` and `explain` (light
imports: `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.core.commands.devices import DeviceOptions
from lmlab.core.commands.options import (
    MODEL_AND_DATA,
    RUN_AND_OUTPUT,
    TRAINING,
    TrainOptions,
    data_option,
    group,
    option,
    output_dir_option,
)
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER as DEFAULT_ENCODER
from lmlab.core.retrieval.rerankers import LAST, RerankSettings
from lmlab.core.retrieval.retrievers import DEFAULT_INDEX

BAYES = "Bayesian"
MODEL_HELP = ("The reranker: a `retrieve train-reranker` run (or its model/ folder), a registered reranker's name, "
              "or last (the one last trained on --index).")


@dataclass
class RerankTrainOptions(TrainOptions):
    """Options of `lmlab retrieve train-reranker` (the shared training options plus these)."""

    data: str | None = option(None, "Training pairs: KILT queries (their gold pages and BM25 hard negatives; default: "
                              "the bundled examples/retrieve/train.jsonl) or {query, context, label} rows.",
                              flags=("--data", "-d"), panel=MODEL_AND_DATA)
    model: str = option(DEFAULT_ENCODER, "Encoder to train as the cross-encoder: the packaged all-minilm-l6-v2 or a "
                        "local Hugging Face encoder folder.", flags=("--model", "-m"), panel=MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The retrieval index (its corpus gives the contexts, its BM25 the hard "
                         "negatives); the trained reranker is recorded there.", panel=MODEL_AND_DATA)
    eval_data: str | None = option(None, "Held-out pairs scored before and after training, KILT queries or {query, "
                                   "context, label} rows (default: the bundled examples/retrieve/dev.jsonl, or with "
                                   "--data a held-out --eval-share of its queries; 'none' to skip).",
                                   panel=MODEL_AND_DATA)
    eval_share: float = option(0.1, "With --data and no --eval-data: the share of its queries held out (not "
                               "trained on) for the before/after check; 0 trains on all.", min=0.0, max=0.5,
                               panel=MODEL_AND_DATA)
    negatives: int = option(3, "BM25 hard negatives per query (the best-ranked pages that are not gold).", min=0)
    negative_depth: int = option(10, "Pages of BM25 the hard negatives are taken from.", min=1)
    max_length: int = option(128, "Longest query + context in tokens (longer contexts are cut; the title comes "
                             "first).", min=8,
                             panel=MODEL_AND_DATA)
    bayes: str = option("all", "What to train for: ensemble (M members), swa (averaged checkpoints of member 0), "
                        "mc-dropout (one member, dropout kept for inference), or all three.", panel=BAYES)
    members: int = option(3, "ensemble: members M (each its own head init and data order).", min=1, panel=BAYES)
    swa_window: int = option(20, "swa: the last N steps whose checkpoints are averaged.", min=1, panel=BAYES)
    swa_every: int = option(5, "swa: a checkpoint every N steps inside the window (and the last step).", min=1,
                            panel=BAYES)
    mc_passes: int = option(8, "mc-dropout: passes T recorded as the model's default.", min=1, panel=BAYES)
    dropout: float = option(0.1, "Dropout of the encoder (hidden and attention), in training and MC dropout.",
                            min=0.0, max=0.9, panel=BAYES)
    loss: str = option("bce+listwise", "bce (the relevance classifier's binary cross-entropy) or bce+listwise "
                       "(plus the softmax cross-entropy of the gold page among its query's candidates: ranks far "
                       "better after the same steps).", panel=TRAINING)
    max_steps: int = option(80, "Optimizer steps to train.", min=1, panel=TRAINING)
    batch_size: int = option(8, "Queries per micro-batch per process (per member), each with all its pairs: its "
                             "gold pages and --negatives.", min=1, panel=TRAINING)
    lr: float = option(1e-4, "Peak learning rate.", min=0.0, panel=TRAINING)
    warmup_steps: int = option(10, "Linear warmup steps.", min=0, panel=TRAINING)


@dataclass
class RerankOptions:
    data: str | None = data_option("KILT/JSONL queries with `input` (default: the bundled "
                                   "examples/retrieve/dev.jsonl); or --candidates.", deprecated=("--queries",))
    candidates: str | None = option(None, "Rerank a `retrieve search` JSONL output instead of searching.",
                                    panel=MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The retrieval index (corpus and retrievers).", panel=MODEL_AND_DATA)
    model: str = option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=MODEL_AND_DATA)
    retriever: str = option("bm25", "The retriever whose candidates are reranked.", flags=("--retriever", "-r"),
                            panel=MODEL_AND_DATA, repeatable=True)
    rerank: RerankSettings = group(RerankSettings)
    top_k: int = option(10, "Documents per query in the output.", min=1)
    limit: int | None = option(None, "Only the first N queries.", min=1, panel=MODEL_AND_DATA)
    output: Path | None = option(None, "Write the JSONL here instead of stdout.", panel=RUN_AND_OUTPUT,
                                 deprecated=("-o",))
    placement: DeviceOptions = group(DeviceOptions)  # the reranker and a dense retriever


@dataclass
class CalibrateOptions:
    data: str | None = data_option("Labelled set: KILT queries (gold pages and BM25 negatives, default: the bundled "
                                   "examples/retrieve/dev.jsonl) or {query, context, label} rows.")
    index: Path = option(DEFAULT_INDEX, "The retrieval index (for KILT queries).", panel=MODEL_AND_DATA)
    model: str = option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=MODEL_AND_DATA)
    variant: list[str] = option([], "Variants to compare (repeatable; default: every one the model offers).")
    negatives: int = option(3, "BM25 hard negatives per KILT query.", min=0)
    bins: int = option(10, "Bins of the ECE and the reliability diagram.", min=2)
    fit_temperature: bool = option(False, "Fit a temperature per variant on the first --fit-fraction of the "
                                   "queries, report ECE on the rest before and after, and save it into the model.",
                                   deprecated=("--temperature",))
    fit_fraction: float = option(0.5, "Share of the queries the temperature is fitted on.", min=0.05, max=0.95)
    mc_passes: int = option(8, "mc-dropout: passes T per pair.", min=1)
    batch_size: int = option(32, "Pairs per reranker batch.", min=1)
    output_dir: Path | None = output_dir_option("Run directory for results.json and reliability.png (default: "
                                                "runs/retrieve-calibrate-<timestamp>).")
    placement: DeviceOptions = group(DeviceOptions)  # the reranker


@dataclass
class ExplainOptions:
    query: str | None = option(None, "The query (default: the first bundled dev query).", panel=MODEL_AND_DATA,
                               repeatable=True)
    context: str | None = option(None, "The context (default: the query's best BM25 page).", panel=MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The retrieval index (for the default context).", panel=MODEL_AND_DATA)
    model: str = option(LAST, MODEL_HELP, flags=("--model", "-m"), panel=MODEL_AND_DATA)
    explainer: list[str] = option(["lime", "shap"], "Explainers (repeatable): lime, shap.", deprecated=("--method",))
    variant: str = option("plain", "The reranker variant explained (plain is one deterministic pass).",
                          repeatable=True)
    explain_samples: int = option(200, "Perturbed contexts scored per explanation.", min=8,
                                  deprecated=("--samples",))
    top: int = option(10, "Words listed per explainer.", min=1)
    seed: int = option(0, "Seed of the perturbations.")
    output_dir: Path | None = output_dir_option("Folder for explanation.json and one HTML view per explainer "
                                                "(default: runs/retrieve-explain-<timestamp>).")
    placement: DeviceOptions = group(DeviceOptions)  # the reranker
