"""A tiny random BERT cross-encoder (fast, for the Bayesian maths) and the retrieve tests' small corpus, indexed with
BM25, for the reranking commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.plugins.retrieve.conftest import DOCS, QUERIES, kilt_rows

#: Held-out queries about the same pages (none is a training query).
HELDOUT = [
    ("h1", "liquid silvery metal used in thermometers", [["101"]]),
    ("h2", "smallest planet of the solar system", [["102"]]),
    ("h3", "indonesian island with most of its people", [["103"]]),
    ("h4", "language released by sun microsystems", [["104"]]),
    ("h5", "nectar collected by workers of a queen", [["107"]]),
    ("h6", "compacted snow moving slowly", [["109"]]),
]


def tiny_encoder(folder: Path, *, dropout: float = 0.1, seed: int = 0) -> Path:
    """A 2-layer BERT cross-encoder with random weights and the packaged MiniLM's tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lmlab.core.retrieval.embeddings import embedder_path

    tokenizer = AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def rerank_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The corpus, training and held-out KILT queries, and a BM25 index of the corpus."""
    from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex

    folder = tmp_path_factory.mktemp("rerank")
    corpus = write_jsonl(folder / "corpus.jsonl", [{"id": i, "title": t, "text": x} for i, t, x in DOCS])
    index = RetrievalIndex.create(folder / "index", Corpus.load(corpus))
    index.build("bm25", {"k1": 1.5, "b": 0.75, "bm25_method": "lucene", "stem": True})
    return {"folder": folder, "corpus": corpus, "index": folder / "index",
            "train": write_jsonl(folder / "train.jsonl", kilt_rows(QUERIES)),
            "heldout": write_jsonl(folder / "heldout.jsonl", kilt_rows(HELDOUT))}
