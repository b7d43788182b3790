"""Any sentence-transformers cross-encoder folder reranks as it is, without `retrieve train-reranker`: the same
probabilities as sentence-transformers' own CrossEncoder.predict on those weights, and through the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.cli.app import main
from lmlab.core.retrieval.rerankers import resolve_reranker
from tests.plugins.rerank.conftest import tiny_encoder

PAIRS = [("which metal is liquid", "Mercury. Mercury is a liquid metal."), ("planet near the sun", "Violin. A bowed "
         "string instrument."), ("bowed instrument", "Cello. The cello is a large bowed string instrument.")]


@pytest.fixture(scope="module")
def off_the_shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("st-cross-encoder")
    CrossEncoder(str(tiny_encoder(folder / "hf")), max_length=64, device="cpu").save(str(folder / "st"))
    return folder / "st"


def test_a_cross_encoder_folder_opens_as_the_cross_encoder_reranker(off_the_shelf: Path) -> None:
    from sentence_transformers import CrossEncoder

    spec, folder = resolve_reranker(str(off_the_shelf), None)
    assert spec.name == "cross-encoder" and folder == off_the_shelf and spec.variants(folder) == ["plain", "mc-dropout"]
    ours = [r.probability for r in spec.open(folder, {"variant": "auto", "device": "cpu"}).score(PAIRS)]
    theirs = CrossEncoder(str(off_the_shelf), device="cpu").predict(PAIRS, convert_to_tensor=True)  # sigmoid(logit)
    assert torch.allclose(torch.tensor(ours), theirs.float(), atol=1e-5)


def test_retrieve_rerank_takes_it_as_model(off_the_shelf: Path, rerank_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "reranked.jsonl"
    with pytest.raises(SystemExit) as info:
        main(["retrieve", "rerank", "--index", str(rerank_files["index"]), "--data", str(rerank_files["heldout"]),
              "--model", str(off_the_shelf), "--retriever", "bm25", "--output", str(out), "--quiet"])
    assert info.value.code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(row["results"] for row in rows)


def test_a_folder_that_is_no_reranker_is_refused_with_the_hint(tmp_path: Path) -> None:
    from lmlab.core.kernel.errors import LmlabError

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(LmlabError, match="neither a reranker folder") as info:
        resolve_reranker(str(tmp_path), None)
    assert "sentence-transformers cross-encoder folder" in info.value.hint
