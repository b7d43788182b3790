"""`lmlab retrieve calibrate`: is P(relevant) a probability? ECE (equal-width and equal-mass bins, of the positive
class and of the top label), Brier, NLL and a reliability diagram per variant on a labelled set; temperature scaling
(Guo et al. 2017) fitted on the first queries."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval import calibration
from lmlab.core.retrieval.rerankers import resolve_reranker
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.rerank.bayes import read_info, write_info
from lmlab.plugins.rerank.command import CalibrateOptions
from lmlab.plugins.rerank.train import LabelledPair, load_pairs


def quality(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, float]:
    clipped = np.clip(probs, 1e-12, 1 - 1e-12)
    return {"ece_width": calibration.expected_calibration_error(probs, labels, bins, "width"),
            "ece_mass": calibration.expected_calibration_error(probs, labels, bins, "mass"),
            "top_label_ece_width": calibration.top_label_calibration_error(probs, labels, bins, "width"),
            "top_label_ece_mass": calibration.top_label_calibration_error(probs, labels, bins, "mass"),
            "brier": float(np.mean((probs - labels) ** 2)),
            "nll": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped))),
            "accuracy": float(np.mean((probs >= 0.5) == (labels == 1)))}


def split(pairs: list[LabelledPair], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, judged) that keep each query's pairs together; queries in order of appearance."""
    queries = list(dict.fromkeys(p.query_id for p in pairs))
    fit_queries = set(queries[:max(1, min(len(queries) - 1, round(fraction * len(queries))))])
    fit = np.array([p.query_id in fit_queries for p in pairs])
    return fit, ~fit


def _logits(reranker: Any, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """[S, N] logits before any temperature (S members or passes); a reranker that only gives probabilities
    (a third party's) counts as one sample of logit(p)."""
    if hasattr(reranker, "logits"):
        return reranker.logits(pairs).double()
    p = torch.tensor([r.probability for r in reranker.score(pairs)], dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (torch.log(p) - torch.log1p(-p))[None]


def run_calibrate(opts: CalibrateOptions) -> dict[str, Any]:
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    index = RetrievalIndex.load(opts.index) if (opts.index / "index.json").is_file() else None
    spec, folder = resolve_reranker(opts.model, index)
    pairs = load_pairs(opts.data or str(example("retrieve/dev.jsonl")), index, negatives=opts.negatives,
                       depth=max(10, opts.negatives))
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    if labels.min() == labels.max():
        raise LmlabError(f"The labelled set has only {'relevant' if labels[0] else 'irrelevant'} pairs.",
                         hint="calibration needs both labels (more --negatives, or other data)")
    if opts.output_dir is not None:
        check_run_folder(opts.output_dir, "retrieve calibrate", reusable=True)
    variants = list(dict.fromkeys(opts.variant)) or spec.variants(folder) or ["auto"]
    fit, judged = split(pairs, opts.fit_fraction) if opts.fit_temperature else (None, np.ones(len(pairs), dtype=bool))
    texts = [(p.query, p.context) for p in pairs]
    results: dict[str, dict[str, Any]] = {}
    curves, temperatures = {}, {}
    for variant in variants:
        reranker = spec.open(folder, {"variant": variant, "mc_passes": opts.mc_passes,
                                      "rerank_batch_size": opts.batch_size, "device": device, "dtype": dtype})
        logits = _logits(reranker, texts)
        probs, std = torch.sigmoid(logits).mean(0).numpy(), torch.sigmoid(logits).std(0, unbiased=False).numpy()
        results[variant] = {**quality(probs[judged], labels[judged], opts.bins), "mean_uncertainty": float(std.mean())}
        curves[variant] = calibration.reliability_bins(probs[judged], labels[judged], opts.bins)
        if opts.risk > 0 and len(logits) > 1:
            adjusted = calibration.risk_adjusted(probs, std, opts.risk)[judged]
            results[variant]["risk_aware"] = {"risk": opts.risk, **quality(adjusted, labels[judged], opts.bins)}
            curves[f"{variant} · κ={opts.risk:g}"] = calibration.reliability_bins(adjusted, labels[judged], opts.bins)
        if fit is not None:
            z = logits[:, fit].numpy()
            t = calibration.fit_temperature(z[0] if len(z) == 1 else z, labels[fit])
            scaled = torch.sigmoid(logits / t).mean(0).numpy()
            results[variant]["temperature"] = temperatures[variant] = round(t, 4)
            results[variant]["scaled"] = quality(scaled[judged], labels[judged], opts.bins)
            curves[f"{variant} · T={t:.2f}"] = calibration.reliability_bins(scaled[judged], labels[judged], opts.bins)
        log(f"{variant}: ECE {results[variant]['ece_width']:.4f} (width), {results[variant]['ece_mass']:.4f} (mass)")
    if temperatures and folder is not None:
        info = read_info(folder)
        write_info(folder, {**info, "temperatures": {**info.get("temperatures", {}), **temperatures}})
    run = RunDir(new_run_path("retrieve-calibrate", opts.output_dir), checkpoints=False)
    run.write_config("retrieve calibrate", asdict(opts))
    judged_count = int(judged.sum())
    chart = calibration.plot_reliability(curves, run.path / "reliability.png",
                                         f"reliability · {judged_count} pairs ({int(labels[judged].sum())} relevant)")
    summary = {"model": str(folder) if folder else opts.model, "pairs": len(pairs), "judged_pairs": judged_count,
               "bins": opts.bins, "results": results, "chart": str(chart), "run_dir": str(run.path),
               **({"temperatures_saved_to": str(folder)} if temperatures and folder else {})}
    summary["best"] = min(results, key=lambda v: results[v]["ece_width"])
    write_json_atomic(run.path / "results.json", summary)
    return summary

