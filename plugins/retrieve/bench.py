"""`lmlab bench retrieve`: speed and recall of each retriever and of their fusion on one synthetic KILT corpus,
against rank-bm25 and transformers' generate (docs/benchmarks.md#bench-retrieve says what is compared and how)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import (
    Benchmark,
    BenchOptions,
    Column,
    Ratio,
    System,
    bench_command,
    flatten_results,
    lookup,
    parse_systems,
    ran,
    ratio,
)
from lmlab.core.bench.synthetic_kilt import bench_corpus
from lmlab.core.commands import options as o
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.retrieve import bench_systems
from lmlab.plugins.retrieve.bench_bm25 import agreement_line, ranking_checks
from lmlab.plugins.retrieve.bench_corpus import build_index, corpus_facts, export_corpus
from lmlab.plugins.retrieve.bench_systems import DEPTH, KS, ROWS
from lmlab.plugins.retrieve.bm25 import check

EMBED = "pip install 'lmlab[embed]'"
SYSTEMS = {"bm25": System("bm25s", "pip install 'lmlab[retrieve]'"),
           "rank-bm25": System("rank_bm25", "pip install rank-bm25"), "dense": System("faiss", EMBED),
           "fused": System("faiss", EMBED), "fused-tuned": System("faiss", EMBED),
           "decode": System("transformers", "pip install transformers"), "generative": System()}


@dataclass
class RetrieveBenchOptions(BenchOptions):
    documents: int = o.option(3000, "Pages of the synthetic corpus.", min=10, panel=o.MODEL_AND_DATA)
    queries: int = o.option(400, "KILT queries about them.", min=1, panel=o.MODEL_AND_DATA)
    lexical_share: float = o.option(0.3, "Chance that a query's cue uses its page's own words rather than a "
                                    "paraphrase.", min=0.0, max=1.0, panel=o.MODEL_AND_DATA)
    bm25_method: str = o.option("robertson", "bm25s variant (robertson ranks as rank-bm25's BM25Okapi).")
    k1: float = o.option(1.5, "BM25 k1 (both BM25 systems).", min=0.0)
    b: float = o.option(0.75, "BM25 b (both BM25 systems).", min=0.0, max=1.0)
    repeats: int = o.option(3, "Timed passes per system (the median is reported), after one warm-up pass.", min=1)
    decode_queries: int = o.option(32, "Prompts of the decoding benchmark.", min=1)
    num_beams: int = o.option(5, "Beams of the decoding benchmark.", min=1)
    decode_batch_size: int = o.option(8, "Prompts per batch (both decoders).", min=1)
    generator: str | None = o.option(None, "A trained title generator (`retrieve train` run or model folder) for "
                                     "generative recall; without it, generative is skipped.", panel=o.MODEL_AND_DATA)
    generative_queries: int = o.option(100, "Queries for generative recall (the first N).", min=1)
    generative_beams: int = o.option(10, "Beams of generative retrieval.", min=1)
    export: Path | None = o.option(None, "Also write the corpus, the queries and ~2000 others (corpus.jsonl, "
                                   "queries.jsonl, train.jsonl) into this folder, to train a generator for "
                                   "--generator (docs/benchmarks.md#bench-retrieve).", panel=o.RUN_AND_OUTPUT)
    seed: int = 0


def _settings(opts: RetrieveBenchOptions) -> dict[str, Any]:
    check({"bm25_method": opts.bm25_method})
    return {**{k: v for k, v in asdict(opts).items() if k not in ("systems", "device", "export")},
            "decode_queries": min(opts.decode_queries, opts.queries), "stem": True, "rank_bm25_epsilon": 0.0,
            "generative_queries": min(opts.generative_queries, opts.queries), "k": DEPTH,
            "embedder": "all-minilm-l6-v2 (flat)", "fusion": "rrf k 60 and weighted (minmax, equal weights), 100 "
            "candidates per member; *-tuned: the weights (steps of 0.1) with the best R-precision on the first third "
            "of the queries, reported on the other two thirds", "timing": "queries/s: median of --repeats passes over "
            "all queries after a warm-up pass (generative: one pass); each pass one search(queries, 10) call"}


def _prepare(opts: RetrieveBenchOptions, settings: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """The corpus's facts into the settings (and its `--export`), then its index in `scratch` for every worker."""
    docs, queries = bench_corpus(opts.documents, opts.queries, opts.seed, lexical_share=opts.lexical_share)
    settings["corpus"] = corpus_facts(docs, queries, settings["stem"])
    if opts.export is not None:
        export_corpus(opts.export, docs, queries, settings, 2000)
    chosen = parse_systems(opts.systems or ",".join(SYSTEMS), list(SYSTEMS))
    settings["index_seconds"] = build_index(scratch, docs, chosen, settings, opts.device)
    return {"index": str(scratch)}


