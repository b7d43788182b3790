"""RADA's part of `lmlab demo`: index the bundled external store, augment three bundled seeds twice with
smollm2-135m (retrieval of demonstrations and contexts, then the seed-only baseline), and show what each kept,
its diversity, and a few generated pairs."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.core.evaluation.backends import BackendOptions
from lmlab.core.kernel.console import err
from lmlab.plugins.augment.index import run_index
from lmlab.plugins.augment.options import AugmentOptions, IndexOptions
from lmlab.plugins.augment.run import run_augment

SEEDS, PER_SEED = 3, 2


def run_demo(output_dir: str, quick: bool) -> None:
    root = Path(output_dir)
    store = run_index(IndexOptions(output_dir=root / "augment-store"))
    err.print(f"store: {store['total']} instances from {len(store['files'])} file(s), {store['dim']}-dim "
              f"{store['embedder']} ({store['seconds']} s)")
    summaries = {}
    for retrieval in ("both", "none"):
        opts = AugmentOptions(model=BackendOptions(batch_size=8), store=str(root / "augment-store"),
                              retrieval=retrieval, multiplier=PER_SEED, limit=SEEDS, max_new_tokens=40,
                              output_dir=root / f"augment-{retrieval}")
        summaries[retrieval] = run_augment(opts)
    for retrieval, s in summaries.items():
        d = s["diversity"]["augmented"]
        err.print(f"--retrieval {retrieval:<4}: {s['kept']}/{s['planned']} kept ({s['filtered']} answers not in "
                  f"their context, {s['duplicate']} duplicates, {s['malformed']} malformed) · distinct-2 "
                  f"{d['distinct_2']:.2f} · {s['seconds']} s")
    rows = [json.loads(line) for line in Path(summaries["both"]["augmented"]).read_text().splitlines()]
    for row in rows[:2]:
        err.print(f"  [dim]{row['id']} (demos {', '.join(row['demos'])}; context from {row['context_id']})[/dim]\n"
                  f"  Q: {row['input']}\n  A: {row['output']}")
    err.print("[dim]does it help a reader? `lmlab augment eval --augmented "
              f"{summaries['both']['augmented']}`[/dim]")
