"""Options of the `lmlab retrieve` commands, one field per flag (light imports: `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOptions
from lmlab.core.commands.options import TrainOptions, data_option, group, index_kind_option, option, output_dir_option
from lmlab.core.evaluation.backends import BackendOptions
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER
from lmlab.core.retrieval.rerankers import RERANK, RerankSettings
from lmlab.core.retrieval.retrievers import DEFAULT_INDEX

DEFAULT_GENERATOR = "smollm2-135m"
BUILT_BY_DEFAULT = ["bm25", "dense", "generative"]
RETRIEVE = "Retrieval"


@dataclass
class IndexOptions:
    data: str | None = data_option("Documents {id, title, text} (JSONL/JSON/CSV/Parquet/saved dataset; default: "
                                   "the bundled examples/retrieve/corpus.jsonl).", deprecated=("--corpus",))
    output_dir: Path = output_dir_option("The index folder; building into one that indexes the same corpus "
                                         "replaces only the retrievers named.", DEFAULT_INDEX,
                                         deprecated=("--output",))
    retriever: list[str] = option(BUILT_BY_DEFAULT, "Retrievers to build (repeatable): bm25, dense, generative "
                                  "(the title trie), or one a plugin adds.", flags=("--retriever", "-r"))
    passages: int = option(0, "Cut each page into passages of this many words (100 is DPR's and KILT's size) for "
                           "bm25 and dense to index; generative keeps the titles. 0: whole pages.", min=0)
    embedder: str = option(DEFAULT_EMBEDDER, "dense: sentence-transformers model (the packaged all-minilm-l6-v2, a "
                           "folder, or a cached Hub name).", panel=o.MODEL_AND_DATA)
    index_kind: o.IndexKind = index_kind_option("dense: flat (exact), ivf or hnsw (approximate, for ~10^5 documents "
                                              "or more).", deprecated=("--index",))
    batch_size: int = option(32, "dense: texts per embedding batch.", min=1)
    k1: float = option(1.5, "bm25: term-frequency saturation k1.", min=0.0)
    b: float = option(0.75, "bm25: length normalisation b.", min=0.0, max=1.0)
    bm25_method: str = option("lucene", "bm25: scoring variant of bm25s (lucene, robertson, atire, bm25l, bm25+).")
    stem: bool = option(True, "bm25: English Snowball stemming of documents and queries.")
    generator_model: str = option(DEFAULT_GENERATOR, "generative: the model whose tokenizer the title trie uses "
                                  "(that of the generator you will train).", panel=o.MODEL_AND_DATA)
    placement: DeviceOptions = group(DeviceOptions)  # where dense embeds the documents


@dataclass
class SearchSettings:
    """What every command that searches an index shares."""

    index: Path = option(DEFAULT_INDEX, "The index folder (`lmlab retrieve index`).", panel=o.MODEL_AND_DATA)
    generator: str | None = option(None, "generative: the trained title generator (a `retrieve train` run or "
                                   "model folder; default: the one last trained on this index).",
                                   panel=o.MODEL_AND_DATA)
    num_beams: int = option(10, "generative: beams of the trie-constrained beam search (it returns at most this "
                            "many titles).", min=1, panel=RETRIEVE)
    rerank_contexts: int = option(0, "generative-rerank: dense contexts per reranking prompt (default: what the "
                                  "generator was trained with, --contexts).", min=0, panel=RETRIEVE)
    title_reranker: str | None = option(None, "generative-rerank: the model that rescores the generator's titles "
                                        "given the dense contexts (a `retrieve train --role title-reranker` run; "
                                        "default: the one last trained on this index, else the generator itself).",
                                        panel=o.MODEL_AND_DATA)
    fuse: list[str] = option([], "fused: the retrievers to fuse (repeatable; default: every one built, generative "
                             "when a generator is known).", panel=RETRIEVE)
    fusion: str = option("rrf", "fused: rrf (reciprocal rank fusion) or weighted (a weighted sum of min-max "
                         "normalised scores).", panel=RETRIEVE)
    weights: list[float] = option([], "fused: one weight per fused retriever, in --fuse order (default: equal).",
                                  panel=RETRIEVE)
    tune_weights: str | None = option(None, "fused: choose the weights on these KILT queries (a dev split, not the "
                                      "queries you report on): the best mean R-precision over steps of 0.1, so "
                                      "never below the best member alone there; instead of --weights.",
                                      panel=RETRIEVE)
    rrf_k: float = option(60.0, "fused: the k of RRF, score = sum of w / (k + rank).", min=0.0, panel=RETRIEVE)
    depth: int = option(100, "fused: candidates taken from each retriever before fusing; eval: the least depth a "
                        "ranking is scored at (KILT asks for more when evidence sets have several pages).", min=1,
                        panel=RETRIEVE)
    batch_size: int = option(16, "Queries per batch (embedding, beam search).", min=1, panel=RETRIEVE)


@dataclass
class SearchOptions:
    query: list[str] = option([], "A query (repeatable); or use --data.", panel=o.MODEL_AND_DATA)
    data: str | None = data_option("Queries from a file: KILT/JSONL rows with `input` (and `id`), or a text file "
                                   "with one query per line (default: the bundled examples/retrieve/dev.jsonl).",
                                   deprecated=("--queries",))
    search: SearchSettings = group(SearchSettings)
    retriever: str = option("fused", "bm25, dense, generative, generative-rerank (decoded titles rescored given "
                            "dense contexts), fused, or one a plugin adds.",
                            flags=("--retriever", "-r"), panel=RETRIEVE, repeatable=True)
    top_k: int = option(10, "Documents per query.", min=1, panel=RETRIEVE)
    rerank: str | None = option(None, "Rerank the candidates with this reranker: a `retrieve train-reranker` run, "
                                "a registered reranker, or last (the one last trained on the index).", panel=RERANK)
    reranking: RerankSettings = group(RerankSettings)
    format: str = option("jsonl", "Output rows: jsonl (one object per query) or tsv (query id, rank, doc id, score, "
                         "title; for passages also their span and the start of their text).",
                         panel=o.RUN_AND_OUTPUT)
    output: Path | None = option(None, "Write the results here instead of stdout.", panel=o.RUN_AND_OUTPUT,
                                 deprecated=("-o",))
    placement: DeviceOptions = group(DeviceOptions)  # the embedder, the generator and the reranker


@dataclass
class EvalOptions:
    data: str | None = data_option("KILT-format queries {id, input, output: [{answer, provenance: [{wikipedia_id, "
                                   "title}]}]} (default: the bundled examples/retrieve/dev.jsonl).")
    search: SearchSettings = group(SearchSettings)
    retriever: list[str] = option([], "Retrievers to evaluate (repeatable): bm25, dense, generative, "
                                  "generative-rerank, fused, or a plugin's (default: every one built, and fused).",
                                  flags=("--retriever", "-r"), panel=RETRIEVE)
    rerank: str | None = option(None, "Also evaluate the last retriever (or --rerank-over) reranked by this reranker, "
                                "once per variant it offers and with the explanation score when --explain-weight "
                                "is set: the paper's ablation (a train-reranker run, a registered name, or last).",
                                panel=RERANK)
    rerank_over: str | None = option(None, "The retriever whose candidates are reranked (default: the last one "
                                     "evaluated, fused when it is).", panel=RERANK)
    reranking: RerankSettings = group(RerankSettings)
    ks: list[int] = option([1, 5, 10], "The k of recall@k (repeatable).", flags=("--k",), min=1, panel=RETRIEVE)
    output_dir: Path | None = output_dir_option("Run directory for results.json, rankings.jsonl and recall.png "
                                                "(default: runs/retrieve-eval-<timestamp>).")
    limit: int | None = option(None, "Use only the first N queries.", min=1, panel=o.MODEL_AND_DATA)
    placement: DeviceOptions = group(DeviceOptions)  # the embedder, the generator and the reranker


@dataclass
class RetrieveTrainOptions(TrainOptions):
    """Options of `lmlab retrieve train` (the shared training options plus these)."""

    model: str = option(DEFAULT_GENERATOR, "Causal LM to train as the title generator: alias (smollm2-135m, "
                        "tiny-llama), local HF folder or Hub id.", flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The index folder (its corpus gives the titles, its trie the constraint); "
                         "the trained generator is recorded there for search and eval.", panel=o.MODEL_AND_DATA)
    method: str = option("title-gen", "title-gen: learn to write the gold title of a query (cross-entropy); "
                         "reinforce: REINFORCE on titles decoded under the trie, from a trained generator.")
    questions: list[str] = option([], "Extra (query, title) pairs from `lmlab retrieve questions` (repeatable).",
                                  panel=o.MODEL_AND_DATA)
    max_length: int = option(96, "Longest prompt + title in tokens (longer queries lose their start).", min=8,
                             panel=o.MODEL_AND_DATA)
    contexts: int = option(0, "title-gen: also learn each title after the query's top N dense-retrieved contexts "
                           "(Re3val's generative reranking prompt, used by -r generative-rerank).", min=0)
    role: str = option("generator", "What the run is recorded as on the index: generator (what generative "
                       "retrieval decodes with) or title-reranker (with --contexts: what generative-rerank rescores "
                       "the generator's titles with, Re3val's page-title reranker trained apart).")
    estimator: str = option("sample", "reinforce: sample (titles drawn from the generator restricted to the trie: "
                            "REINFORCE's unbiased estimator) or beam (the beam search's titles, weighed: minimum-risk "
                            "training over the beam).")
    samples: int = option(4, "reinforce --estimator sample: titles sampled per query.", min=1)
    num_beams: int = option(4, "reinforce --estimator beam: titles decoded per query.", min=1)
    reward: str = option("match", "reinforce: match (1 if the title is in a gold evidence set, else 0), rank "
                         "(--estimator beam: 1 / beam rank of a gold title, 0 otherwise) or reader (the best F1 "
                         "against the query's gold answers of the span --reader-model reads from the title's page).")
    reader_model: str | None = option(None, "reinforce --reward reader: the extractive reader (a folder `lmlab "
                                      "augment eval` saved, or an encoder folder) that reads each title's page: its "
                                      "text, or on a --passages index the 5 passages of it that bm25 ranks best for "
                                      "the query (its first 5 without bm25).", panel=o.MODEL_AND_DATA)
    baseline: str = option("mean", "reinforce: mean (the mean reward of the query's other samples, or with "
                           "--estimator beam of its decoded titles), ema (a moving average over steps) or none.")
    ema: float = option(0.9, "reinforce: decay of the ema baseline.", min=0.0, max=1.0)
    max_steps: int = option(60, "Optimizer steps to train.", min=1, panel=o.TRAINING)
    batch_size: int = option(8, "Examples per micro-batch per process.", min=1, panel=o.TRAINING)
    lr: float = option(3e-4, "Peak learning rate.", min=0.0, panel=o.TRAINING)


@dataclass
class ReaderTrainOptions(TrainOptions):
    """Options of `lmlab retrieve train-reader` (the shared training options plus these)."""

    model: str = option("all-minilm-l6-v2", "Encoder of the span reader: all-minilm-l6-v2 (offline), an HF encoder "
                        "folder, or a saved reader to go on training.", flags=("--model", "-m"),
                        panel=o.MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The index whose pages (or passages, on a `--passages` index) give each "
                         "query's gold contexts.", panel=o.MODEL_AND_DATA)
    eval_data: str | None = option(None, "Held-out KILT queries read from their gold contexts after training: EM "
                                   "and F1 (default: the bundled examples/retrieve/dev.jsonl; 'none' to skip).",
                                   panel=o.MODEL_AND_DATA)
    max_length: int = option(256, "Tokens per (question, context) window; a query whose answer lies past it is "
                             "skipped and counted.", min=16, panel=o.MODEL_AND_DATA)
    max_answer_tokens: int = option(30, "Longest predicted answer span, in tokens.", min=1)
    eval_batch_size: int = option(32, "Windows per batch when predicting on --eval-data.", min=1)
    max_steps: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "linear"
    warmup_steps: int = 10


@dataclass
class QuestionOptions:
    model: BackendOptions = group(lambda: BackendOptions(batch_size=8))
    backend: str = option("hf", "hf (local transformers) or openai (an OpenAI-compatible server).",
                          panel=o.MODEL_AND_DATA)
    index: Path = option(DEFAULT_INDEX, "The index folder whose documents get questions.", panel=o.MODEL_AND_DATA)
    per_document: int = option(2, "Questions to write per document.", min=1)
    temperature: float = option(0.8, "Sampling temperature (0: greedy, then only one distinct question).",
                                min=0.0, panel=o.BACKEND)
    max_new_tokens: int = option(40, "Tokens per question.", min=1, panel=o.BACKEND)
    output: Path = option(Path("runs/retrieve-questions.jsonl"), "Pairs {input, title, wikipedia_id} to train on "
                          "(appended to; a rerun skips documents already done).", panel=o.RUN_AND_OUTPUT,
                          deprecated=("-o",))
    limit: int | None = option(None, "Only the first N documents.", min=1, panel=o.MODEL_AND_DATA)


@dataclass
class AnswerOptions:
    data: str | None = data_option("KILT-format queries {id, input[, output]}; answers and provenance, where given, "
                                   "are scored (default: the bundled examples/retrieve/dev.jsonl).")
    search: SearchSettings = group(SearchSettings)
    retriever: list[str] = option(["bm25"], "What finds the contexts (repeatable): bm25 or dense (passages on a "
                                  "`--passages` index), generative or generative-rerank (the passages of their "
                                  "titles, filled from bm25 when fewer pages decode), fused, or a plugin's. Several: "
                                  "each one's contexts, fused by RRF (--rrf-k) before the context reranker (the "
                                  "Bayesian/XAI paper's multi-perspective retrieval).", flags=("--retriever", "-r"),
                                  panel=RETRIEVE)
    top_k: int = option(5, "Contexts the reader reads per query (Re3val's reader reads five).", min=1, panel=RETRIEVE)
    rerank: str | None = option(None, "Rerank the gathered contexts with this context reranker before reading: a "
                                "`retrieve train-reranker` run, a registered reranker, or last.", panel=RERANK)
    reranking: RerankSettings = group(RerankSettings)
    weigh_contexts: bool = option(False, "With --rerank: weigh each context by the reranker's confidence in it "
                                  "(P(relevant) − κ·std with --risk): span adds log(confidence) to its spans' "
                                  "scores; generate answers from each context alone and keeps the answer whose "
                                  "contexts' confidences sum highest (RAG-Sequence's marginal; --top-k times the "
                                  "generations).", panel=RERANK)
    reader: str = option("generate", "generate: --model writes the answer from the contexts through --backend; "
                         "span: the extractive reader in --model (a reader `lmlab augment eval` saved, or an encoder) "
                         "cuts the best span out of them.", panel=o.MODEL_AND_DATA)
    model: str = option("smollm2-135m", "The reader's model: for generate an alias, HF folder or Hub id (hf), or the "
                        "server's model name; for span a reader or encoder folder.", flags=("--model", "-m"),
                        panel=o.MODEL_AND_DATA)
    backend: str = option("hf", "generate: hf (local transformers) or a registered backend, with its default "
                          "settings.", panel=o.MODEL_AND_DATA)
    max_new_tokens: int = option(24, "generate: tokens per answer.", min=1, panel=o.BACKEND)
    chat_template: bool = option(True, "generate (hf): send each prompt as a user turn in the model's chat template "
                                 "(instruct models such as the default; --no-chat-template for a base model).",
                                 panel=o.BACKEND)
    output_dir: Path | None = output_dir_option("Run directory for answers.jsonl (KILT's guess format: each answer "
                                                "with its provenance) and results.json (default: "
                                                "runs/retrieve-answer-<timestamp>).")
    limit: int | None = option(None, "Use only the first N queries.", min=1, panel=o.MODEL_AND_DATA)
    placement: DeviceOptions = group(DeviceOptions)  # the retrievers' models, the reranker and the reader
