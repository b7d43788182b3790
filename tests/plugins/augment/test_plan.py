"""Each prompt holds exactly the demonstrations and the context its retrieval mode picked."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.vector_store import StoreInfo, VectorStore
from lmlab.plugins.augment.plan import load_template, plan
from lmlab.plugins.augment.records import Instance

QA = load_template("extractive-qa")
SEEDS = [Instance(f"s{i}", f"seed question {i}?", f"answer {i}", f"Seed context {i} says answer {i}.")
         for i in range(3)]
STORE = [Instance(f"x{i}", f"store question {i}?", f"store answer {i}", f"Store context {i // 2}.") for i in range(8)]


def crafted() -> tuple[VectorStore, np.ndarray]:
    """Store item i is the basis vector e_i; seed 0 lies nearest x0, x1, x2 in that order, then the rest."""
    store = VectorStore(StoreInfo(embedder="test", dim=8))
    store.add(np.eye(8, dtype=np.float32), [x.as_row() for x in STORE])
    weights = np.array([[8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 1, 1, 8, 1, 1, 1]], np.float32)
    return store, weights / np.linalg.norm(weights, axis=1, keepdims=True)


def demos_in(prompt: str, pool: list[Instance]) -> list[str]:
    return [x.id for x in pool if f"Question: {x.input}\nAnswer: {x.output}" in prompt]


def test_demos_mode_draws_from_the_nearest_items_and_targets_the_seeds_context() -> None:
    store, vectors = crafted()
    items = plan(SEEDS, vectors, store, QA, mode="demos", multiplier=4, demos=3, pool=4, run_seed=1)
    assert [i.id for i in items[:4]] == ["s0#0", "s0#1", "s0#2", "s0#3"] and len(items) == 12
    for item in items:
        assert sorted(demos_in(item.prompt, STORE + SEEDS)) == sorted(d.id for d in item.demos)
        assert len(item.demos) == 3 and item.prompt.endswith(f"Context: {item.seed.context}\nQuestion:")
    assert {d.id for i in items[:4] for d in i.demos} <= {"x0", "x1", "x2", "x3"}  # seed 0's pool of 4
    assert {d.id for i in items[4:8] for d in i.demos} <= {"x7", "x6", "x5", "x4"}
    assert len({tuple(d.id for d in i.demos) for i in items[:4]}) > 1  # new combinations per item


def test_context_mode_targets_retrieved_contexts_in_order_with_seed_demos() -> None:
    store, vectors = crafted()
    items = plan(SEEDS, vectors, store, QA, mode="context", multiplier=3, demos=2, pool=4, run_seed=1)
    assert [i.context for i in items[:3]] == ["Store context 0.", "Store context 1.", "Store context 2."]
    assert [i.context_id for i in items[:3]] == ["x0", "x2", "x4"]
    for item in items:
        assert item.prompt.endswith(f"Context: {item.context}\nQuestion:")
        assert item.demos[0] == item.seed and all(d in SEEDS for d in item.demos) and len(item.demos) == 2
        assert sorted(demos_in(item.prompt, STORE + SEEDS)) == sorted(d.id for d in item.demos)


def test_both_mode_never_shows_a_demo_from_the_target_context() -> None:
    store, vectors = crafted()
    for item in plan(SEEDS, vectors, store, QA, mode="both", multiplier=3, demos=2, pool=6, run_seed=3):
        assert item.context.startswith("Store context") and all(d.context != item.context for d in item.demos)
        assert sorted(demos_in(item.prompt, STORE)) == sorted(d.id for d in item.demos)
        assert item.prompt.count("Context: ") == 3


def test_the_seed_only_baseline_uses_other_seeds_and_no_store() -> None:
    items = plan(SEEDS, None, None, QA, mode="none", multiplier=2, demos=3, pool=4, run_seed=1)
    for item in items:
        assert item.seed not in item.demos and len(item.demos) == 2
        assert item.context == item.seed.context and "Store" not in item.prompt


def test_planning_is_a_function_of_the_seed_and_item_only() -> None:
    store, vectors = crafted()
    a = plan(SEEDS, vectors, store, QA, mode="both", multiplier=3, demos=2, pool=6, run_seed=3)
    b = plan(SEEDS[:1], vectors[:1], store, QA, mode="both", multiplier=3, demos=2, pool=6, run_seed=3)
    assert a[:3] == b and a != plan(SEEDS, vectors, store, QA, mode="both", multiplier=3, demos=2, pool=6,
                                    run_seed=4)


def test_context_retrieval_needs_a_template_with_a_context() -> None:
    store, vectors = crafted()
    with pytest.raises(LmlabError, match="has no \\{context\\} in its target"):
        plan(SEEDS, vectors, store, load_template("multiple-choice"), mode="both", multiplier=1, demos=1, pool=2,
             run_seed=0)
