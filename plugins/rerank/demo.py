"""Reranking's part of `lmlab demo` (full demo only: it fine-tunes MiniLM): a short train-reranker run (2 members
and SWA, 30 steps of 4 queries, 16 pairs) on the index the retrieve step built, then calibrate, rerank and explain
with it. The default `lmlab retrieve train-reranker` (3 members, 80 steps of 8 queries) is what the README's figures
come from."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.files.records import example
from lmlab.core.kernel.console import err
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex
from lmlab.plugins.rerank.calibrate import run_calibrate
from lmlab.plugins.rerank.explain_run import run_explain
from lmlab.plugins.rerank.options import CalibrateOptions, ExplainOptions, RerankOptions, RerankTrainOptions
from lmlab.plugins.rerank.rerank import run_rerank
from lmlab.plugins.rerank.train import RerankTrainer

STEPS = 30


def _index(root: Path) -> Path:
    """The retrieve step's index, or a BM25 index of the bundled corpus when that step did not run."""
    folder = root / "retrieve-index"
    index = RetrievalIndex.create(folder, Corpus.load(example("retrieve/corpus.jsonl")))
    if "bm25" not in index.built:
        index.build("bm25", {})
    return folder


def run_demo(output_dir: str, quick: bool) -> None:
    root = Path(output_dir)
    index = _index(root)
    trained = RerankTrainer(RerankTrainOptions(index=index, members=2, max_steps=STEPS, batch_size=4, max_length=64,
                                               swa_window=10, swa_every=5, save_every=STEPS, overwrite=True,
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
