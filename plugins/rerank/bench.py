"""`lmlab bench rerank` (docs/benchmarks.md#bench-rerank): the reranker's speed against sentence-transformers'
CrossEncoder on the same weights, the cost of its variants and explanations, and what it adds to BM25 (`--model`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import util
from pathlib import Path
from typing import Any

from lmlab.core.bench import benchmark as b
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Cell, Column, Figure, Ratio, Results, ran, ratio
from lmlab.core.bench.worker import worker_setup
from lmlab.core.commands import options as o
from lmlab.plugins.rerank.bench_pairs import ENCODER, prepare_inputs, reranker_folder
from lmlab.plugins.rerank.bench_scoring import SPEED_TARGET, compare_scores, cross_encoder, ours, scoring_lines
from lmlab.plugins.rerank.bench_variants import KS, bayes, explain, quality, variant_lines

RERANK = "pip install 'lmlab[rerank]'"


def _no_explainers() -> str | None:
    missing = [name for name in ("lime", "shap") if util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed ({RERANK})" if missing else None


SYSTEMS = {"ours": b.System("transformers", RERANK),
           "cross-encoder": b.System("sentence_transformers", "pip install sentence-transformers"),
           "ours-bf16": b.System("transformers", RERANK), "bayes": b.System("transformers", RERANK),
           "explain": b.System(precondition=_no_explainers), "quality": b.System("bm25s", RERANK)}


@dataclass
class RerankBenchOptions(BenchOptions):
    documents: int = o.option(1000, "Pages of the synthetic corpus.", min=10, panel=o.MODEL_AND_DATA)
    queries: int = o.option(100, "KILT queries about them.", min=1, panel=o.MODEL_AND_DATA)
    depth: int = o.option(10, "BM25 pages per query: the pairs scored, and the candidates reranked.", min=1)
    model: str | None = o.option(None, "A trained reranker (`retrieve train-reranker` run or its model/ folder), "
                                 "ideally on this corpus (docs/benchmarks.md#bench-rerank says how); default: an "
                                 "untrained all-MiniLM-L6-v2, and no quality.", flags=("--model", "-m"),
                                 panel=o.MODEL_AND_DATA, deprecated=("--reranker",))
    batch_size: int = o.option(32, "Pairs per batch (every system).", min=1)
    max_length: int = o.option(256, "Longest query + context in tokens (ours, cross-encoder, bayes, explain).", min=8)
    repeats: int = o.option(3, "Timed passes of ours, cross-encoder and ours-bf16 (the median is reported), after "
                            "one warm-up pass.", min=1)
    mc_passes: int = o.option(8, "mc-dropout: stochastic passes T.", min=2, deprecated=("--passes",))
    members: int = o.option(3, "ensemble: members M of the untrained model (seeds 0..M-1).", min=2)
    bayes_pairs: int = o.option(0, "bayes: time the variants on the first N pairs (0: all).", min=0)
    explain_samples: int = o.option(64, "Perturbed contexts per explanation, at least (more for longer contexts, "
                                    "as the commands' --explain-samples).", min=8)
    explain_pairs: int = o.option(8, "Pairs explained (the first N), per explainer.", min=1)
    seed: int = 0


def _settings(opts: RerankBenchOptions) -> dict[str, Any]:
    folder = reranker_folder(opts.model) if opts.model else None  # a bad --model is refused before anything runs
    return {"documents": opts.documents, "queries": opts.queries, "seed": opts.seed, "depth": opts.depth,
            "reranker": str(folder) if folder else f"untrained {ENCODER} + a new head (seed 0)",
            "trained": folder is not None, "batch_size": opts.batch_size, "max_length": opts.max_length,
            "repeats": opts.repeats, "passes": opts.mc_passes, "explain_samples": opts.explain_samples,
            "anchor": "sentence_transformers.CrossEncoder(member-0, max_length, device).predict(pairs, batch_size, "
                      "activation_fn=Identity()) on the same folder and device",
            "timing": "ours, cross-encoder, ours-bf16: pairs / the median of --repeats passes after a warm-up pass, "
                      "tokenization included; bayes: one pass of each variant after a one-batch warm-up; explain: "
                      "one pass after one warm-up explanation; quality: one reranking of all queries",
            "gemm_share": "model FLOPs per second of a pass on its padded batches over the GEMM peak at [batch × "
                          "mean padded tokens, hidden] × [hidden, intermediate]: the best fp32 one of ours' and "
                          "cross-encoder's workers (gemm_peak_gflops_worker: each one's own); ours-bf16's own bf16"}


def _prepare(opts: RerankBenchOptions, settings: dict[str, Any], scratch: Path) -> dict[str, Any]:
    ensemble = "bayes" in b.parse_systems(opts.systems or "bayes", list(SYSTEMS))
    private = prepare_inputs(opts, settings, scratch, opts.members if ensemble else 1)
    settings["members"] = len(private["member_folders"]) if ensemble else None
    return private


def _finish(settings: dict[str, Any], results: Results) -> None:
    compare_scores(settings, results)
    extra = b.flatten_results(results)
    if "quality_max_length" in extra:
        settings["quality_max_length"] = extra["quality_max_length"]


def _of(row: str, key: str) -> Callable[[Results], float | None]:
    """A row's figure among the ratios as it is (a logit gap, an ECE)."""
    return lambda results: results[row].get(key) if ran(results.get(row)) else None


