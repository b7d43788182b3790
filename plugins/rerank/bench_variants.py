"""`bench rerank`'s variants: what the Bayesian variants and LIME / SHAP cost against one plain pass, what each
variant of a trained folder adds to BM25's candidates (recall@k, MRR, ECE), and what the report says of them."""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import ran
from lmlab.core.bench.synthetic_kilt import bench_corpus
from lmlab.core.retrieval.rerankers import Reranking
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.rerank.bench_pairs import ENCODER, load_scorer, read_pairs

KS = (1, 5)


def bayes(settings: dict[str, Any]) -> dict[str, Any]:
    """One pass of each `BayesianReranker` variant over the first --bayes-pairs pairs, against the plain pass."""
    from lmlab.plugins.rerank.bayes import BayesianReranker

    device = w.worker_device(settings)
    pairs = read_pairs(settings)[:settings["bayes_pairs"]]
    scorers = [load_scorer(folder, settings) for folder in settings["member_folders"]]
    variants = {"bayes-plain": BayesianReranker(scorers[:1], "plain"),
                "bayes-mc-dropout": BayesianReranker(scorers[:1], "mc-dropout", passes=settings["passes"]),
                **({"bayes-ensemble": BayesianReranker(scorers, "ensemble")} if len(scorers) > 1 else {})}
    for reranker in variants.values():  # warm-up: one batch each (kernels, dropout's generator)
        reranker.score(pairs[:settings["batch_size"]])
    rows: dict[str, dict[str, Any]] = {}
    for row, reranker in variants.items():
        seconds, scored = w.timed(partial(reranker.score, pairs), device)
        rows[row] = {"pairs_per_s": round(len(pairs) / seconds, 2), "seconds": round(seconds, 4), "pairs": len(pairs),
                     "forward_passes": {"plain": 1, "mc-dropout": reranker.passes,
                                        "ensemble": len(scorers)}[reranker.variant],
                     "mean_std": float(f"{statistics.fmean(r.std for r in scored):.4g}")}
    plain = rows["bayes-plain"]["seconds"]
    for figures in rows.values():
        figures["vs_one_pass"] = round(figures["seconds"] / plain, 3)
        figures["per_pass_vs_one_pass"] = round(figures["seconds"] / plain / figures["forward_passes"], 3)
    rows.setdefault("bayes-ensemble", {"skipped": "the reranker folder has one member (train with `--bayes ensemble`)"})
    return {"rows": rows}


def explain(settings: dict[str, Any]) -> dict[str, Any]:
    """LIME and SHAP explanations of the plain reranker's P(relevant) for the first --explain-pairs pairs."""
    from lmlab.plugins.rerank.bayes import BayesianReranker
    from lmlab.plugins.rerank.explain import WORD, samples_for
    from lmlab.plugins.rerank.explain import explain as explain_one

    device = w.worker_device(settings)
    chosen = read_pairs(settings)[:settings["explain_pairs"]]
    reranker = BayesianReranker([load_scorer(settings["member_folders"][0], settings)], "plain")
    scored: list[int] = []
    asked: list[int] = []

    def run(query: str, context: str, method: str) -> None:
        """As the explanation score explains: what the reranker sees of the context, samples scaled to its words."""
        predict, seen = reranker.probability_fn(query), reranker.visible(query, context)
        asked.append(samples_for(len(WORD.findall(seen)), method, settings["explain_samples"]))
        explain_one(lambda contexts: scored.append(len(contexts)) or predict(contexts), seen, method,
                    samples=asked[-1], seed=settings["seed"])

    rows = {}
    for method in ("lime", "shap"):
        run(*chosen[0], method)
        scored.clear()  # the warm-up explanation (imports, kernels) is not timed
        asked.clear()
        start = w.clock(device)
        for query, context in chosen:
            run(query, context, method)
        seconds = w.clock(device) - start
        rows[f"explain-{method}"] = {"explanations_per_s": round(len(chosen) / seconds, 3),
                                     "seconds": round(seconds, 4), "explanations": len(chosen),
                                     "samples_per_explanation": round(sum(asked) / len(chosen), 1),
                                     "texts_scored_per_explanation": round(sum(scored) / len(chosen), 1),
                                     "model_calls_per_explanation": round(len(scored) / len(chosen), 1)}
    return {"rows": rows}


