"""`lmlab bench rerank`: the Bayesian explainable cross-encoder reranker's speed against sentence-transformers'
CrossEncoder on the same weights, the cost of its uncertainty variants and explanations, and (with a trained model)
what reranking adds to BM25, in one run.

The pairs are `bench retrieve`'s: the synthetic corpus of core/bench/synthetic_kilt.py (`--documents` pages
and `--queries` KILT queries from `--seed`, nothing downloaded), indexed with BM25 as `lmlab retrieve index` does
(`RetrievalIndex.build("bm25")`, bm25s robertson, k1 1.5, b 0.75, stemmed, into a temporary index folder), and each
query paired with each of its top `--depth` BM25 pages as (query, `context_of(page)`: "title. text"). A query whose
BM25 finds fewer pages (the others score 0) has fewer pairs. The model is `--reranker` (a `retrieve train-reranker`
folder, member-0 for everything but the ensemble and the quality rows) or, without it, an untrained one: the packaged
all-MiniLM-L6-v2 with a new one-logit head from seed 0 (`load_cross_encoder`, saved with `save_member`): speed and
score equality need no training. Each system runs in its own worker subprocess with the same number of torch threads,
on the same device (`--device`; each worker sees no other):

- `ours`: `PairScorer(model, tokenizer, max_length, batch_size).score(pairs)` in fp32 (tokenized once, sorted by
  token length, batches of `--batch-size`, `torch.inference_mode`); its logits go to the parent for the comparison;
- `cross-encoder`: the anchor, `CrossEncoder(folder, max_length, device=the bench's).predict(pairs, batch_size,
  activation_fn=Identity())` on the same folder (it sorts the pairs by character length and tokenizes per batch);
  the parent compares both workers' logits (`max_abs_logit_diff`, target 1e-5);
- `ours-bf16`: `ours` under `torch.autocast(device, dtype=torch.bfloat16)`, run only where the device has native
  bf16 (a CPU with avx512_bf16 / amx_bf16, a GPU from Ampere on), its logits compared with ours' fp32 ones
  (reported, not judged by the 1e-5 target);
- `bayes`: `BayesianReranker.score` on the same pairs as plain (one pass), mc-dropout (`--passes` T seeded dropout
  passes over pairs tokenized once) and ensemble (`--members` M members: seeds 0..M-1 untrained, or a trained
  folder's own members when it has 2 or more), each timed once after a one-batch warm-up, against the plain pass
  (`--bayes-pairs N`: on the first N pairs only; a dropout pass costs more than a plain one: its masks' random
  numbers, and attention off the fused kernel);
- `explain`: LIME and SHAP word importances (`explain`, `--explain-samples` masked contexts) of the plain reranker's
  P(relevant) (`probability_fn`) for the first `--explain-pairs` pairs, timed once after one warm-up explanation;
- `quality` (only with `--reranker`): recall@1/5 and MRR over the BM25 candidates (top `--depth`) alone and reranked
  by each variant the folder offers (`Reranking` over `open_folder(folder, {"variant": v})`, the folder's own
  max_length and temperatures), and the ECE (10 bins, equal width and equal mass) of each variant's P(relevant) on
  those candidates, labelled 1 for the query's gold page.

pairs/s = pairs / the median wall time of `--repeats` passes (after one warm-up pass), each pass one call over all
pairs, tokenization included. Why parity is the fp32 bound: both run the same BERT forward at the same precision,
and at these shapes its matmuls (the `addmm` of the linear layers, about 70% of a pass) already run near the CPU's
fp32 GEMM peak, which each worker measures at the model's [batch × tokens, hidden] × [hidden, 4·hidden] shape (the
`gemm_share` of a system is its model FLOPs on the padded batches per second over the best fp32 peak the two
workers measured; bf16's over its own bf16 peak). What ours can skip is
only the anchor's extra padding (character length is a rougher sort key than token length: `padded_tokens`); bf16
autocast is the honest way past that bound (AMX / AVX512-BF16 GEMMs), at the price of logits ~1e-4 to 1e-3 off.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
from dataclasses import replace
from importlib import util
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, machine, pool_gemm_peak
from lmlab.core.bench.report import emit, flatten_rows, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, median_seconds, parse_systems, run_systems
from lmlab.core.bench.worker import clock, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt
from lmlab.core.kernel.errors import LmlabError

ENCODER = "all-minilm-l6-v2"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _no_native_bf16(spec: str = "cpu") -> str | None:
    """Why bf16 autocast would be emulated on `--device spec` (slower than fp32), or None: on the CPU Linux's CPU
    flags, else oneDNN's check; on a GPU torch's."""
    from lmlab.core.commands.devices import has_native_bf16, resolve_device

    device = resolve_device(spec)
    if device.type == "cuda":
        return None if has_native_bf16(device) else f"{spec} has no native bfloat16"
    try:
        flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags",
                                                                                                     "Features"))
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        flags = None
    if flags:
        native = bool(flags & {*BF16_FLAGS, "bf16"})  # "bf16": aarch64's FEAT_BF16
    else:
        import torch

        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return None if native else "this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16): bf16 would be emulated"


def _no_explainers() -> str | None:
    missing = [name for name in ("lime", "shap") if util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed (pip install 'lmlab[rerank]')" if missing else None


SYSTEMS = {"ours": System(requires="transformers", install="pip install 'lmlab[rerank]'"),
           "cross-encoder": System(requires="sentence_transformers", install="pip install sentence-transformers"),
           "ours-bf16": System(requires="transformers", install="pip install 'lmlab[rerank]'",
                               precondition=_no_native_bf16),
           "bayes": System(requires="transformers", install="pip install 'lmlab[rerank]'"),
           "explain": System(precondition=_no_explainers),
           "quality": System(requires="bm25s", install="pip install 'lmlab[rerank]'")}
#: The rows of the report a worker gives when it measures several things side by side (quality: one per variant).
ROWS = {"bayes": ("bayes-plain", "bayes-mc-dropout", "bayes-ensemble"), "explain": ("explain-lime", "explain-shap")}
WORKER = "lmlab.plugins.rerank.bench:run_system"
KS = (1, 5)
BM25 = {"bm25_method": "robertson", "k1": 1.5, "b": 0.75, "stem": True}
TARGETS = {"pairs_per_s_ours_vs_cross_encoder": (">=", 1.5), "max_abs_logit_diff": ("<=", 1e-5),
           "recall@1_rerank_vs_bm25": (">=", 1.0)}


# ----------------------------------------------------------------------------------------------- in the worker

def _pairs(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The (query, context) pairs the parent wrote (too long for a worker's command line)."""
    return [(q, c) for q, c in json.loads(Path(settings["pairs_file"]).read_text(encoding="utf-8"))]


