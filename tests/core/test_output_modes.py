"""Outputs are not private: folders and files written atomically get the modes the umask asks for."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmlab.core.files.atomic import atomic_dir
from lmlab.core.models.loading import replace_dir
from tests.conftest import run_cli


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_private(folder: Path) -> None:
    """What safetensors does: a file created 0600, plus a sub-folder created 0700."""
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.safetensors").chmod(0o600)
    (folder / "shards").mkdir(mode=0o700)
    (folder / "shards" / "part.bin").write_bytes(b"part")


def test_atomic_and_replaced_folders_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    cached = atomic_dir(tmp_path / "home" / "models" / "tiny", write_private)
    replaced = replace_dir(tmp_path / "run" / "model", write_private)
    replaced = replace_dir(replaced, write_private)  # a rerun replaces it
    for folder in (cached, replaced):
        assert mode(folder) == 0o755 and mode(folder / "shards") == 0o755
        assert mode(folder / "model.safetensors") == 0o644 and mode(folder / "shards" / "part.bin") == 0o644


def test_a_stricter_umask_is_honoured_too(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        folder = atomic_dir(tmp_path / "model", write_private)
    finally:
        os.umask(previous)
    assert mode(folder) == 0o700 and mode(folder / "model.safetensors") == 0o600


def test_a_trained_model_folder_is_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The king of the castle is bright and the night is long.\n" * 200)
    home = tmp_path / "home"
    proc = run_cli("pretrain", "--data", str(corpus), "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                   "--block-size", "16", "--batch-size", "4", "--vocab-size", "300", "--max-steps", "2",
                   "--eval-every", "2", "-o", str(tmp_path / "run"), env={"LMLAB_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    model = tmp_path / "run" / "model"
    assert mode(model) == 0o755 and mode(model / "model.safetensors") == 0o644
    cached = [p for p in (home / "tokens").iterdir() if p.is_dir()] + [p for p in (home / "tokenizers").iterdir()]
    assert cached and all(mode(p) == 0o755 for p in cached)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    assert mode(checkpoint) == 0o755 and all(mode(p) == 0o644 for p in checkpoint.iterdir())