def quality(settings: dict[str, Any]) -> dict[str, Any]:
    """Recall@k and MRR of BM25's top --depth alone and reranked by each variant of the trained folder, and the ECE
    of each variant's P(relevant) on those candidates (1 for the query's gold page)."""
    from lmlab.core.retrieval.calibration import expected_calibration_error
    from lmlab.plugins.rerank.bayes import offered_variants, open_folder, read_info

    device = w.worker_device(settings)
    _, queries = bench_corpus(settings["documents"], settings["queries"], settings["seed"])
    index, texts, depth = RetrievalIndex.load(settings["index"]), [q.input for q in queries], settings["depth"]
    bm25 = index.open("bm25", {})
    found = bm25.search(texts, depth)
    rows = {"bm25": {**w.ranking_figures([[h.id for h in hits] for hits in found], queries, KS),
                     "queries": len(queries), "pairs": sum(map(len, found))}}
    gold = [{page for group in q.evidence for page in group} for q in queries]
    folder = Path(settings["reranker"])
    for variant in offered_variants(folder):
        reranker = open_folder(folder, {"variant": variant, "mc_passes": settings["passes"],
                                        "rerank_batch_size": settings["batch_size"]})
        reranking = Reranking(bm25, reranker, index.corpus, depth)
        seconds, ranked = w.timed(partial(reranking.search, texts, depth), device)
        probs = [r.probability for details in reranking.details for r in details.values()]
        labels = [int(page in pages) for details, pages in zip(reranking.details, gold, strict=True)
                  for page in details]
        rows[f"bm25+{variant}"] = {
            **w.ranking_figures([[h.id for h in hits] for hits in ranked], queries, KS), "queries": len(queries),
            "pairs": len(probs), "seconds": round(seconds, 4), "pairs_per_s": round(len(probs) / seconds, 2),
            **{f"ece_{strategy}": round(expected_calibration_error(probs, labels, 10, strategy), 4)
               for strategy in ("width", "mass")},
            "relevant_share": round(sum(labels) / max(1, len(labels)), 4), "temperature": reranker.temperature}
    return {"rows": rows, "max_length": read_info(folder)["max_length"]}


def variant_lines(report: dict[str, Any]) -> list[str]:
    """What the report says under its table of the variants' and explanations' costs, and of quality."""
    settings, results, ratios, lines = report["settings"], report["results"], report["ratios"], []
    mc, ensemble = results.get("bayes-mc-dropout"), results.get("bayes-ensemble")
    if ran(mc):
        lines.append(f"uncertainty costs on {mc['pairs']} pairs: mc-dropout (T={settings['passes']}) "
                     f"{mc['vs_one_pass']:.2f}× one plain pass ({mc['per_pass_vs_one_pass']:.2f}× per pass: "
                     "dropout's random masks, attention off the fused kernel)"
                     + (f", ensemble (M={ensemble['forward_passes']}) {ensemble['vs_one_pass']:.2f}× "
                        f"({ensemble['per_pass_vs_one_pass']:.2f}× per member)" if ran(ensemble) else ""))
    explained = {method: results[f"explain-{method}"] for method in ("lime", "shap")
                 if ran(results.get(f"explain-{method}"))}
    if explained:
        lines.append(f"explanations (at least {settings['explain_samples']} samples): " + ", ".join(
            f"{method} asks {r['samples_per_explanation']:.0f} samples and scores "
            f"{r['texts_scored_per_explanation']:.0f} contexts per explanation in "
            f"{r['model_calls_per_explanation']:.0f} calls" for method, r in explained.items()))
    if not settings["trained"]:
        lines.append(f"[dim]the reranker is untrained ({ENCODER} with a new head, seed 0): speed and score equality "
                     "need no training; pass --model for quality (see --help)[/dim]")
    elif "recall@1_rerank_vs_bm25" in ratios:
        lines.append(f"quality: best reranked recall@1 {ratios['recall@1_rerank_vs_bm25']:.3f}× BM25's; ECE "
                     "(equal width / equal mass) per variant in the last column")
    return lines
