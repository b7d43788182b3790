"""Retrieval's part of `lmlab demo`: index the bundled corpus, evaluate BM25, dense and fused on the held-out KILT
queries (quick: BM25 only), then train a tiny-llama title generator from scratch on 16 queries and show that
trie-constrained decoding returns real titles and recalls what it learnt (a held-out figure needs a pretrained LM)."""

from __future__ import annotations

from pathlib import Path

from lmlab.core.files.records import example
from lmlab.core.kernel.console import err
from lmlab.plugins.retrieve.command import run_index
from lmlab.plugins.retrieve.evaluate import run_eval
from lmlab.plugins.retrieve.options import EvalOptions, IndexOptions, RetrieveTrainOptions, SearchSettings
from lmlab.plugins.retrieve.train import RetrieveTrainer

GENERATOR, STEPS, SEEN = "tiny-llama", 40, 16


def _line(name: str, values: dict) -> str:
    return (f"{name:>10}: R-precision {values['r_precision']:.3f} · recall@1 {values['recall@1']:.3f} · "
            f"recall@10 {values['recall@10']:.3f} · {values['queries_per_s']} queries/s")


def run_demo(output_dir: str, quick: bool) -> None:
    root = Path(output_dir)
    index = root / "retrieve-index"
    built = run_index(IndexOptions(output_dir=index, generator_model=GENERATOR,
                                   retriever=["bm25"] if quick else ["bm25", "dense", "generative"]))
    err.print(f"index: {built['documents']} pages, built {', '.join(built['built'])} in {built['seconds']} s")
    search = SearchSettings(index=index, fuse=["bm25", "dense"])
    held_out = run_eval(EvalOptions(search=search, retriever=["bm25"] if quick else ["bm25", "dense", "fused"],
                                    output_dir=root / "retrieve-eval"))
    err.print(f"held-out queries ({held_out['queries']}, KILT page-level):")
    for name, values in held_out["results"].items():
        err.print(_line(name, values))
    if quick:
        return
    lines = example("retrieve/train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    seen = root / "retrieve-seen.jsonl"
    seen.write_text("".join(lines[:SEEN]), encoding="utf-8")
    trained = RetrieveTrainer(RetrieveTrainOptions(data=str(seen), index=index, model=GENERATOR, max_steps=STEPS,
                                                   lr=3e-3, batch_size=8, save_every=STEPS,
                                                   output_dir=root / "retrieve-train")).run()
    err.print(f"title generator: {GENERATOR} from scratch, {trained['steps']} steps on {trained['pairs']} (query, "
              f"title) pairs, loss {trained['final']['loss']:.3f} ({trained['train_seconds']} s)")
    recalled = run_eval(EvalOptions(data=str(seen), search=search, retriever=["generative"],
                                    output_dir=root / "retrieve-eval-seen"))
    err.print(f"its {SEEN} training queries, every beam a real title:")
    err.print(_line("generative", recalled["results"]["generative"]))
    err.print(f"[dim]recall@k plot: {held_out['chart']}[/dim]")