def _load(folder: str, device: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of one member folder, fp32, eval mode, on `device`: as `open_folder` loads it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).float().eval()
    model.to(device)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _scorer(folder: str, settings: dict[str, Any]) -> Any:
    from lmlab.plugins.rerank.model import PairScorer

    model, tokenizer = _load(folder, worker_device(settings))
    return PairScorer(model, tokenizer, max_length=settings["max_length"], batch_size=settings["batch_size"])


def _pass_figures(seconds: float, shapes: list[tuple[int, int, int]], config: Any, bf16: bool,
                  device: Any) -> dict[str, Any]:
    """pairs/s, the padding of one pass (`shapes`: rows, padded width, real tokens per batch) and the model FLOPs per
    second on the padded batches over the fp32 (bf16) GEMM peak at the model's shape."""
    import torch

    from lmlab.core.bench.machine import gemm_peak_flops

    d, layers, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    linear = layers * (4 * d * d + 2 * d * ff) + d * d  # Q, K, V, output, the two FFN matmuls; the pooler
    flops = sum(2 * rows * width * linear + layers * 4 * rows * width * width * d for rows, width, _ in shapes)
    pairs, real = sum(rows for rows, _, _ in shapes), sum(tokens for _, _, tokens in shapes)
    padded = sum(rows * width for rows, width, _ in shapes)
    peak = gemm_peak_flops(max(1, padded // len(shapes)), d, ff, torch.bfloat16 if bf16 else torch.float32,
                           device=device)
    return {"pairs_per_s": round(pairs / seconds, 2), "seconds": round(seconds, 4), "pairs": pairs,
            "batches": len(shapes), "padded_tokens": padded, "real_tokens": real,
            "padding_share": round(1 - real / padded, 4), "model_gflops": float(f"{flops / seconds / 1e9:.4g}"),
            "gemm_peak_gflops": float(f"{peak / 1e9:.4g}"), "gemm_share": round(flops / seconds / peak, 3)}


def _precision(bf16: bool, device: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _ours(settings: dict[str, Any], bf16: bool) -> dict[str, Any]:
    pairs, scorer = _pairs(settings), _scorer(settings["member_folders"][0], settings)
    device = worker_device(settings)

    def score() -> Any:
        with _precision(bf16, device):
            return scorer.score(pairs)

    seconds, logits = median_seconds(score, settings["repeats"], device)
    shapes = [(len(rows), t["input_ids"].shape[1], int(t["attention_mask"].sum())) for rows, t in scorer.batches(pairs)]
    return {**_pass_figures(seconds, shapes, scorer.model.config, bf16, device), "logits": logits.tolist()}


def _cross_encoder(settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoConfig

    pairs, folder = _pairs(settings), settings["member_folders"][0]
    device = worker_device(settings)
    model = CrossEncoder(folder, max_length=settings["max_length"], device=str(device))
    shapes: list[tuple[int, int, int]] = []
    preprocess = model.preprocess

    def counting(*args: Any, **kwargs: Any) -> Any:
        features = preprocess(*args, **kwargs)
        ids = features["input_ids"]
        shapes.append((ids.shape[0], ids.shape[1], int(features["attention_mask"].sum())))
        return features

    def predict() -> Any:
        if not shapes:  # median_seconds's untimed warm-up call: record the batches CrossEncoder pads
            model.preprocess = counting
        try:
            return model.predict(pairs, batch_size=settings["batch_size"], activation_fn=torch.nn.Identity(),
                                 show_progress_bar=False)
        finally:
            model.__dict__.pop("preprocess", None)  # the timed calls run the anchor untouched

    seconds, logits = median_seconds(predict, settings["repeats"], device)
    return {**_pass_figures(seconds, shapes, AutoConfig.from_pretrained(folder, local_files_only=True), False,
                            device),
            "logits": [float(x) for x in logits]}


def _bayes(settings: dict[str, Any]) -> dict[str, Any]:
    from lmlab.plugins.rerank.bayes import BayesianReranker

    device = worker_device(settings)
    pairs = _pairs(settings)[:settings["bayes_pairs"] or None]
    scorers = [_scorer(folder, settings) for folder in settings["member_folders"]]
    variants = {"bayes-plain": BayesianReranker(scorers[:1], "plain"),
                "bayes-mc-dropout": BayesianReranker(scorers[:1], "mc-dropout", passes=settings["passes"])}
    if len(scorers) > 1:
        variants["bayes-ensemble"] = BayesianReranker(scorers, "ensemble")
    for reranker in variants.values():  # warm-up: one batch each (kernels, dropout's generator)
        reranker.score(pairs[:settings["batch_size"]])
    rows: dict[str, dict[str, Any]] = {}
    for row, reranker in variants.items():
        start = clock(device)
        scored = reranker.score(pairs)
        seconds = clock(device) - start
        rows[row] = {"pairs_per_s": round(len(pairs) / seconds, 2), "seconds": round(seconds, 4), "pairs": len(pairs),
                     "forward_passes": {"bayes-plain": 1, "bayes-mc-dropout": settings["passes"],
                                        "bayes-ensemble": len(scorers)}[row],
                     "mean_std": float(f"{statistics.fmean(r.std for r in scored):.4g}")}
    if "bayes-ensemble" not in rows:
        rows["bayes-ensemble"] = {"skipped": "the reranker folder has one member (train with `--bayes ensemble`)"}
    plain = rows["bayes-plain"]["seconds"]
    for figures in rows.values():
        if ran(figures):
            figures["vs_one_pass"] = round(figures["seconds"] / plain, 3)
            figures["per_pass_vs_one_pass"] = round(figures["seconds"] / plain / figures["forward_passes"], 3)
    return {"rows": rows}


def _explain(settings: dict[str, Any]) -> dict[str, Any]:
    from lmlab.plugins.rerank.bayes import BayesianReranker
    from lmlab.plugins.rerank.explain import explain

    device = worker_device(settings)
    chosen = _pairs(settings)[:settings["explain_pairs"]]
    reranker = BayesianReranker([_scorer(settings["member_folders"][0], settings)], "plain")
    scored: list[int] = []

    def predict_fn(query: str) -> Any:
        predict = reranker.probability_fn(query)

        def counted(contexts: list[str]) -> Any:
            scored.append(len(contexts))
            return predict(contexts)

        return counted

    rows = {}
    for method in ("lime", "shap"):
        query, context = chosen[0]
        explain(predict_fn(query), context, method, samples=settings["explain_samples"], seed=settings["seed"])
        scored.clear()  # the warm-up explanation (imports, kernels) is not timed
        start = clock(device)
        for query, context in chosen:
            explain(predict_fn(query), context, method, samples=settings["explain_samples"], seed=settings["seed"])
        seconds = clock(device) - start
        rows[f"explain-{method}"] = {"explanations_per_s": round(len(chosen) / seconds, 3),
                                     "seconds": round(seconds, 4), "explanations": len(chosen),
                                     "samples": settings["explain_samples"],
                                     "texts_scored_per_explanation": round(sum(scored) / len(chosen), 1),
                                     "model_calls_per_explanation": round(len(scored) / len(chosen), 1)}
    return {"rows": rows}


def _ranking_metrics(rankings: list[list[str]], queries: list[Any]) -> dict[str, float]:
    from lmlab.core.retrieval.kilt import retrieval_metrics

    metrics = retrieval_metrics({q.id: ranked for q, ranked in zip(queries, rankings, strict=True)}, queries, KS)
    return {key: round(float(metrics[key]), 4) for key in (*(f"recall@{k}" for k in KS), "mrr")}


def _quality(settings: dict[str, Any]) -> dict[str, Any]:
    from lmlab.core.bench.synthetic_kilt import bench_corpus
    from lmlab.core.retrieval.calibration import expected_calibration_error
    from lmlab.core.retrieval.rerankers import Reranking
    from lmlab.core.retrieval.retrievers import RetrievalIndex
    from lmlab.plugins.rerank.bayes import offered_variants, open_folder, read_info

    device = worker_device(settings)
    _, queries = bench_corpus(settings["documents"], settings["queries"], settings["seed"])
    index, texts, depth = RetrievalIndex.load(settings["index"]), [q.input for q in queries], settings["depth"]
    bm25 = index.open("bm25", {})
    found = bm25.search(texts, depth)
    rows = {"bm25": {**_ranking_metrics([[h.id for h in hits] for hits in found], queries),
                     "queries": len(queries), "pairs": sum(map(len, found))}}
    gold = [{page for group in q.evidence for page in group} for q in queries]
    folder = Path(settings["reranker_folder"])
    for variant in offered_variants(folder):
        reranker = open_folder(folder, {"variant": variant, "mc_passes": settings["passes"],
                                        "rerank_batch_size": settings["batch_size"]})
        reranking = Reranking(bm25, reranker, index.corpus, depth)
        start = clock(device)
        ranked = reranking.search(texts, depth)
        seconds = clock(device) - start
        probs = [r.probability for details in reranking.details for r in details.values()]
        labels = [int(page in pages) for details, pages in zip(reranking.details, gold, strict=True)
                  for page in details]
        rows[f"bm25+{variant}"] = {
            **_ranking_metrics([[h.id for h in hits] for hits in ranked], queries), "queries": len(queries),
            "pairs": len(probs), "seconds": round(seconds, 4), "pairs_per_s": round(len(probs) / seconds, 2),
            **{f"ece_{strategy}": round(expected_calibration_error(probs, labels, 10, strategy), 4)
               for strategy in ("width", "mass")},
            "relevant_share": round(sum(labels) / max(1, len(labels)), 4), "temperature": reranker.temperature}
    return {"rows": rows, "max_length": read_info(folder)["max_length"]}


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One system's figures, in a worker subprocess (a worker that measures several things returns their `rows`)."""
    import torch

    torch.set_num_threads(settings["threads"])
    if system == "ours":
        return _ours(settings, bf16=False)
    if system == "ours-bf16":
        return _ours(settings, bf16=True)
    work = {"cross-encoder": _cross_encoder, "bayes": _bayes, "explain": _explain, "quality": _quality}[system]
    return work(settings)


# ----------------------------------------------------------------------------------------------- in the parent

def _reranker_folder(path: str) -> tuple[Path, list[str]]:
    """A trained reranker folder (the run folder or its model/) and its member folders."""
    from lmlab.core.retrieval.rerankers import RERANKER_FILE
    from lmlab.plugins.rerank.bayes import KIND, read_info

    for candidate in (Path(path), Path(path) / "model"):
        if (candidate / RERANKER_FILE).is_file():
            info = read_info(candidate)
            if info.get("kind") != KIND:
                raise LmlabError(f"{candidate} holds a '{info.get('kind')}' reranker, not a {KIND}.",
                                 hint="give a `lmlab retrieve train-reranker` run folder")
            return candidate, [str(candidate / name) for name in info["members"]]
    raise LmlabError(f"--reranker {path}: no {RERANKER_FILE} there or in its model/ folder.",
                     hint="give a `lmlab retrieve train-reranker` run folder (or leave --reranker out for an "
                          "untrained model)")


def _untrained(folder: Path, members: int) -> list[str]:
    """`members` untrained cross-encoders (the packaged MiniLM, a new head from seeds 0..members-1), saved."""
    from lmlab.core.kernel.console import log
    from lmlab.plugins.rerank.model import load_cross_encoder, save_member

    log(f"bench rerank: saving {members} untrained {ENCODER} cross-encoder(s) (seeds 0..{members - 1})…")
    out = []
    for seed in range(members):
        model, tokenizer = load_cross_encoder(ENCODER, seed=seed)
        save_member(folder / f"member-{seed}", model, tokenizer)
        out.append(str(folder / f"member-{seed}"))
    return out


def _build_pairs(folder: Path, docs: list[Any], queries: list[Any], depth: int) -> tuple[list[list[str]], float]:
    """BM25 into an index folder as `retrieve index` builds it, then each query × its top `depth` pages."""
    from lmlab.core.kernel.console import log
    from lmlab.core.retrieval.rerankers import context_of
    from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex

    log(f"bench rerank: building the bm25 index of {len(docs)} pages…")
    index = RetrievalIndex.create(folder, Corpus(docs, source=f"bench_corpus({len(docs)} pages)"))
    built = index.build("bm25", BM25)
    by_id = {d.id: d for d in docs}
    found = index.open("bm25", {}).search([q.input for q in queries], depth)
    return [[(q.input, context_of(by_id[h.id])) for h in hits] for q, hits in zip(queries, found, strict=True)], \
        built["seconds"]


def _logit_checks(logits: dict[str, list[float] | None], per_query: list[int]) -> dict[str, Any]:
    """ours vs cross-encoder and bf16 vs fp32, from the workers' logits (dropped from the results)."""
    import numpy as np

    checks: dict[str, Any] = {}

    def gap(a: list[float], b: list[float]) -> float:
        return float(f"{float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)):.3g}")

    ours, anchor, bf16 = logits.get("ours"), logits.get("cross-encoder"), logits.get("ours-bf16")
    if ours is not None and anchor is not None:
        checks["max_abs_logit_diff"] = gap(ours, anchor)
    fp32 = ours if ours is not None else anchor
    if bf16 is not None and fp32 is not None:
        checks["max_abs_logit_diff_bf16_vs_fp32"] = gap(bf16, fp32)
        checks["bf16_vs_fp32"] = "ours" if ours is not None else "cross-encoder"
        starts = np.cumsum([0, *per_query])
        tops = [(int(np.argmax(fp32[a:b])), int(np.argmax(bf16[a:b]))) for a, b in zip(starts, starts[1:],
                                                                                        strict=False) if b > a]
        orders = [np.argsort(-np.asarray(fp32[a:b]), kind="stable").tolist()
                  == np.argsort(-np.asarray(bf16[a:b]), kind="stable").tolist()
                  for a, b in zip(starts, starts[1:], strict=False) if b > a]
        checks["bf16_same_top1_share"] = round(sum(x == y for x, y in tops) / max(1, len(tops)), 4)
        checks["bf16_same_order_share"] = round(sum(orders) / max(1, len(orders)), 4)
    return checks


def _shared_gemm_peak(results: dict[str, dict[str, Any]]) -> None:
    """One fp32 GEMM peak, the best that ours' and the anchor's workers measured, so that their GEMM shares are
    against the same bound (each worker's own reading stays as gemm_peak_gflops_worker)."""
    fp32 = [results[name] for name in ("ours", "cross-encoder") if ran(results.get(name))]
    if not fp32:
        return
    peak = pool_gemm_peak(fp32)
    for r in fp32:
        r["gemm_share"] = round(r["model_gflops"] / peak, 3)


def _ratios(results: dict[str, dict[str, Any]], checks: dict[str, Any]) -> dict[str, float | None]:
    def get(row: str, figure: str) -> Any:
        return results[row].get(figure) if ran(results.get(row)) else None

    out: dict[str, float | None] = {
        "pairs_per_s_ours_vs_cross_encoder": ratio(get("ours", "pairs_per_s"), get("cross-encoder", "pairs_per_s")),
        "max_abs_logit_diff": checks.get("max_abs_logit_diff"),
        "pairs_per_s_ours_bf16_vs_ours": ratio(get("ours-bf16", "pairs_per_s"), get("ours", "pairs_per_s")),
        "pairs_per_s_ours_bf16_vs_cross_encoder": ratio(get("ours-bf16", "pairs_per_s"),
                                                        get("cross-encoder", "pairs_per_s")),
        "max_abs_logit_diff_bf16_vs_fp32": checks.get("max_abs_logit_diff_bf16_vs_fp32"),
        "seconds_mc_dropout_vs_one_pass": get("bayes-mc-dropout", "vs_one_pass"),
        "seconds_ensemble_vs_one_pass": get("bayes-ensemble", "vs_one_pass")}
    reranked = {row: figures for row, figures in results.items() if row.startswith("bm25+") and ran(figures)}
    if reranked and ran(results.get("bm25")):
        best = max(reranked, key=lambda row: (reranked[row]["recall@1"], reranked[row]["mrr"]))
        out["recall@1_rerank_vs_bm25"] = ratio(reranked[best]["recall@1"], get("bm25", "recall@1"))
        out["mrr_rerank_vs_bm25"] = ratio(reranked[best]["mrr"], get("bm25", "mrr"))
        for row, figures in reranked.items():
            variant = row.removeprefix("bm25+")
            out[f"ece_width_{variant}"] = figures["ece_width"]
            out[f"ece_mass_{variant}"] = figures["ece_mass"]
    return out


def _row(result: dict[str, Any]) -> list[str]:
    def cell(key: str, digits: int = 3) -> str:
        value = result.get(key)
        return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    if "explanations_per_s" in result:
        rate = f"{result['explanations_per_s']:.2f} expl/s"
    else:
        rate = f"{result['pairs_per_s']:.1f} pairs/s" if "pairs_per_s" in result else ""
    diff = result.get("max_abs_logit_diff")
    ece = f"{result['ece_width']:.3f} / {result['ece_mass']:.3f}" if "ece_width" in result else ""
    return [rate, cell("seconds", 2), cell("vs_one_pass", 2), "" if diff is None else f"{diff:.2g}",
            cell("padding_share", 3), cell("gemm_share", 2), *(cell(f"recall@{k}") for k in KS), cell("mrr"), ece,
            cell("pairs")]


def _lines(report: dict[str, Any]) -> list[str]:
    settings, results, ratios, lines = report["settings"], report["results"], report["ratios"], []
    checks = settings.get("checks", {})
    ours, anchor, bf16 = (results.get(name) for name in ("ours", "cross-encoder", "ours-bf16"))
    if ran(ours) and ran(anchor):
        speed = ratios.get("pairs_per_s_ours_vs_cross_encoder")
        lines.append(f"ours vs cross-encoder (fp32, the same BERT forward on the same weights): {speed:.2f}× pairs/s; "
                     f"padded tokens per pass {ours['padded_tokens']} (sorted by token length) vs "
                     f"{anchor['padded_tokens']} (by character length), real {ours['real_tokens']}; "
                     f"{ours['gemm_share']:.0%} and {anchor['gemm_share']:.0%} of the fp32 GEMM peak "
                     f"({ours['gemm_peak_gflops']:.0f} GFLOP/s)")
        if speed is not None and speed < TARGETS["pairs_per_s_ours_vs_cross_encoder"][1]:
            lines.append("  the 1.5× target is out of reach in fp32: both spend their time in the same GEMMs near "
                         "the CPU's fp32 peak, so beyond the anchor's extra padding parity is the bound (bf16 below)")
    if "max_abs_logit_diff" in checks:
        lines.append(f"max |logit ours − cross-encoder| = {checks['max_abs_logit_diff']:.2g} over "
                     f"{settings['pairs']} pairs (target ≤ 1e-05)")
    if ran(bf16) and "max_abs_logit_diff_bf16_vs_fp32" in checks:
        lines.append(f"ours-bf16 (autocast): {ratios.get('pairs_per_s_ours_bf16_vs_ours') or float('nan'):.2f}× "
                     f"ours fp32, {ratios.get('pairs_per_s_ours_bf16_vs_cross_encoder') or float('nan'):.2f}× "
                     f"cross-encoder; max |Δ logit| vs fp32 {checks['max_abs_logit_diff_bf16_vs_fp32']:.2g}, the same "
                     f"top page for {checks['bf16_same_top1_share']:.1%} of queries and the same order for "
                     f"{checks['bf16_same_order_share']:.1%}: the honest way past the fp32 bound, not judged by the "
                     "1e-5 target")
    mc, ensemble = results.get("bayes-mc-dropout"), results.get("bayes-ensemble")
    if ran(mc):
        lines.append(f"uncertainty costs on {mc['pairs']} pairs: mc-dropout (T={settings['passes']}) "
                     f"{mc['vs_one_pass']:.2f}× one plain pass ({mc['per_pass_vs_one_pass']:.2f}× per pass: "
                     "dropout's random masks, attention off the fused kernel)"
                     + (f", ensemble (M={ensemble['forward_passes']}) {ensemble['vs_one_pass']:.2f}× "
                        f"({ensemble['per_pass_vs_one_pass']:.2f}× per member)" if ran(ensemble) else ""))
    explained = {row.removeprefix("explain-"): results[row] for row in ROWS["explain"] if ran(results.get(row))}
    if explained:
        lines.append(f"explanations ({settings['explain_samples']} samples): " + ", ".join(
            f"{method} scores {r['texts_scored_per_explanation']:.0f} contexts per explanation in "
            f"{r['model_calls_per_explanation']:.0f} calls" for method, r in explained.items()))
    if not settings["trained"]:
        lines.append(f"[dim]the reranker is untrained ({ENCODER} with a new head, seed 0): speed and score equality "
                     "need no training; pass --reranker for quality (see --help)[/dim]")
    elif "recall@1_rerank_vs_bm25" in ratios:
        lines.append(f"quality: best reranked recall@1 {ratios['recall@1_rerank_vs_bm25']:.3f}× BM25's; ECE "
                     "(equal width / equal mass) per variant in the last column")
    return lines


def _print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    title = (f"bench rerank · {settings['pairs']} pairs ({settings['queries']} queries × top {settings['depth']} "
             f"BM25) · {settings['documents']} pages · seed {settings['seed']} · max_length {settings['max_length']} "
             f"· batch {settings['batch_size']}")
    print_results(report, title, ("rate", "seconds", "× one pass", "max |Δ logit|", "padding", "GEMM share",
                                  *(f"recall@{k}" for k in KS), "MRR", "ECE w / m", "pairs"), _row, TARGETS,
                  lines=_lines(report))


def bench_rerank(
    documents: Annotated[int, typer.Option("--documents", min=10, help="Pages of the synthetic corpus.")] = 1000,
    queries: Annotated[int, typer.Option("--queries", min=1, help="KILT queries about them.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus, the queries and the explainers.")] = 0,
    depth: Annotated[int, typer.Option("--depth", min=1, help="BM25 pages per query: the pairs scored, and the "
                                                              "candidates reranked.")] = 10,
    reranker: Annotated[str | None, typer.Option("--reranker", help="A trained reranker (`retrieve train-reranker` "
                                                                    "run or its model/ folder), ideally on this "
                                                                    "corpus: `lmlab bench retrieve --documents 1000 "
                                                                    "--queries 100 --systems bm25 --export DIR`, "
                                                                    "`lmlab retrieve index --corpus "
                                                                    "DIR/corpus.jsonl -o IDX -r bm25`, `lmlab retrieve "
                                                                    "train-reranker --index IDX --data "
                                                                    "DIR/train.jsonl -o RUN`, then --reranker RUN. "
                                                                    "Without it, an untrained "
                                                                    "all-MiniLM-L6-v2 cross-encoder (speed and score "
                                                                    "equality need no training; quality is "
                                                                    "skipped).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per batch (every system).")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", min=8, help="Longest query + context in tokens (ours, "
                                                                         "cross-encoder, bayes, explain).")] = 256,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes of ours, cross-encoder and "
                                                                  "ours-bf16 (the median is reported), after one "
                                                                  "warm-up pass.")] = 3,
    passes: Annotated[int, typer.Option("--passes", min=2, help="mc-dropout: stochastic passes T.")] = 8,
    members: Annotated[int, typer.Option("--members", min=2, help="ensemble: members M of the untrained model "
                                                                  "(seeds 0..M-1; a trained folder uses its "
                                                                  "own).")] = 3,
    bayes_pairs: Annotated[int, typer.Option("--bayes-pairs", min=0, help="bayes: time the variants on the first N "
                                                                           "pairs (0: all; the T dropout passes "
                                                                           "dominate the default run).")] = 0,
    explain_samples: Annotated[int, typer.Option("--explain-samples", min=8, help="Masked contexts per "
                                                                                   "explanation.")] = 64,
    explain_pairs: Annotated[int, typer.Option("--explain-pairs", min=1, help="Pairs explained (the first N), per "
                                                                              "explainer.")] = 8,
    systems: Annotated[str, typer.Option("--systems", help=f"Comma-separated systems to run: "
                                                           f"{', '.join(SYSTEMS)}.")] = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Reranker speed vs sentence-transformers' CrossEncoder (same logits), bf16, MC dropout / ensemble / LIME / SHAP
    costs, and (with --reranker) recall and ECE over BM25."""
    from lmlab.core.bench.synthetic_kilt import bench_corpus

    chosen = parse_systems(systems, list(SYSTEMS))
    where = device_settings(device)
    folder, member_folders = _reranker_folder(reranker) if reranker else (None, None)
    known = {**SYSTEMS, "ours-bf16": replace(SYSTEMS["ours-bf16"], precondition=lambda: _no_native_bf16(device)),
             "quality": System(requires="bm25s", install="pip install 'lmlab[rerank]'",
                                          precondition=lambda: None if folder else
                                          "no --reranker (a `retrieve train-reranker` run on this corpus: see "
                                          "--help)")}
    threads = cpu_count()
    docs, asked = bench_corpus(documents, queries, seed)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-rerank-") as tmp:
        grouped, index_seconds = _build_pairs(Path(tmp) / "index", docs, asked, depth)
        pairs = [pair for group in grouped for pair in group]
        if not pairs:
            raise LmlabError("BM25 found no page for any query.", hint="use more --documents or --queries")
        (Path(tmp) / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
        if member_folders is None:
            member_folders = _untrained(Path(tmp) / "untrained", members if "bayes" in chosen else 1)
        settings: dict[str, Any] = {
            "documents": documents, "queries": queries, "seed": seed, "depth": depth, "pairs": len(pairs),
            "queries_with_fewer_than_depth_pairs": sum(len(g) < depth for g in grouped),
            "bm25": {**BM25, "index_seconds": index_seconds},
            "reranker": str(folder) if folder else f"untrained {ENCODER} + a new head (seed 0)",
            "trained": folder is not None, "members": len(member_folders) if "bayes" in chosen else None,
            "batch_size": batch_size, "max_length": max_length, "repeats": repeats, "passes": passes,
            "bayes_pairs": min(bayes_pairs, len(pairs)) or len(pairs),
            "explain_samples": explain_samples, "explain_pairs": min(explain_pairs, len(pairs)), **where,
            "threads": threads,
            "anchor": f"sentence_transformers.CrossEncoder(member-0, max_length, device={where['device']!r})"
                      ".predict(pairs, "
                      "batch_size, activation_fn=Identity()) on the same folder",
            "timing": "ours, cross-encoder, ours-bf16: pairs/s = pairs / the median of --repeats passes after a "
                      "warm-up pass, tokenization included; bayes: one pass of each variant after a one-batch "
                      "warm-up; explain: one pass over the pairs after one warm-up explanation; quality: one "
                      "reranking of all queries",
            "gemm_share": "model FLOPs of a pass on its padded batches, 2·(linear weights) per token plus 4·T·d "
                          "per token and layer of attention, per second, over the GEMM peak at [batch × mean padded "
                          "tokens, hidden] × [hidden, intermediate]: the best fp32 one of ours' and cross-encoder's "
                          "workers (each one's own: gemm_peak_gflops_worker); ours-bf16's own bf16 one"}
        worker_settings = {**settings, "index": str(Path(tmp) / "index"), "pairs_file": str(Path(tmp) / "pairs.json"),
                           "member_folders": member_folders, "reranker_folder": str(folder) if folder else None}
        results = run_systems("rerank", known, chosen, WORKER, worker_settings, threads=threads,
                              detail=f"{len(pairs)} pairs, {threads} threads, {where['device']}")
    logits = {name: results[name].pop("logits", None) for name in ("ours", "cross-encoder", "ours-bf16")
              if name in results}
    checks = _logit_checks(logits, [len(g) for g in grouped])
    _shared_gemm_peak(results)
    results, extra = flatten_rows(results)
    if ran(results.get("ours")) and "max_abs_logit_diff" in checks:
        results["ours"]["max_abs_logit_diff"] = checks["max_abs_logit_diff"]
    if ran(results.get("ours-bf16")) and "max_abs_logit_diff_bf16_vs_fp32" in checks:
        results["ours-bf16"]["max_abs_logit_diff"] = checks["max_abs_logit_diff_bf16_vs_fp32"]
    if "quality_max_length" in extra:
        settings["quality_max_length"] = extra["quality_max_length"]
    settings["checks"] = checks
    report = make_report("rerank", machine(threads, ("torch", "transformers", "sentence-transformers", "lime", "shap",
                                                     "bm25s")), settings, results, _ratios(results, checks))
    emit(report, json_output, _print_table)
