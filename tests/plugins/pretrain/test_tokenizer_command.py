"""`lmlab tokenizer train`: a BPE trained on a corpus, saved where `pretrain --tokenizer` can load it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.pretrain.options import tokenizer_train
from tests.conftest import CORPUS_DOCS as DOCS


def test_tokenizer_train_command_saves_a_loadable_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "corpus.txt"
    data.write_text("".join(DOCS))
    out = tmp_path / "tok"
    tokenizer_train(data=str(data), vocab_size=300, output_dir=out, text_field="text", json_output=True, quiet=True)
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_dir"] == str(out) and summary["characters"] == len("".join(DOCS))
    assert summary["chars_per_token"] == round(summary["characters"] / summary["tokens"], 3) > 1
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(LmlabError, match="not an empty folder"):
        tokenizer_train(data=str(data), vocab_size=300, output_dir=out, text_field="text", json_output=True,
                        quiet=True)
