"""What `lmlab bench augment`'s systems work on, the same for each (docs/benchmarks.md#bench-augment): `lmlab
augment`'s own prompts for the bundled seeds, the bundled store's texts, a synthetic store of unit vectors, and
exact top-k search by a numpy loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmlab.core.files.records import example
from lmlab.plugins.augment.records import embed_text, load_instances

if TYPE_CHECKING:
    import numpy as np

DIM, CENTRES, NOISE = 384, 256, 0.5  # the synthetic store: all-MiniLM-L6-v2's width, its clusters and their spread
SYNTHETIC_STORE = f"unit vectors around {CENTRES} random centres in {DIM} dimensions (noise {NOISE}), queries likewise"


def augment_prompts(count: int, seed: int, demos: int) -> list[str]:
    """The first `count` prompts `lmlab augment` writes for the bundled seeds (the extractive-QA template), with
    `demos` seed-only demonstrations each, so no store is needed."""
    from lmlab.plugins.augment.plan import load_template, plan

    seeds = load_instances(str(example("augment/seeds.jsonl")), need_context=True)
    items = plan(seeds, None, None, load_template("extractive-qa"), mode="none", multiplier=-(-count // len(seeds)),
                 demos=demos, pool=1, run_seed=seed)
    return [item.prompt for item in items[:count]]


def store_texts() -> list[str]:
    """The texts `lmlab augment index` embeds for the bundled store."""
    return [embed_text(x) for x in load_instances(str(example("augment/store.jsonl")))]


def synthetic_store(rows: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` unit vectors and `queries` unit queries, each around one of `CENTRES` random centres in `DIM`
    dimensions with Gaussian noise of `NOISE`, seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)

    def around(n: int) -> np.ndarray:
        x = centres[rng.integers(0, CENTRES, n)] + NOISE * rng.normal(size=(n, DIM)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return around(rows), around(queries)


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """The plain loop (the st-numpy system, and the truth recall@k is measured against): one dot product per query,
    then its top k by argpartition."""
    import numpy as np

    found = []
    for q in queries:
        scores = matrix @ q
        top = np.argpartition(-scores, k)[:k]
        found.append(top[np.argsort(-scores[top])].tolist())
    return found
