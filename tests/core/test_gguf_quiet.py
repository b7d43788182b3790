"""The one-off GGUF conversion of smollm2-135m keeps transformers' tqdm bar off stderr."""

from __future__ import annotations

import pytest

from lmlab.core.models.presets import _no_gguf_bar


def test_the_gguf_loaders_bar_is_off_inside_and_back_after(capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    with _no_gguf_bar():
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert gguf_utils.tqdm is original
    list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert "Converting" in capsys.readouterr().err  # the bar the patch keeps away