def _best_vs_bm25(key: str) -> Callable[[Results], float | None]:
    """The best reranked row's (by recall@1, then MRR) `key` over BM25's."""
    def compute(results: Results) -> float | None:
        reranked = [row for name, row in results.items() if name.startswith("bm25+") and ran(row)]
        if not reranked or not ran(results.get("bm25")):
            return None
        return ratio(max(reranked, key=lambda row: (row["recall@1"], row["mrr"]))[key], results["bm25"][key])

    return compute


BENCHMARK = Benchmark(
    name="rerank", doc="Reranker speed vs sentence-transformers' CrossEncoder (same logits), bf16, MC dropout / "
    "ensemble / LIME / SHAP costs, and (with --model) recall and ECE over BM25.", options=RerankBenchOptions,
    systems=SYSTEMS, worker="lmlab.plugins.rerank.bench:run_system", settings=_settings, prepare=_prepare,
    finish=_finish, lines=lambda report: [*scoring_lines(report), *variant_lines(report)],
    versions=("torch", "transformers", "sentence-transformers", "lime", "shap", "bm25s"),
    available=lambda opts: {**b.bf16_systems(SYSTEMS, ["ours-bf16"], opts.device), "quality": replace(
        SYSTEMS["quality"], precondition=lambda: None if opts.model else "no --model (a `retrieve train-reranker` run "
        "on this corpus: see --help)")},
    title=lambda s: f"bench rerank · {s['pairs']} pairs ({s['queries']} queries × top {s['depth']} BM25) · "
                    f"{s['documents']} pages · seed {s['seed']} · max_length {s['max_length']} · batch "
                    f"{s['batch_size']}",
    detail=lambda s: f"{s['pairs']} pairs",
    columns=[Cell("rate", "seconds", text=lambda r: f"{r['explanations_per_s']:.2f} expl/s" if "explanations_per_s"
                  in r else f"{r['pairs_per_s']:.1f} pairs/s"), Column("seconds", "seconds", "{:.2f}"),
             Column("× one pass", "vs_one_pass", "{:.2f}"), Column("max |Δ logit|", "max_abs_logit_diff", "{:.2g}"),
             Column("padding", "padding_share"), Column("GEMM share", "gemm_share", "{:.2f}"),
             *(Column(f"recall@{k}", f"recall@{k}") for k in KS), Column("MRR", "mrr"),
             Cell("ECE w / m", "ece_width", text=lambda r: f"{r['ece_width']:.3f} / {r['ece_mass']:.3f}"),
             Column("pairs", "pairs", "{}")],
    ratios=[Ratio("pairs_per_s_ours_vs_cross_encoder", "ours", "cross-encoder", "pairs_per_s",
                  target=(">=", SPEED_TARGET)),
            Figure("max_abs_logit_diff", _of("ours", "max_abs_logit_diff"), target=("<=", 1e-5)),
            Ratio("pairs_per_s_ours_bf16_vs_ours", "ours-bf16", "ours", "pairs_per_s"),
            Ratio("pairs_per_s_ours_bf16_vs_cross_encoder", "ours-bf16", "cross-encoder", "pairs_per_s"),
            Figure("max_abs_logit_diff_bf16_vs_fp32", _of("ours-bf16", "max_abs_logit_diff")),
            Ratio("seconds_mc_dropout_vs_one_pass", "bayes-mc-dropout", "bayes-plain", "seconds"),
            Ratio("seconds_ensemble_vs_one_pass", "bayes-ensemble", "bayes-plain", "seconds"),
            Figure("recall@1_rerank_vs_bm25", _best_vs_bm25("recall@1"), target=(">=", 1.0)),
            Figure("mrr_rerank_vs_bm25", _best_vs_bm25("mrr")),
            *(Figure(f"ece_{bins}_{v}", _of(f"bm25+{v}", f"ece_{bins}"))
              for v in ("plain", "ensemble", "mc-dropout", "swa") for bins in ("width", "mass"))])
bench_rerank = b.bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: one system's figures (a worker that measures several things side by side returns their `rows`)."""
    worker_setup(settings)
    if system in ("ours", "ours-bf16"):
        return ours(settings, bf16=system == "ours-bf16")
    return {"cross-encoder": cross_encoder, "bayes": bayes, "explain": explain, "quality": quality}[system](settings)
