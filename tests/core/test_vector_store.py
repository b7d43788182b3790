"""The vector store: nearest items for crafted vectors, a save/load round trip, incremental adds, and the
approximate index kinds agreeing with the exact one; and the packaged embedder's vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.vector_store import StoreInfo, VectorStore


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def store_of(vectors: np.ndarray, kind: str = "flat") -> VectorStore:
    store = VectorStore(StoreInfo(embedder="test", dim=vectors.shape[1], index=kind))
    store.add(vectors, [{"id": f"v{i}", "text": f"item {i}"} for i in range(len(vectors))])
    return store


def test_the_nearest_items_come_first_with_their_cosine() -> None:
    vectors = np.eye(4, dtype=np.float32)
    store = store_of(vectors)
    query = unit(np.array([[0.1, 0.9, 0.3, 0.0]]))
    hits = store.search(query, k=3)[0]
    assert [h.item["id"] for h in hits] == ["v1", "v2", "v0"]
    assert hits[0].score == pytest.approx(float(query[0, 1]), abs=1e-6)
    assert len(store.search(query, k=10)[0]) == 4  # never more than the store holds


def test_save_and_load_round_trip_then_grow(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(50, 8)))
    store = store_of(vectors)
    store.save(tmp_path / "s")
    loaded = VectorStore.load(tmp_path / "s")
    assert loaded.items == store.items and loaded.info == store.info
    queries = unit(rng.normal(size=(5, 8)))
    assert [[h.position for h in q] for q in loaded.search(queries, 5)] == \
        [[h.position for h in q] for q in store.search(queries, 5)]
    more = unit(rng.normal(size=(10, 8)))
    added = loaded.add(np.concatenate([vectors[:3], more]),
                       [{"id": f"v{i}"} for i in range(3)] + [{"id": f"w{i}"} for i in range(10)])
    assert added == 10 and len(loaded) == 60  # ids already there are not added twice
    loaded.save(tmp_path / "s")
    again = VectorStore.load(tmp_path / "s")
    assert again.search(more[4:5], 1)[0][0].item["id"] == "w4" and again.info.count == 60


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours_of_clustered_data(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = unit(rng.normal(size=(20, 16)))
    vectors = unit(np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(1000, 16)))
    exact, approx = store_of(vectors), store_of(vectors, kind)
    approx.save(tmp_path / kind)
    approx = VectorStore.load(tmp_path / kind)
    queries = unit(centres + 0.05 * rng.normal(size=centres.shape))
    truth = [{h.position for h in q} for q in exact.search(queries, 10)]
    found = [{h.position for h in q} for q in approx.search(queries, 10)]
    recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.9
    if kind == "ivf":
        assert approx.info.nlist == min(int(4 * 1000 ** 0.5), 1000 // 39)


def test_a_missing_or_damaged_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="not a vector store"):
        VectorStore.load(tmp_path)
    store_of(np.eye(3, dtype=np.float32)).save(tmp_path / "s")
    (tmp_path / "s" / "items.jsonl").write_text('{"id": "v0"}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match="holds 3 vectors but items.jsonl 1 rows"):
        VectorStore.load(tmp_path / "s")
    with pytest.raises(LmlabError, match="dimensional"):
        store_of(np.eye(3, dtype=np.float32)).add(np.ones((1, 5), dtype=np.float32), [{"id": "x"}])


def test_the_packaged_embedder_gives_unit_vectors_that_rank_by_meaning() -> None:
    from lmlab.core.retrieval.embeddings import Embedder

    embedder = Embedder(batch_size=2)
    texts = ["How do I reset my router?", "Restarting the Wi-Fi router fixes it.", "Bake the bread for an hour."]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert np.allclose(embedder.encode(texts[:1]), vectors[:1], atol=1e-5)  # batching does not change a vector