def _finish(settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """bm25's rankings against rank-bm25's, one row per system measured, trie-beam's titles against hf-callback's."""
    settings["checks"] = ranking_checks(results, settings["k1"], DEPTH)
    flatten_results(results)
    if ran(results.get("trie-beam")):
        settings["checks"]["decode_identical"] = all(results[row]["identical"] for row in ROWS["decode"])


@dataclass(frozen=True)
class HeldOut(Ratio):
    """A tuned fusion's figure over the best of `anchor` ("bm25,dense") on the same held-out queries."""

    def value(self, results: dict[str, dict[str, Any]]) -> float | None:
        if not ran(ours := results.get(self.ours)):
            return None
        anchors = [lookup(ours["same_queries"][name], self.key) for name in self.anchor.split(",")]
        return ratio(lookup(ours, self.key), max(anchors), self.digits)


def _tuned_line(row: str, result: dict[str, Any]) -> str:
    same = result["same_queries"]
    shown = ", ".join(f"{name} {weight:g}" for name, weight in result["weights"].items())
    others = ", ".join(f"{name} {figures['recall@1']:.3f}" for name, figures in same.items())
    return (f"{row}: weights {shown} chosen on the first {result['dev_queries']} queries; on the other "
            f"{result['queries']} recall@1 {result['recall@1']:.3f} vs {others}")


@dataclass(frozen=True)
class VsBestSingle(Ratio):
    """`ours` over the best of the systems in `anchor` ("bm25,dense"), when all of them ran."""

    def value(self, results: dict[str, dict[str, Any]]) -> float | None:
        anchors = [results.get(name) for name in self.anchor.split(",")]
        if not ran(results.get(self.ours)) or not all(ran(a) for a in anchors):
            return None
        return ratio(lookup(results[self.ours], self.key), max(lookup(a, self.key) for a in anchors), self.digits)


def _lines(report: dict[str, Any]) -> list[str]:
    checks, results, lines = report["settings"].get("checks", {}), report["results"], []
    singles = {name: results[name]["recall@1"] for name in ("bm25", "dense") if ran(results.get(name))}
    if singles and ran(results.get("fused-rrf")):
        best, fused = max(singles, key=singles.get), results["fused-rrf"]["recall@1"]
        lines.append(f"recall@1: fused (RRF) {fused:.3f} vs the best single retriever ({best}) {singles[best]:.3f}: "
                     f"{fused - singles[best]:+.3f}")
    lines += [_tuned_line(row, results[row]) for row in ROWS["fused-tuned"] if ran(results.get(row))]
    if "bm25_identical_top10_share" in checks:
        lines.append(agreement_line(checks))
    if "decode_identical" in checks:
        lines.append(f"trie-beam vs hf-callback: {'identical' if checks['decode_identical'] else 'DIFFERENT'} titles "
                     "and scores")
    if ran(fused_generative := results.get("fused+generative")):
        two = fused_generative.get("fused_bm25_dense_same_queries", {}).get("recall@1", float("nan"))
        lines.append(f"on the {fused_generative['queries']} generative queries: bm25 + dense RRF recall@1 {two:.3f}, "
                     f"with generative {fused_generative['recall@1']:.3f}")
    return lines


BENCHMARK = Benchmark(
    name="retrieve", doc="Retrieval speed and recall@1/5/10: bm25 vs rank-bm25, dense, fused (equal weights, and "
    "tuned on a dev third), and trie-constrained decoding vs HF.", options=RetrieveBenchOptions, systems=SYSTEMS,
    worker="lmlab.plugins.retrieve.bench:run_system",
    settings=_settings, prepare=_prepare, finish=_finish, lines=_lines, hoisted=["decode_model", "decode_trie"],
    available=lambda opts: {**SYSTEMS, "generative": System(precondition=lambda: None if opts.generator else (
        "no --generator (one trained on this corpus: see --export)")),
        "fused-tuned": System("faiss", EMBED, lambda: None if opts.queries >= 3 else (
            "needs --queries 3 or more (the first third is the dev split)"))},
    versions=("torch", "transformers", "sentence-transformers", "faiss-cpu", "bm25s", "rank-bm25"),
    title=lambda s: f"bench retrieve · {s['documents']} pages · {s['queries']} queries · seed {s['seed']} · bm25 "
                    f"{s['bm25_method']}",
    detail=lambda s: f"{s['documents']} pages, {s['queries']} queries",
    columns=[Column("queries/s", "queries_per_s", "{:.1f}"), *(Column(f"recall@{k}", f"recall@{k}") for k in KS),
             Column("MRR", "mrr"), Column("queries", "queries", "{}")],
    ratios=[Ratio("queries_per_s_bm25s_vs_rank_bm25", "bm25", "rank-bm25", "queries_per_s", target=(">=", 10.0)),
            Ratio("queries_per_s_constrained_vs_hf_callback", "trie-beam", "hf-callback", "queries_per_s",
                  target=(">=", 3.0)),
            VsBestSingle("recall@1_fused_vs_best_single", "fused-rrf", "bm25,dense", "recall@1", target=(">=", 1.0)),
            VsBestSingle("recall@1_fused_weighted_vs_best_single", "fused-weighted", "bm25,dense", "recall@1"),
            HeldOut("recall@1_fused_rrf_tuned_vs_best_single_held_out", "fused-rrf-tuned", "bm25,dense", "recall@1"),
            HeldOut("recall@1_fused_weighted_tuned_vs_best_single_held_out", "fused-weighted-tuned", "bm25,dense",
                    "recall@1"),
            Ratio("recall@1_dense_vs_bm25", "dense", "bm25", "recall@1")])
bench_retrieve = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: the corpus and the index the parent built, then one system's figures (bench_systems.py; a worker that
    measures two systems side by side returns their `rows`)."""
    device = None if system in ("bm25", "rank-bm25") else w.worker_setup(settings)  # BM25 needs no torch
    docs, queries = bench_corpus(settings["documents"], settings["queries"], settings["seed"],
                                 lexical_share=settings["lexical_share"])
    run = getattr(bench_systems, system.replace("-", "_"))
    return run(settings, RetrievalIndex.load(settings["index"]), docs, queries, device)
