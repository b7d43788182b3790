"""Options of `lmlab augment` and `lmlab augment index`, one field per flag (light imports: `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.core.commands.devices import DeviceOptions
from lmlab.core.commands.options import (
    BACKEND,
    MODEL_AND_DATA,
    RUN_AND_OUTPUT,
    IndexKind,
    data_option,
    group,
    index_kind_option,
    option,
    output_dir_option,
)
from lmlab.core.evaluation.backends import BackendOptions
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER

STORE_HINT = ("A vector store folder (`lmlab augment index`), or instance files to index on the fly "
              "(default: the bundled examples/augment/store.jsonl).")


@dataclass
class IndexOptions:
    data: str | None = data_option("Instances to index: a JSONL/JSON/CSV/Parquet file, a folder of them or a saved "
                                   "dataset (fields input, output, optional context, id, source; default: the "
                                   "bundled examples/augment/store.jsonl). Index more files into the same "
                                   "--output-dir to add them.", deprecated=("--store",))
    output_dir: Path = output_dir_option("The vector store folder; indexing into an existing store adds only the "
                                         "rows whose id is new.", Path("runs/augment-store"), deprecated=("--output",))
    embedder: str = option(DEFAULT_EMBEDDER, "sentence-transformers model: the packaged all-minilm-l6-v2 "
                           "(offline), a model folder, or a cached Hub name.", panel=MODEL_AND_DATA)
    index_kind: IndexKind = index_kind_option("flat (exact search), ivf or hnsw (approximate; for stores of ~10^5 "
                                              "rows or more). Fixed when the store is created.",
                                              deprecated=("--index",))
    nlist: int | None = option(None, "ivf: k-means cells (default: about 4·sqrt(rows)).", min=1)
    batch_size: int = option(32, "Texts per embedding batch.", min=1)
    save_every: int = option(2048, "Save the store after this many new rows (an interrupted index resumes).",
                             min=1, panel=RUN_AND_OUTPUT)
    placement: DeviceOptions = group(DeviceOptions)  # the embedder


@dataclass
class AugmentOptions:
    model: BackendOptions = group(lambda: BackendOptions(batch_size=8))
    backend: str = option("hf", "hf (local transformers) or openai (an OpenAI-compatible server such as vLLM or "
                          "`lmlab serve-block`); plugins may add more.", panel=MODEL_AND_DATA)
    data: str | None = data_option("Seed instances (fields input, output, context, optional id; default: the "
                                   "bundled examples/augment/seeds.jsonl).", deprecated=("--seeds",))
    store: str | None = option(None, STORE_HINT, panel=MODEL_AND_DATA)
    retrieval: str = option("both", "demos: retrieved demonstrations; context: a retrieved target context; both "
                            "(RADA); none: the seed-only baseline.")
    template: str = option("extractive-qa", "Prompt template: extractive-qa, multiple-choice, or a TOML/YAML/JSON "
                           "file (instruction, demo, target, check).")
    multiplier: int = option(30, "Items to generate per seed (the paper: 30×).", min=1)
    demos: int = option(3, "Demonstrations per prompt.", min=0)
    pool: int = option(10, "Nearest store items a seed's demonstrations are drawn from.", min=1)
    temperature: float = option(0.9, "Sampling temperature (0: greedy).", min=0.0)
    top_p: float = option(0.95, "Nucleus sampling: smallest token set with this probability.", min=0.01, max=1.0)
    max_new_tokens: int = option(64, "Tokens to generate per item.", min=1)
    filter: bool = option(True, "Keep a pair only if its answer occurs in its context (the template's check).")
    dedupe: bool = option(True, "Drop near-duplicates of kept rows and of the seeds.")
    dedupe_threshold: float = option(0.8, "Word-bigram Jaccard similarity from which two rows are duplicates.",
                                     min=0.0, max=1.0)
    compare: str | None = option(None, "Another run's augmented.jsonl (e.g. --retrieval none) to compare "
                                 "diversity with in the report.", panel=RUN_AND_OUTPUT, deprecated=("--baseline",))
    max_failures: int = option(20, "Stop after this many items in a row fail on backend errors (each is retried "
                               "with backoff first); a rerun resumes.", min=1, panel=BACKEND)
    output_dir: Path | None = output_dir_option("Run directory (default: runs/augment-<timestamp>); rerunning into "
                                                "it continues where it stopped.")
    resume: Path | None = option(None, "Continue a stopped run in its run directory, with its options.",
                                 panel=RUN_AND_OUTPUT)
    limit: int | None = option(None, "Use only the first N seeds.", min=1, panel=MODEL_AND_DATA)
